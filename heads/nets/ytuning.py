"""Y-Tuning (Liu et al., arXiv 2202.09817): learned label representations aligned with fixed text features.

    tokens (B, T, L, D) --softmax layer mix--> (B, T, D) --LayerNorm + Linear--> memory (B, T, d)
    --context_layers x [BiLSTM | pre-norm transformer layer] (heads.context; none by default)--> memory (B, T, d)
    label queries (Y, d) --n_layers x [self-attention among labels, cross-attention to memory, FFN]--> (B, Y, d)
    example tasks:  shared scorer Linear(d, 1) --> logits (B, Y)   (regression: one query, its score)
    position tasks: logits[b, t, y] = <memory_t, rep_y> / sqrt(d) + bias_y --> (B, T, Y)   (span: Y = start, end)
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ..context import ContextEncoder
from ..registry import task_class
from ..spec import HeadSpec
from .base import HeadKind, LayerMix


class LabelBlock(nn.Module):
    """Pre-norm block: labels attend to each other, then to the text memory (padding masked), then FFN."""

    def __init__(self, d: int, n_heads: int, dropout: float, ffn_mult: int):
        super().__init__()
        self.ln_self = nn.LayerNorm(d)
        self.self_attn = nn.MultiheadAttention(d, n_heads, dropout=dropout, batch_first=True)
        self.ln_cross = nn.LayerNorm(d)
        self.ln_mem = nn.LayerNorm(d)
        self.cross_attn = nn.MultiheadAttention(d, n_heads, dropout=dropout, batch_first=True)
        self.ln_ffn = nn.LayerNorm(d)
        self.ffn = nn.Sequential(nn.Linear(d, ffn_mult * d), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn_mult * d, d))
        self.drop = nn.Dropout(dropout)

    def forward(self, q: torch.Tensor, memory: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        # q (B, Y, d); memory (B, T, d); pad (B, T) True where padding
        h = self.ln_self(q)
        q = q + self.drop(self.self_attn(h, h, h, need_weights=False)[0])
        h, m = self.ln_cross(q), self.ln_mem(memory)
        q = q + self.drop(self.cross_attn(h, m, m, key_padding_mask=pad, need_weights=False)[0])
        return q + self.drop(self.ffn(self.ln_ffn(q)))  # (B, Y, d)


class LabelModule(nn.Module):
    """Layer mix + projection of the token features to a memory, and one label query per output refined by
    label blocks against it. The two heads below differ only in how they score the label representations."""

    def __init__(self, spec: HeadSpec):
        super().__init__()
        self.spec = spec
        d = spec.d_head
        self.mix = LayerMix(spec.n_layers_in)
        self.proj = nn.Sequential(nn.LayerNorm(spec.hidden_size), nn.Linear(spec.hidden_size, d))
        self.queries = nn.Parameter(torch.randn(spec.n_outputs, d))  # (Y, d), unit scale like an embedding
        self.blocks = nn.ModuleList(LabelBlock(d, spec.n_heads, spec.dropout, spec.ffn_mult)
                                    for _ in range(spec.n_layers))
        # built last: with no context layers it has no parameters and draws no random numbers, so the head is
        # exactly the one without it
        self.context = ContextEncoder(d, spec.context, spec.context_layers, spec.n_heads, spec.dropout,
                                      segments=task_class(spec.task).segment_ids)

    def memory(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.mix(x))  # (B, T, L, D) -> (B, T, D) -> (B, T, d)

    def attend(self, x: torch.Tensor, mask: torch.Tensor, segments: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, L, D) token features, mask (B, T) True on real tokens, segments (B, T) 0/1 (span tasks:
        question / context) -> (memory (B, T, d), labels (B, Y, d))."""
        memory = self.context(self.memory(x), mask, segments)
        q = self.queries.unsqueeze(0).expand(x.shape[0], -1, -1)  # (B, Y, d)
        for block in self.blocks:
            q = block(q, memory, ~mask)
        return memory, q

    @torch.no_grad()
    def init_queries_from(self, label_features: np.ndarray) -> None:
        """Label-prior init: the backbone's features of the label names through the (initial) mix + proj.

        Label names share most of their features (they are all short words), so the queries keep only what
        tells them apart: centred across labels, each scaled to unit std like the random init. Uncentred, the
        queries started nearly equal and short trainings on small data stalled.
        """
        feats = torch.as_tensor(label_features, dtype=torch.float32)  # (Y, L, D)
        q = self.memory(feats)  # (Y, d)
        q = q - q.mean(0, keepdim=True)
        self.queries.copy_(q / q.std(-1, keepdim=True).clamp_min(1e-6))

    def export_tensors(self) -> dict[str, torch.Tensor]:
        return dict(self.state_dict())


class YTuningHead(LabelModule):
    """One score per label: (B, Y)."""

    def __init__(self, spec: HeadSpec):
        super().__init__(spec)
        self.ln_out = nn.LayerNorm(spec.d_head)
        self.scorer = nn.Linear(spec.d_head, 1)  # shared by every label

    def forward(self, x: torch.Tensor, mask: torch.Tensor, segments: torch.Tensor | None = None) -> torch.Tensor:
        _, q = self.attend(x, mask, segments)  # (B, Y, d)
        return self.scorer(self.ln_out(q)).squeeze(-1)  # (B, Y)


class TokenYTuningHead(LabelModule):
    """One label representation per tag (span: start and end) scores every position's memory: (B, T, Y)."""

    def __init__(self, spec: HeadSpec):
        super().__init__(spec)
        self.ln_label = nn.LayerNorm(spec.d_head)
        self.ln_mem = nn.LayerNorm(spec.d_head)
        self.bias = nn.Parameter(torch.zeros(spec.n_outputs))

    def forward(self, x: torch.Tensor, mask: torch.Tensor, segments: torch.Tensor | None = None) -> torch.Tensor:
        memory, q = self.attend(x, mask, segments)  # (B, T, d), (B, Y, d)
        reps = self.ln_label(q)  # (B, Y, d)
        scores = torch.einsum("btd,byd->bty", self.ln_mem(memory), reps) / math.sqrt(reps.shape[-1])
        return scores + self.bias  # (B, T, Y)


class YTuning(HeadKind):
    name = "ytuning"
    reads = {"example": "tokens", "position": "tokens"}
    default_layers = "all"
    tunes_top_layers = True
    label_queries = True
    token_context = True

    @classmethod
    def size_problems(cls, d_head: int, n_heads: int) -> list[str]:
        return [f"--d-head {d_head} is not divisible by --n-heads {n_heads}"] if d_head % n_heads else []

    @classmethod
    def spec_problems(cls, spec: HeadSpec) -> list[str]:
        odd = spec.context_layers and spec.context == "lstm" and spec.d_head % 2
        return cls.size_problems(spec.d_head, spec.n_heads) + (
            [f"--context lstm runs d_head/2 units each way: --d-head {spec.d_head} must be even"] if odd else [])

    @classmethod
    def build(cls, spec: HeadSpec, output: str) -> nn.Module:
        return YTuningHead(spec) if output == "example" else TokenYTuningHead(spec)
