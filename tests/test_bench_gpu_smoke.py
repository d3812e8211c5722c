"""The GPU benchmark script runs end to end (tiny model, CPU) so it works the day a GPU is there."""
from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_gpu_tiny_runs(tmp_path):
    out = tmp_path / "gpu.json"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_gpu.py"), "--tiny", "--examples", "24",
                        "--reps", "1", "--dir", str(tmp_path), "--json", str(out)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["tokens"] > 0 and res["layers"] == [1, 2] and 0 < res["mfu"]
    assert set(res["tokens_per_s"]) == {"bare forward", "extract 4 layers"}
    assert not [p for p in os.listdir(tmp_path) if p.startswith("bench-gpu-")]  # its store was cleaned up
