"""`featstore estimate` and the free-space check of `extract`: the estimate against the arrays a real extraction
stores, the sampled error bar, and the refusal (exit 2, nothing written) when the free space is too small."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from featstore.extract import ExtractConfig, extract
from featstore.extract.estimate import estimate, parse_size
from featstore.errors import InputError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def stored_array_bytes(store: str) -> tuple[int, int]:
    """(logical bytes of every array of a zarr store: shape x itemsize, metadata bytes: every JSON file)."""
    arrays = meta = 0
    for root, _, files in os.walk(store):
        for f in files:
            path = os.path.join(root, f)
            if f == "zarr.json":
                m = json.load(open(path))
                meta += os.path.getsize(path)
                if m["node_type"] == "array":
                    arrays += int(np.prod(m["shape"])) * np.dtype(m["data_type"]).itemsize
            elif f.endswith(".json"):
                meta += os.path.getsize(path)
    return arrays, meta


@pytest.mark.parametrize("variant", [{}, {"encoding": "int8", "project": 8, "layers": "all"}])
def test_estimate_within_5_percent_of_what_extraction_stores(bert, splits, tmp_path, variant):
    cfg = dict(model=bert, data=splits, label_columns=["label"], id_column="id", layers="1,2", max_length=24,
               segment_mb=0.03, progress=False)
    cfg.update(variant)
    e = estimate(ExtractConfig(out="", **cfg), rate=1000.0)
    out = str(tmp_path / "store")
    s = extract(ExtractConfig(out=out, **cfg))
    arrays, meta = stored_array_bytes(out)
    assert e.total_tokens == s.tokens and e.examples == s.examples
    assert abs(e.array_bytes - arrays) <= 0.05 * arrays, (e.array_bytes, arrays)
    assert abs(e.total_bytes - (arrays + meta)) <= 0.05 * (arrays + meta), (e.total_bytes, arrays + meta)
    assert e.seconds == pytest.approx(s.tokens / 1000.0)
    chosen = [a for a in e.alternatives if a["chosen"]]
    assert len(chosen) == 1 and chosen[0]["total_bytes"] == e.total_bytes


def test_sampled_estimate_carries_an_error_bar_that_holds(bert, splits):
    cfg = ExtractConfig(model=bert, data=splits, out="", max_length=24)
    full = estimate(cfg, measure=False)
    part = estimate(ExtractConfig(model=bert, data=splits, out="", max_length=24), sample=6, measure=False)
    assert part.sampled and part.tokens_error > 0 and not full.sampled and full.tokens_error == 0
    assert abs(part.total_tokens - full.total_tokens) <= part.tokens_error
    with pytest.raises(InputError, match="--sample 1"):
        estimate(ExtractConfig(model=bert, data=splits, out=""), sample=1)


def _cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "featstore", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": ROOT}, timeout=300, **kw)


def test_extract_refuses_without_space_and_overrides(bert, splits, tmp_path):
    out = str(tmp_path / "store")
    common = ["extract", "--model", bert, "--data", f"train={splits['train']}", "--layers", "1", "--max-length", "24",
              "--out", out]
    p = _cli(*common, "--free-space", "1K")
    assert p.returncode == 2 and "only 1.0 KiB is free" in p.stderr and "--no-space-check" in p.stderr
    assert "Traceback" not in p.stderr and not os.path.exists(out)  # refused before anything was written
    p = _cli(*common, "--free-space", "1K", "--no-space-check")
    assert p.returncode == 0, p.stderr
    assert "estimate: " in p.stderr and os.path.exists(os.path.join(out, "manifest.json"))


def test_estimate_cli_prints_every_encoding_and_a_measured_time(bert, splits):
    p = _cli("estimate", "--model", bert, "--data", f"train={splits['train']}", "--layers", "all",
             "--max-length", "24")
    assert p.returncode == 0, p.stderr
    for part in ("tokens ", "per token ", "store ", "float32", "int8", "<- chosen", "tokens/s, measured on cpu"):
        assert part in p.stdout
    d = json.loads(_cli("estimate", "--model", bert, "--data", f"train={splits['train']}", "--rate", "5000",
                        "--json").stdout)
    assert d["rate_source"] == "stated" and d["seconds"] == pytest.approx(d["total_tokens"] / 5000)


def test_parse_size():
    assert parse_size("1K") == 1024 and parse_size("2G") == 2 << 30 and parse_size("1.5MiB") == 3 << 19
    assert parse_size("123") == 123
    with pytest.raises(InputError):
        parse_size("lots")
