"""What a head kind declares to the registry, and the modules heads share.

A head kind says which features it reads for each shape of task output (`example`: one score vector per
example; `position`: one per token) and builds the module. The rest of `heads` asks it; nothing else
compares head names.
"""
from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ..spec import HeadSpec


class HeadKind:
    """A registry entry: `reads` maps a task's output shape to `tokens` or `pooled`; absent = unsupported."""

    name: ClassVar[str]
    reads: ClassVar[dict[str, str]]
    default_layers: ClassVar[str] = "-1"  # stored layers read when --layers is not given
    default_lr: ClassVar[float] = 1e-3
    tunes_top_layers: ClassVar[bool] = False  # works under --tune-top-layers
    label_queries: ClassVar[bool] = False  # has label queries that --label-init prior can set
    token_context: ClassVar[bool] = False  # takes --context-layers: context layers over its token memory

    @classmethod
    def size_problems(cls, d_head: int, n_heads: int) -> list[str]:
        return []

    @classmethod
    def spec_problems(cls, spec: HeadSpec) -> list[str]:
        return cls.size_problems(spec.d_head, spec.n_heads)

    @classmethod
    def build(cls, spec: HeadSpec, output: str) -> nn.Module:
        raise NotImplementedError


class LayerMix(nn.Module):
    """Softmax-weighted sum over the stored layers (ELMo-style scalar mix)."""

    def __init__(self, n_layers: int):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(n_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.logits.softmax(0).to(x.dtype)  # (L,)
        return torch.einsum("...ld,l->...d", x, w)  # (..., L, D) -> (..., D)


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

    def export_tensors(self) -> dict[str, Any]:
        return dict(self.state_dict())
