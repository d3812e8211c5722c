"""Token context over a head's memory: lets one token's representation look at the others before scoring.

A per-token projection of frozen features cannot re-contextualise them; BERT's feature-based NER put a 2-layer
BiLSTM on frozen features for this (Devlin et al. 2019, Table 7). `ContextEncoder` is that, or small pre-norm
transformer layers, over a memory (B, T, d) with right padding:

    lstm:        K x [ x <- LayerNorm(x + Dropout(BiLSTM(x))) ]     (d/2 each way, padding packed)
    transformer: x + positions (sinusoidal) -> K pre-norm layers (key padding masked) -> LayerNorm

K = 0 is the identity (no parameters). An optional segment embedding (0: question, 1: context) is added to the
input first, so span heads know which tokens are which. Padded positions never change a real token's output;
their own outputs are the input, unchanged.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

KINDS = ("lstm", "transformer")


class ContextEncoder(nn.Module):
    """(B, T, d) memory + (B, T) bool mask of real tokens (right-padded) -> (B, T, d)."""

    def __init__(self, d: int, kind: str = "lstm", layers: int = 2, heads: int = 4, dropout: float = 0.1,
                 segments: bool = False):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"context kind {kind!r}: use one of {', '.join(KINDS)}")
        if layers < 0:
            raise ValueError(f"context layers {layers}: must be >= 0")
        if layers and kind == "lstm" and d % 2:
            raise ValueError(f"a BiLSTM context needs an even width (d/2 each way), got {d}")
        if layers and kind == "transformer" and d % heads:
            raise ValueError(f"transformer context: width {d} is not divisible by {heads} heads")
        self.d, self.kind, self.n_layers = d, kind, layers
        self.segment = nn.Embedding(2, d) if segments and layers else None
        if self.segment is not None:
            nn.init.zeros_(self.segment.weight)  # starts as the plain memory
        self.drop = nn.Dropout(dropout)
        if not layers:
            self.blocks = nn.ModuleList()
        elif kind == "lstm":
            self.blocks = nn.ModuleList(nn.LSTM(d, d // 2, batch_first=True, bidirectional=True) for _ in range(layers))
            self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(layers))
        else:
            self.blocks = nn.ModuleList(
                nn.TransformerEncoderLayer(d, heads, dim_feedforward=2 * d, dropout=dropout, activation="gelu",
                                           batch_first=True, norm_first=True) for _ in range(layers))
            self.norm = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, segment_ids: torch.Tensor | None = None) -> torch.Tensor:
        if not self.n_layers:
            return x
        mask = mask.bool()  # (B, T)
        h = x
        if self.segment is not None:
            if segment_ids is None:
                raise ValueError("this context encoder was built with segments: pass segment_ids (0/1 per token)")
            h = h + self.segment(segment_ids.long())  # (B, T, d)
        h = self._lstm(h, mask) if self.kind == "lstm" else self._transformer(h, mask)
        return torch.where(mask.unsqueeze(-1), h, x)  # padding keeps its input: nothing leaks out of it

    def _lstm(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, T, _ = h.shape
        lengths = mask.sum(1).clamp(min=1).cpu()  # (B,) an all-padding row still needs one step
        for lstm, norm in zip(self.blocks, self.norms):
            packed = pack_padded_sequence(h, lengths, batch_first=True, enforce_sorted=False)
            out, _ = lstm(packed)
            out, _ = pad_packed_sequence(out, batch_first=True, total_length=T)  # (B, T, d), zeros on padding
            h = norm(h + self.drop(out.to(h.dtype)))
        return h

    def _transformer(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = h + sinusoidal(h.shape[1], self.d, h.device, h.dtype)  # (B, T, d)
        pad = ~mask
        pad[:, 0] = pad[:, 0] & mask.any(1)  # a row of padding only attends to its first position: no NaN
        for layer in self.blocks:
            h = layer(h, src_key_padding_mask=pad)
        return self.norm(h)


def sinusoidal(T: int, d: int, device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(T, d) fixed positions of "Attention is all you need": any length, nothing to learn."""
    pos = torch.arange(T, device=device, dtype=torch.float32).unsqueeze(1)  # (T, 1)
    freq = torch.exp(torch.arange(0, d, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / d))
    pe = torch.zeros(T, d, device=device)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq[:d // 2])
    return pe.to(dtype)
