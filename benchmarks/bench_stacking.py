"""Batching the compute of same-shape heads (`torch.func` stacking) against running them one after another.

`heads sweep` trains the heads of a pass one after another on each batch (each its own optimizer, schedule,
early stopping and random stream, so a sweep equals separate runs bit for bit). When heads share a shape, their
forward and backward could run as one batched call: parameters stacked (`torch.func.stack_module_state`) and
the model vmapped over them (`torch.func.functional_call` under `torch.vmap`). This measures what that would
buy, on the shapes of the sweep timing in RESULTS.md (Y-Tuning, BBC demo batches: B x T x 1 layer x 384), K
heads per step, forward + backward, medians of --repeats, CPU time of this process:

    python benchmarks/bench_stacking.py --json benchmarks/results/stacking.json

Dropout is off in both (vmapped dropout would need `randomness="different"`, and its random stream would not
be each head's own, which the sweep's equality with separate runs relies on).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from torch.func import functional_call, stack_module_state  # noqa: E402

from heads.nets.ytuning import YTuningHead  # noqa: E402
from heads.spec import HeadSpec  # noqa: E402


def heads(k: int, d_head: int, n_layers: int, hidden: int) -> list[torch.nn.Module]:
    out = []
    for i in range(k):
        torch.manual_seed(i)
        out.append(YTuningHead(HeadSpec("ytuning", "classification", 5, hidden, 1, d_head=d_head,
                                        n_layers=n_layers, n_heads=4, dropout=0.0)))
    return out


def one_by_one(models: list[torch.nn.Module], x: torch.Tensor, mask: torch.Tensor, y: torch.Tensor) -> None:
    for m in models:
        m.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(m(x, mask), y).backward()


def stacked_step(models: list[torch.nn.Module]):
    params, buffers = stack_module_state(models)  # leaves: (K, ...) each
    base = copy.deepcopy(models[0]).to("meta")

    def loss(p, b, x, mask, y):
        return torch.nn.functional.cross_entropy(functional_call(base, (p, b), (x, mask)), y)

    grad = torch.vmap(torch.func.grad(loss), in_dims=(0, 0, None, None, None))

    def step(x, mask, y):
        return grad(params, buffers, x, mask, y)
    return step


def cpu_seconds(fn, steps: int) -> float:
    t0 = time.process_time()
    for _ in range(steps):
        fn()
    return time.process_time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ks", default="1,4,8")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=256, help="padded tokens per example")
    ap.add_argument("--hidden", type=int, default=384)
    ap.add_argument("--d-head", type=int, default=32)
    ap.add_argument("--n-layers", type=int, default=1)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    fallbacks = []  # ops vmap runs one head at a time (no batching rule), as torch reports them
    warnings.showwarning = lambda msg, *args, **kw: fallbacks.append(str(msg).split(".")[0])
    g = torch.Generator().manual_seed(0)
    x = torch.randn(a.batch, a.tokens, 1, a.hidden, generator=g)
    mask = torch.ones(a.batch, a.tokens, dtype=torch.bool)
    mask[a.batch // 2:, a.tokens * 3 // 4:] = False  # some padding, as real batches have
    y = torch.randint(0, 5, (a.batch,), generator=g)
    rows = []
    print(f"{'K':>3}{'one by one, s/step':>20}{'stacked, s/step':>17}{'stacked speed-up':>18}")
    for k in [int(v) for v in a.ks.split(",")]:
        models = heads(k, a.d_head, a.n_layers, a.hidden)
        step = stacked_step(models)
        # the same gradients, so the comparison is of equal work
        one_by_one(models, x, mask, y)
        grads = step(x, mask, y)
        name, p = next(iter(models[0].named_parameters()))
        assert torch.allclose(grads[name][0], p.grad, atol=1e-5), "stacked gradients differ"
        seq, stk = [], []
        for _ in range(a.repeats):  # interleaved, so machine load falls on both alike
            seq.append(cpu_seconds(lambda: one_by_one(models, x, mask, y), a.steps) / a.steps)
            stk.append(cpu_seconds(lambda: step(x, mask, y), a.steps) / a.steps)
        s, t = statistics.median(seq), statistics.median(stk)
        rows.append({"k": k, "one_by_one_s": s, "stacked_s": t, "speedup": s / t})
        print(f"{k:>3}{s:>20.4f}{t:>17.4f}{s / t:>17.2f}x")
    fallbacks = sorted(set(fallbacks))
    for w in fallbacks:
        print("torch:", w)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"args": vars(a), "machine": platform.platform(), "cpus": os.cpu_count(),
                       "torch": torch.__version__, "rows": rows, "vmap_fallbacks": fallbacks}, f, indent=1)


if __name__ == "__main__":
    main()
