"""The pipeline-ceiling benchmark writes real, complete stores through featstore's writer (a tiny case per
format and encoding), and its command line runs end to end."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))


@pytest.mark.parametrize("fmt,variant", [("zarr", "float16"), ("hdf5", "int8"), ("zarr", "int8/device")])
def test_bench_pipeline_writes_complete_stores(tmp_path, fmt, variant):
    import featstore
    from bench_pipeline import run_pipeline, synthetic_batches
    from featstore.verify import verify

    batches = synthetic_batches(300, 4, 32)
    encoding, _, where = variant.partition("/")
    seconds, nbytes, tokens = run_pipeline(str(tmp_path), fmt, 2, encoding, where or "host", "sha256", 2, batches)
    assert seconds > 0 and nbytes > 0 and tokens == sum(int(b[2].sum()) for b in batches)
    path = str(tmp_path / ("store.h5" if fmt == "hdf5" else "store"))
    with featstore.open_store(path) as s:
        assert s.encoding == encoding and s.split("train").n_tokens == tokens and s.layers == [47, 48]
    assert verify(path) == []


def test_bench_pipeline_cli_smoke(tmp_path):
    out = tmp_path / "p.json"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_pipeline.py"), "--smoke", "--mb", "0.5",
                        "--layers", "1", "--formats", "zarr", "--variants", "float16", "--dir", str(tmp_path),
                        "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert [c["variant"] for c in res["cases"]] == ["float16"] and res["cases"][0]["x_raw"] > 0
    assert not [p for p in os.listdir(tmp_path) if p.startswith("bench-pipeline-")]
