"""GPU ceiling (issue 6, item 3): a DeBERTa-v2-xxlarge-sized encoder in bf16 on one GPU.

Builds the model from deberta-v2-xxlarge's published config with random weights (no download), feeds random
token ids with a realistic length distribution, and measures side by side:

1. the card's bf16 matmul rate (large square matmuls): the ceiling MFU is measured against;
2. a bare forward pass over featstore's length-bucketed batches: tokens/s and model FLOP utilisation (useful
   FLOPs of real tokens, excluding padding: 2 x non-embedding parameters per token plus attention scores);
3. extraction keeping 4 layers through featstore's own forward path and background writer into a real Zarr
   store on local disk: tokens/s, and its ratio to the bare forward. Goals: >= 0.90 x bare, bare >= 40% MFU.

    python benchmarks/bench_gpu.py --json bench_out/gpu.json          # on the GPU machine
    python benchmarks/bench_gpu.py --tiny                              # a 2-layer smoke run, any machine
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
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from featstore.extract.inputs import SplitData  # noqa: E402
from featstore.extract.forward import forward_batch  # noqa: E402
from featstore.extract.models import LoadedModel, truncate_after  # noqa: E402
from featstore.extract.plan import Tokenized, pad_batch, plan_batches, plan_segments  # noqa: E402
from featstore.extract.writer import SegmentJob, SegmentWriter  # noqa: E402
from featstore.store import local_backend  # noqa: E402

# microsoft/deberta-v2-xxlarge config.json (published), minus what only affects the tokenizer
XXLARGE = dict(hidden_size=1536, num_hidden_layers=48, num_attention_heads=24, intermediate_size=6144,
               vocab_size=128100, max_position_embeddings=512, relative_attention=True, position_buckets=256,
               norm_rel_ebd="layer_norm", share_att_key=True, pos_att_type=["p2c", "c2p"],
               position_biased_input=False, max_relative_positions=-1, layer_norm_eps=1e-7, conv_kernel_size=3,
               conv_act="gelu", hidden_act="gelu", type_vocab_size=0, attention_head_size=64)
TINY = dict(XXLARGE, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
            vocab_size=1000, attention_head_size=16)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_rate(device: str, dtype: torch.dtype, n: int, reps: int = 20) -> float:
    """FLOP/s of n x n matmuls: the practical peak of this card in this dtype."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - t0)


def random_lengths(n: int, max_length: int, seed: int = 0) -> np.ndarray:
    """Sentence-to-paragraph lengths: log-normal around 48 tokens, clipped to [8, max_length]."""
    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(np.log(48), 0.7, n), 8, max_length).astype(np.int64)


def useful_flops(cfg, lengths: np.ndarray, n_params_body: int) -> float:
    """Forward FLOPs of real tokens: 2 per non-embedding parameter, plus QK^T and AV (4 T D per token per layer)."""
    L, D = cfg.num_hidden_layers, cfg.hidden_size
    return float(2 * n_params_body * lengths.sum() + 4 * L * D * np.square(lengths.astype(np.float64)).sum())


def batches(lengths: np.ndarray, batch_tokens: int) -> list[np.ndarray]:
    seg = plan_segments("bench", lengths, 1 << 40)[0]
    plan_batches(seg, lengths, batch_tokens)
    return seg.batches


