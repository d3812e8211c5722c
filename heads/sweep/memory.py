"""How many heads train in one pass: as many as the device's free memory holds (RAM on a CPU, after the
features `--max-memory` let into RAM; the GPU's free memory on a GPU), at most `--heads-per-pass`."""
from __future__ import annotations

from typing import Any

import torch

from ..data import available_memory
from ..nets import build_head, count_trainable

CLAIM = 16  # heads per pass when --heads-per-pass is not given and memory allows
HEADROOM = 0.5  # of the free memory, the share heads may take (the rest: batches, the OS, other jobs)


def head_bytes(plan: Any) -> int:
    """Bytes one head of `plan` needs while training: weights, gradients, two AdamW moments and the best
    state (5 float32 copies), plus activations of one batch (3 float32 copies of its padded features)."""
    n = count_trainable(build_head(plan.spec))
    if plan.top is not None:
        n += sum(p.numel() for p in plan.top.top0.parameters())
    src = plan.sources[plan.cfg.train_split]
    longest = int(src.lengths.max()) if len(src) else 1
    layers = len(plan.read[1])
    width = plan.spec.hidden_size
    act = plan.cfg.batch_size * longest * layers * width * 4 * 3
    if plan.top is not None:  # a transformer layer keeps ~16 activations of width D per token
        act += plan.cfg.batch_size * longest * width * 4 * 16 * plan.top.plan.m
    return 5 * 4 * n + act


def free_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    return available_memory()


def heads_per_pass(plans: list[Any], cap: int | None) -> int:
    """Heads of `plans` that fit one pass: at least one, at most `cap` (default CLAIM)."""
    need = max(head_bytes(p) for p in plans)
    fits = int(free_memory(plans[0].device) * HEADROOM // max(need, 1))
    return max(1, min(fits, cap or CLAIM))
