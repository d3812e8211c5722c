"""Baselines: `linear` (one linear map) and `mlp` (one hidden layer of width d_head) on standardised,
concatenated layers: pooled vectors (B, L, D) for example tasks, every token (B, T, L, D) for position tasks
(linear only)."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..spec import HeadSpec
from .base import HeadKind, StandardisedInput


class PooledHead(StandardisedInput):
    """(B, L, D) pooled vectors -> (B, L*D) -> (B, Y)."""

    def __init__(self, spec: HeadSpec, hidden: int | None):
        super().__init__(spec)
        n_in = spec.n_layers_in * spec.hidden_size
        if hidden is None:
            self.net = nn.Sequential(nn.Dropout(spec.dropout), nn.Linear(n_in, spec.n_outputs))
        else:
            self.net = nn.Sequential(nn.Dropout(spec.dropout), nn.Linear(n_in, hidden), nn.GELU(),
                                     nn.Dropout(spec.dropout), nn.Linear(hidden, spec.n_outputs))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(self.standardise(x.flatten(1)))  # (B, L, D) -> (B, L*D) -> (B, Y)

    def export_tensors(self) -> dict[str, Any]:
        """A single linear map: `weight` (Y, L*D) and `bias` (Y,) with the standardisation of inputs and of
        targets folded in, so `pooled @ weight.T + bias` gives the head's outputs."""
        if len(self.net) != 2:
            return super().export_tensors()
        lin, std, mean, spec = self.net[-1], self.in_std, self.in_mean, self.spec
        weight = lin.weight / std  # (Y, L*D)
        bias = lin.bias - (lin.weight * (mean / std)).sum(1)  # (Y,)
        return {"weight": weight * spec.target_std, "bias": bias * spec.target_std + spec.target_mean}


class TokenLinearHead(StandardisedInput):
    """Linear probe per token: (B, T, L, D) -> (B, T, L*D) -> (B, T, Y)."""

    def __init__(self, spec: HeadSpec):
        super().__init__(spec)
        self.drop = nn.Dropout(spec.dropout)
        self.out = nn.Linear(spec.n_layers_in * spec.hidden_size, spec.n_outputs)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.out(self.drop(self.standardise(x.flatten(2))))


def _pooling_problems(spec: HeadSpec, reads: dict[str, str]) -> list[str]:
    from ..registry import task_class

    pooled = reads.get(task_class(spec.task).output) == "pooled"
    return [f"--pooling {spec.pooling!r}: use cls or mean"] if pooled and spec.pooling not in ("cls", "mean") else []


class Linear(HeadKind):
    name = "linear"
    reads = {"example": "pooled", "position": "tokens"}
    tunes_top_layers = True

    @classmethod
    def spec_problems(cls, spec: HeadSpec) -> list[str]:
        return _pooling_problems(spec, cls.reads)

    @classmethod
    def build(cls, spec: HeadSpec, output: str) -> nn.Module:
        return PooledHead(spec, None) if output == "example" else TokenLinearHead(spec)


class MLP(HeadKind):
    name = "mlp"
    reads = {"example": "pooled"}

    @classmethod
    def spec_problems(cls, spec: HeadSpec) -> list[str]:
        return _pooling_problems(spec, cls.reads)

    @classmethod
    def build(cls, spec: HeadSpec, output: str) -> nn.Module:
        return PooledHead(spec, spec.d_head)
