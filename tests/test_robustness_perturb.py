"""benchmarks/robustness.py's perturbations: deterministic, at about the asked rate, never empty."""
from __future__ import annotations

import csv

from benchmarks.robustness import perturb, split_name, write_perturbed

TEXT = " ".join(["the quick brown fox jumps over the lazy dog"] * 40)


def test_deterministic_and_keyed():
    assert perturb(TEXT, "char", 0.1, "a") == perturb(TEXT, "char", 0.1, "a")
    assert perturb(TEXT, "char", 0.1, "a") != perturb(TEXT, "char", 0.1, "b")
    assert perturb(TEXT, "drop", 0.2, "a") == perturb(TEXT, "drop", 0.2, "a")
    assert perturb(TEXT, "char", 0.0, "a") == TEXT and perturb(TEXT, "drop", 0.0, "a") == TEXT


def test_rates():
    words = TEXT.split()
    kept = perturb(TEXT, "drop", 0.3, "k").split()
    assert 0.6 < len(kept) / len(words) < 0.8
    noisy = perturb(TEXT, "char", 0.1, "k").split()
    changed = sum(a != b for a, b in zip(words, noisy))
    assert changed > 0.2 * len(words)
    assert perturb("one", "drop", 0.99, "k") == "one"  # at least one word kept


def test_write_perturbed(tmp_path):
    src = tmp_path / "test.csv"
    with open(src, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "text", "topic"])
        w.writerows([("a1", "market shares fell sharply today", "business"), ("a2", "the team won the match", "sport")])
    paths = write_perturbed(str(src), str(tmp_path), [("char", 0.2), ("drop", 0.3)])
    assert list(paths) == [split_name("char", 0.2), split_name("drop", 0.3)] == ["test-char20", "test-drop30"]
    for p in paths.values():
        with open(p, newline="") as f:
            rows = list(csv.DictReader(f))
        assert [(r["id"], r["topic"]) for r in rows] == [("a1", "business"), ("a2", "sport")]
        assert all(r["text"] for r in rows)
