"""Write docs/guarantees.md from the tests that hold each guarantee, with the faults they injected and survived.

Runs those tests with their fault counters on (FEATSTORE_GUARANTEES_JSON, see tests/guarantees.py), sums the
counts per guarantee and test, prints the table and writes the document and a JSON copy. Nothing is written
when a test fails: a guarantee is listed only with the run that held it.

    make guarantees                                      # or, after `make test`'s set-up:
    .venv/bin/python benchmarks/guarantees.py
    .venv/bin/python benchmarks/guarantees.py --examples 500   # a longer fuzzing run
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import defaultdict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = ["tests/featstore/test_golden.py", "tests/featstore/test_concurrent_publish.py",
         "tests/featstore/test_limits.py", "tests/featstore/test_fuzz.py", "tests/heads/test_fuzz_head.py"]

# key -> (guarantee, what one injected fault is)
GUARANTEES = {
    "golden": ("Stores written by earlier releases (each format version's golden stores: Zarr and HDF5; sentence, "
               "token and span; float16, bfloat16, int8, projected, converted) open, read bit-exactly and verify.",
               "golden store read"),
    "newer-version": ("A store of a newer format version is refused with one line naming the version it needs "
                      "(exit 2 from the CLI, `verify` included).", "newer store opened"),
    "publish-claim": ("Claiming a name is atomic: of many writers creating the same object at once, exactly one "
                      "succeeds and the object holds its bytes whole (hard link / O_EXCL; S3 If-None-Match).",
                      "race of 4 threads"),
    "publish-race": ("Two `featstore push` of different stores to one name, both forced past the `is it free?` "
                     "check before either claims: exactly one wins, the other exits 2 with one line, the name "
                     "holds the winner's store whole and it verifies.", "race of two pushes"),
    "publish-same": ("Two pushes of the same store (same fingerprint and files) at once both succeed.",
                     "race of two pushes"),
    "publish-read": ("A reader opening a name during a publish sees no store (one line: unfinished upload) or the "
                     "whole new one, never a part; a different store's push meanwhile is refused.",
                     "look at a half-published name"),
    "disk-full": ("A full disk (a write refused with EFBIG/ENOSPC) stops extract, convert and pull with one line "
                  "naming the store and the room still needed; committed work is kept and a re-run finishes an "
                  "equal store.", "write refused"),
    "sigterm": ("SIGTERM stops an extraction at its next batch, a pull at its next file (exit 143, one line), "
                "committed work kept; a re-run finishes an equal store.", "SIGTERM"),
    "fuzz-manifest": ("A hostile manifest (Hypothesis: wrong types, missing keys, huge or negative numbers, path "
                      "tricks, unicode, truncated bytes) is refused with one line or read correctly; no traceback, "
                      "no file opened outside the store, no hang, no allocation sized by it.", "mutated manifest"),
    "fuzz-listing": ("The same for remote listings and pulls (`featstore ls`, `pull` from a prefix holding hostile "
                     "manifests under odd names): nothing written outside the destination.", "mutated listing"),
    "fuzz-head": ("A hostile head.json is refused by `heads.load_head` with one line or loads; its sizes are "
                  "checked against the saved weights before anything is allocated.", "mutated head.json"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "guarantees.md"))
    ap.add_argument("--json", default=os.path.join(ROOT, "benchmarks", "results", "guarantees.json"))
    ap.add_argument("--examples", type=int, default=None, help="Hypothesis examples per fuzz test (tests: 40)")
    ap.add_argument("--machine", default="", help="How to name the machine on the page (default: CPUs and OS)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        counts = os.path.join(tmp, "counts.jsonl")
        env = {**os.environ, "FEATSTORE_GUARANTEES_JSON": counts, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
        if args.examples:
            env["FEATSTORE_FUZZ_EXAMPLES"] = str(args.examples)
        t0 = time.time()
        rc = subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS], cwd=ROOT, env=env)
        if rc != 0:
            sys.exit(f"tests failed (exit {rc}): {args.out} not written")
        rows = [json.loads(line) for line in open(counts)] if os.path.exists(counts) else []
    seconds = time.time() - t0
    total: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for r in rows:
        t = total[(r["guarantee"], r["test"])]
        t[0] += r["injected"]
        t[1] += r["survived"]
    missing = [k for k in GUARANTEES if not any(g == k for g, _ in total)]
    if missing:
        sys.exit(f"no counts recorded for {missing}: {args.out} not written")
    table = [(k, test, *total[(k, test)]) for k in GUARANTEES for g, test in sorted(total) if g == k]
    _write(args, table, seconds)


def _write(args: argparse.Namespace, table: list[tuple[str, str, int, int]], seconds: float) -> None:
    lines = ["# Guarantees", "",
             "What featstore promises when things go wrong, each with the tests that hold it and how many faults",
             "they injected and survived in the run that wrote this page (`make guarantees`; the counts come from",
             "the tests' own counters, never typed by hand; a failing test writes no page). Every test here also",
             "runs in `make test`. How each fault is made: [compatibility.md](compatibility.md).", "",
             "| guarantee | tests (faults injected each) | faults injected | survived |", "|---|---|---:|---:|"]
    for key, (text, unit) in GUARANTEES.items():
        rows = [r for r in table if r[0] == key]
        tests = "<br>".join(f"`{test}` ({injected})" for _, test, injected, _ in rows)
        lines.append(f"| {text} | {tests} | {sum(r[2] for r in rows)} ({unit}) | {sum(r[3] for r in rows)} |")
    machine = args.machine or f"{os.cpu_count()}-CPU {platform.machine()} {platform.system()}"
    lines += ["", f"Run: {time.strftime('%Y-%m-%d')}, {machine}, Python {platform.python_version()}, "
              f"{seconds:.0f} s; fuzzing at {args.examples or 40} Hypothesis examples per test."]
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump([{"guarantee": k, "test": t, "injected": i, "survived": s} for k, t, i, s in table], f, indent=1)
    for key, test, injected, survived in table:
        print(f"{key:15} {injected:5} {survived:5}  {test}")


if __name__ == "__main__":
    main()