def bare_forward(lm: LoadedModel, tok: Tokenized, plan: list[np.ndarray], device: str) -> float:
    sync(device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for rows in plan:
            ids, mask = pad_batch([tok.input_ids[r] for r in rows])
            lm.model(input_ids=ids.to(device, non_blocking=True), attention_mask=mask.to(device, non_blocking=True))
    sync(device)
    return time.perf_counter() - t0


def extraction(lm: LoadedModel, tok: Tokenized, split: SplitData, layers: list[int], dtype: str, device: str,
               batch_tokens: int, out: str) -> float:
    """featstore's forward path + background writer, whole segments into a Zarr store; returns seconds."""
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    segment_tokens = (256 << 20) // (2 * lm.hidden_size * len(layers))
    t0 = time.perf_counter()
    with SegmentWriter(local_backend(out, "zarr"), "none", 4 << 20) as writer:
        for seg in plan_segments(split.name, tok.lengths, segment_tokens):
            plan_batches(seg, tok.lengths, batch_tokens)
            job = SegmentJob(split.name, seg.name, seg.index, layers, dtype)
            for rows in seg.batches:
                job.batches.append(forward_batch(lm, tok, split, rows, layers, dtype, device, job.stats))
            writer.put(job)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="2 layers, hidden 64: a smoke run on any machine")
    ap.add_argument("--examples", type=int, default=None, help="default 8192 (tiny: 256)")
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--batch-tokens", type=int, default=None, help="padded tokens per batch (default 65536; tiny 4096)")
    ap.add_argument("--store-dtype", default="bfloat16", help="stored dtype (DeBERTa overflows float16)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dir", default=None, help="where the store is written (default: a temp dir)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    from transformers import DebertaV2Config, DebertaV2Model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    compute = torch.bfloat16 if device == "cuda" else torch.float32
    cfg = DebertaV2Config(**(TINY if a.tiny else XXLARGE))
    n = a.examples or (256 if a.tiny else 8192)
    batch_tokens = a.batch_tokens or (4096 if a.tiny else 65536)
    torch.manual_seed(0)
    model = DebertaV2Model(cfg).to(device=device, dtype=compute).eval().requires_grad_(False)
    n_params = sum(p.numel() for p in model.parameters())
    n_body = n_params - sum(p.numel() for p in model.embeddings.parameters())
    lm = LoadedModel(model, SimpleNamespace(pad_token_id=0), "deberta-v2-xxlarge-sized (random)", "-",
                     cfg.num_hidden_layers, cfg.hidden_size, n_params)
    lengths = random_lengths(n, a.max_length)
    rng = np.random.default_rng(1)
    tok = Tokenized([rng.integers(5, cfg.vocab_size, int(k)).tolist() for k in lengths], None, lengths, 0)
    split = SplitData("train", "<random>", [""] * n, None, [f"ex-{i}" for i in range(n)])
    L = cfg.num_hidden_layers
    layers = sorted({max(1, L // 4), max(1, L // 2), max(1, 3 * L // 4), L})  # 4 layers, the deepest last
    truncate_after(lm.model, max(layers))
    plan = batches(lengths, batch_tokens)
    flops = useful_flops(cfg, lengths, n_body)
    work = tempfile.mkdtemp(prefix="bench-gpu-", dir=a.dir)

    peak = matmul_rate(device, compute, 1024 if a.tiny else 8192)
    bare_forward(lm, tok, plan[:2], device)  # warm-up: kernels, allocator
    runs: dict[str, list[float]] = {"bare forward": [], "extract 4 layers": []}
    for rep in range(a.reps):
        runs["bare forward"].append(bare_forward(lm, tok, plan, device))
        runs["extract 4 layers"].append(extraction(lm, tok, split, layers, a.store_dtype, device, batch_tokens,
                                                   os.path.join(work, "store")))
        print(f"rep {rep + 1}: " + ", ".join(f"{k} {lengths.sum() / v[-1]:,.0f} tok/s" for k, v in runs.items()),
              file=sys.stderr)
    shutil.rmtree(work, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in runs.items()}
    tps = {k: float(lengths.sum() / v) for k, v in med.items()}
    mfu = flops / med["bare forward"] / peak
    name = torch.cuda.get_device_name() if device == "cuda" else platform.processor() or platform.machine()
    print(f"\n{name}; model {n_params / 1e9:.2f}B params ({L} layers, hidden {cfg.hidden_size}), {compute}; {n:,} "
          f"examples, {int(lengths.sum()):,} tokens (median length {int(np.median(lengths))}), "
          f"{len(plan)} batches of <= {batch_tokens:,} padded tokens; layers kept {layers}, stored {a.store_dtype}")
    print(f"measured {str(compute).split('.')[-1]} matmul rate: {peak / 1e12:,.1f} TFLOP/s")
    print(f"{'method':<20}{'tokens/s (median)':>19}{'x bare':>8}")
    for k, v in tps.items():
        print(f"{k:<20}{v:>19,.0f}{v / tps['bare forward']:>8.2f}")
    print(f"bare forward model FLOP utilisation: {100 * mfu:.1f}% of the measured matmul rate")
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as f:
            json.dump({"device": name, "params": n_params, "config": "tiny" if a.tiny else "deberta-v2-xxlarge",
                       "examples": n, "tokens": int(lengths.sum()), "batch_tokens": batch_tokens, "layers": layers,
                       "store_dtype": a.store_dtype, "matmul_flops_per_s": peak, "useful_flops": flops,
                       "runs_seconds": runs, "tokens_per_s": tps, "mfu": mfu,
                       "extract_over_bare": tps["extract 4 layers"] / tps["bare forward"]}, f, indent=1)


if __name__ == "__main__":
    main()
