"""Extraction throughput: featstore extract vs a bare forward pass vs the naive loop, side by side.

Targets (issue 6): extract >= 0.90 x bare forward over the same batches; >= 3x the naive loop (fixed-size
batches in input order padded to max_length, output_hidden_states=True, every layer copied to the host,
per-example h5py writes). Each repetition runs the three back to back; the table shows medians.

    python benchmarks/bench_extract.py --limit 120 --reps 3 --json bench_out/extract.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.bbc import make_splits  # noqa: E402
from featstore.extract.inputs import load_dataset  # noqa: E402
from featstore.extract import ExtractConfig, extract  # noqa: E402
from featstore.extract.models import load_model, resolve_model_layers  # noqa: E402
from featstore.extract.plan import pad_batch, plan_batches, plan_segments, tokenize  # noqa: E402


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def bare_forward(lm, toks, batch_tokens: int) -> tuple[float, int]:
    """The same length-bucketed batches as extract, through the whole model, nothing kept."""
    t0 = time.perf_counter()
    n = 0
    for name, tok in toks.items():
        for seg in plan_segments(name, tok.lengths, 1 << 40):
            plan_batches(seg, tok.lengths, batch_tokens)
            for rows in seg.batches:
                lengths = tok.lengths[rows]
                ids, mask = pad_batch([tok.input_ids[r] for r in rows], lm.tokenizer.pad_token_id or 0)
                with torch.inference_mode():
                    lm.model(input_ids=ids.to(DEVICE), attention_mask=mask.to(DEVICE))
                n += int(lengths.sum())
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, n


def naive_loop(lm, ds, layers: list[int], max_length: int, out: str, batch_size: int = 32) -> tuple[float, int]:
    """What people write first: input order, pad to max_length, all hidden states to host, per-example writes."""
    import h5py

    t0 = time.perf_counter()
    n = 0
    with h5py.File(out, "w") as f:
        for name, split in ds.splits.items():
            for a in range(0, len(split), batch_size):
                enc = lm.tokenizer(split.texts[a:a + batch_size], padding="max_length", truncation=True,
                                   max_length=max_length, return_tensors="pt")
                with torch.inference_mode():
                    hs = lm.model(**{k: v.to(DEVICE) for k, v in enc.items()}, output_hidden_states=True).hidden_states
                host = [h.float().cpu().numpy() for h in hs]  # every layer copied
                lengths = enc["attention_mask"].sum(1).tolist()
                for b, length in enumerate(lengths):
                    for k in layers:
                        f.create_dataset(f"{name}/{a + b}/L{k}", data=host[k][b, :length].astype(np.float16))
                    n += length
    return time.perf_counter() - t0, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="all-minilm-l6-v2")
    ap.add_argument("--limit", type=int, default=120, help="BBC articles per topic")
    ap.add_argument("--text", choices=["full", "title"], default="full",
                    help="whole articles (long: little padding) or headlines (short, like GLUE sentences)")
    ap.add_argument("--layers", default="all")
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--batch-tokens", type=int, default=16384)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="bench-extract-")
    data = make_splits(os.path.join(work, "data"), limit=args.limit, text=args.text)
    ds = load_dataset(data, "text", None, ["topic"], "id")
    # the same device and compute dtype as `featstore extract` picks (CUDA + bf16 when there is a GPU)
    lm = load_model(args.model, device=DEVICE, dtype="bfloat16" if DEVICE == "cuda" else "float32")
    layers = resolve_model_layers(args.layers, lm.num_layers)
    toks = {k: tokenize(lm.tokenizer, s, args.max_length, "longest_first") for k, s in ds.splits.items()}
    runs = {"bare forward": [], "featstore extract": [], "extract (loop only)": [], "naive loop": []}
    tokens = 0
    for rep in range(args.reps):
        t, tokens = bare_forward(lm, toks, args.batch_tokens)
        runs["bare forward"].append(tokens / t)
        out = os.path.join(work, "store")
        t0 = time.perf_counter()
        s = extract(ExtractConfig(model=args.model, data=data, out=out, text_column="text", label_columns=["topic"],
                                  id_column="id", layers=args.layers, max_length=args.max_length,
                                  batch_tokens=args.batch_tokens, progress=False, overwrite=True))
        runs["featstore extract"].append(s.tokens / (time.perf_counter() - t0))
        runs["extract (loop only)"].append(s.tokens / s.loop_seconds)
        t, n = naive_loop(lm, ds, layers, args.max_length, os.path.join(work, "naive.h5"))
        runs["naive loop"].append(n / t)
        print(f"rep {rep + 1}/{args.reps}: " + ", ".join(f"{k} {v[-1]:,.0f} tok/s" for k, v in runs.items()),
              file=sys.stderr)
    med = {k: statistics.median(v) for k, v in runs.items()}
    bare = med["bare forward"]
    print(f"\nBBC {args.text} texts, model {args.model}, layers {layers}, max_length {args.max_length}, {tokens:,} tokens, "
          f"{torch.get_num_threads()} threads, {torch.cuda.get_device_name() if DEVICE == 'cuda' else platform.processor() or platform.machine()}")
    print(f"{'method':<22}{'tokens/s (median)':>18}{'x bare forward':>16}{'extract x this':>16}")
    for k, v in med.items():
        print(f"{k:<22}{v:>18,.0f}{v / bare:>16.2f}{med['featstore extract'] / v:>16.2f}")
    result = {"text": args.text, "model": args.model, "layers": layers, "max_length": args.max_length, "tokens": tokens,
              "reps": args.reps, "runs_tokens_per_s": runs, "median_tokens_per_s": med,
              "extract_over_bare": med["featstore extract"] / bare,
              "extract_over_naive": med["featstore extract"] / med["naive loop"],
              "machine": {"cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
                          "processor": platform.processor(), "platform": platform.platform()}}
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
