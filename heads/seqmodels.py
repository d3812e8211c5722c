"""Heads for token and span tasks on frozen token features.

Y-Tuning, as DESIGN.md puts it: the label module refines label representations against the text memory, and
each representation scores every position:

    tokens (B, T, L, D) --layer mix, LayerNorm + Linear--> memory (B, T, d)
    label queries (Y, d) --label blocks (self-attn, cross-attn to memory, FFN)--> label reps (B, Y, d)
    token:  logits[b, t, y] = <memory_t, rep_y> / sqrt(d) + bias_y                       (B, T, Y)
    span:   2 queries (start, end); logits[b, t, k] = <memory_t, rep_k> / sqrt(d)        (B, T, 2)

Linear baselines map each token's concatenated layers to the same logits, (B, T, L*D) -> (B, T, Y or 2).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import HeadSpec
from .models import LabelModule, StandardisedInput

IGNORE = -100


class TokenYTuningHead(LabelModule):
    """One label representation per tag (span: start and end) scores every position's memory."""

    def __init__(self, spec: HeadSpec):
        super().__init__(spec, spec.n_outputs)  # queries (Y, d); span: (2, d)
        self.ln_label = nn.LayerNorm(spec.d_head)
        self.ln_mem = nn.LayerNorm(spec.d_head)
        self.bias = nn.Parameter(torch.zeros(spec.n_outputs))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        memory, q = self.attend(x, mask)  # (B, T, d), (B, Y, d)
        reps = self.ln_label(q)  # (B, Y, d)
        scores = torch.einsum("btd,byd->bty", self.ln_mem(memory), reps) / math.sqrt(reps.shape[-1])
        return scores + self.bias  # (B, T, Y)


class TokenLinearHead(StandardisedInput):
    """Linear probe per token on the concatenated layers, inputs standardised with train statistics."""

    def __init__(self, spec: HeadSpec):
        super().__init__(spec)
        self.drop = nn.Dropout(spec.dropout)
        self.out = nn.Linear(spec.n_layers_in * spec.hidden_size, spec.n_outputs)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.out(self.drop(self.standardise(x.flatten(2))))  # (B, T, L, D) -> (B, T, L*D) -> (B, T, Y)


def build_seq_head(spec: HeadSpec) -> nn.Module:
    return TokenYTuningHead(spec) if spec.kind == "ytuning" else TokenLinearHead(spec)


def seq_loss(spec: HeadSpec, out: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Token: cross-entropy over tags on first sub-words (-100 elsewhere). Span: cross-entropy of the start and
    of the end position over the real tokens."""
    out = out.float()
    if spec.task == "token":
        y = y[:, :out.shape[1]]  # targets are padded to the split's longest example
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1), ignore_index=IGNORE)
    logits = out.masked_fill(~mask.unsqueeze(-1), -1e4)  # (B, T, 2)
    return 0.5 * (F.cross_entropy(logits[..., 0], y[:, 0]) + F.cross_entropy(logits[..., 1], y[:, 1]))


def best_span(start: np.ndarray, end: np.ndarray, allowed: np.ndarray, max_answer: int) -> tuple[int, int, float]:
    """Highest start + end score with end >= start, end - start < max_answer, both on allowed positions."""
    s_score = np.where(allowed, start, -np.inf)  # (T,)
    e_score = np.where(allowed, end, -np.inf)
    total = s_score[:, None] + e_score[None, :]  # (T, T)
    T = len(start)
    i, j = np.indices((T, T))
    total = np.where((j >= i) & (j - i < max_answer), total, -np.inf)
    k = int(np.argmax(total))
    return k // T, k % T, float(total.flat[k])
