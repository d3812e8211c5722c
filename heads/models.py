"""Heads on frozen features: Y-Tuning label modules and the linear / MLP baselines.

Y-Tuning (Liu et al., arXiv 2202.09817) aligns learned label representations with fixed text features:

    tokens (B, T, L, D) --softmax layer mix--> (B, T, D) --LayerNorm + Linear--> memory (B, T, d)
    label queries (Y, d) --n_layers x [self-attention among labels, cross-attention to memory, FFN]--> (B, Y, d)
    shared scorer Linear(d, 1) --> logits (B, Y)

Regression uses one query whose score is the (standardised) prediction.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import HeadSpec


class LayerMix(nn.Module):
    """Softmax-weighted sum over the stored layers (ELMo-style scalar mix)."""

    def __init__(self, n_layers: int):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(n_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.logits.softmax(0).to(x.dtype)  # (L,)
        return torch.einsum("...ld,l->...d", x, w)  # (..., L, D) -> (..., D)


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
    """What every Y-Tuning head shares: layer mix + projection of the token features to a memory, and label
    queries refined by label blocks against it. Heads differ only in how they score the label representations."""

    def __init__(self, spec: HeadSpec, n_queries: int):
        super().__init__()
        self.spec = spec
        d = spec.d_head
        self.mix = LayerMix(spec.n_layers_in)
        self.proj = nn.Sequential(nn.LayerNorm(spec.hidden_size), nn.Linear(spec.hidden_size, d))
        self.queries = nn.Parameter(torch.randn(n_queries, d))  # (Y, d), unit scale like an embedding
        self.blocks = nn.ModuleList(LabelBlock(d, spec.n_heads, spec.dropout, spec.ffn_mult)
                                    for _ in range(spec.n_layers))

    def memory(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.mix(x))  # (B, T, L, D) -> (B, T, D) -> (B, T, d)

    def attend(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, L, D) token features, mask (B, T) True on real tokens -> (memory (B, T, d), labels (B, Y, d))."""
        memory = self.memory(x)
        q = self.queries.unsqueeze(0).expand(x.shape[0], -1, -1)  # (B, Y, d)
        for block in self.blocks:
            q = block(q, memory, ~mask)
        return memory, q


class YTuningHead(LabelModule):
    def __init__(self, spec: HeadSpec):
        super().__init__(spec, spec.n_outputs if spec.task == "classification" else 1)
        self.ln_out = nn.LayerNorm(spec.d_head)
        self.scorer = nn.Linear(spec.d_head, 1)  # shared by every label

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        _, q = self.attend(x, mask)  # (B, Y, d)
        scores = self.scorer(self.ln_out(q)).squeeze(-1)  # (B, Y)
        return scores if self.spec.task == "classification" else scores[:, 0]  # (B, Y) or (B,)

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


class StandardisedInput(nn.Module):
    """A probe whose concatenated layer inputs (L*D,) are standardised with training-set statistics held as
    buffers (saved with the weights, not trained), so raw features with large outlier dimensions train well."""

    def __init__(self, spec: HeadSpec):
        super().__init__()
        self.spec = spec
        n_in = spec.n_layers_in * spec.hidden_size
        self.register_buffer("in_mean", torch.zeros(n_in))
        self.register_buffer("in_std", torch.ones(n_in))

    def set_input_stats(self, mean: np.ndarray, std: np.ndarray) -> None:
        self.in_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.in_std.copy_(torch.as_tensor(np.maximum(std, 1e-6), dtype=torch.float32))

    def standardise(self, h: torch.Tensor) -> torch.Tensor:
        return (h - self.in_mean) / self.in_std


class PooledHead(StandardisedInput):
    """`linear`: one linear map of the standardised pooled vectors; `mlp`: one hidden layer of width d_head.
    Layers are concatenated."""

    def __init__(self, spec: HeadSpec):
        super().__init__(spec)
        n_in = spec.n_layers_in * spec.hidden_size
        if spec.kind == "linear":
            self.net = nn.Sequential(nn.Dropout(spec.dropout), nn.Linear(n_in, spec.n_outputs))
        else:
            self.net = nn.Sequential(nn.Dropout(spec.dropout), nn.Linear(n_in, spec.d_head), nn.GELU(),
                                     nn.Dropout(spec.dropout), nn.Linear(spec.d_head, spec.n_outputs))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        out = self.net(self.standardise(x.flatten(1)))  # (B, L, D) -> (B, L*D) -> (B, Y)
        return out if self.spec.task == "classification" else out[:, 0]


def build_head(spec: HeadSpec) -> nn.Module:
    if spec.task in ("token", "span"):  # a logit per tag per token / start and end scores per position
        from .seqmodels import build_seq_head

        return build_seq_head(spec)
    return YTuningHead(spec) if spec.kind == "ytuning" else PooledHead(spec)


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def loss_fn(spec: HeadSpec, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over labels; MSE on standardised targets for regression."""
    if spec.task == "classification":
        return F.cross_entropy(out.float(), y)
    return F.mse_loss(out.float(), (y.float() - spec.target_mean) / spec.target_std)


def outputs(spec: HeadSpec, out: torch.Tensor) -> torch.Tensor:
    """Head output -> what users see: class probabilities (B, Y) or de-standardised values (B,)."""
    if spec.task == "classification":
        return out.float().softmax(-1)
    return out.float() * spec.target_std + spec.target_mean
