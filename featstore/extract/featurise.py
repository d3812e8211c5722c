"""Features of texts in memory, computed exactly as `extract` stores them: the same tokenization (and, for
token/span tasks, the same word/offset alignment), the same forward pass, cast to the stored dtype and read
back as a store returns it. `heads predict` (and a head with tuned top layers) featurise raw text here, so
predict-time features equal stored features by construction.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..store.encoding import from_stored
from .inputs import SplitData
from .models import LoadedModel, truncate_after
from .plan import Tokenized, storage_order, tokenize
from .tasks import TaskInfo, tokenize_task


def tokenize_split(tokenizer: Any, split: SplitData, task: TaskInfo | None, max_length: int,
                   truncation: str, stride: int | None = None) -> Tokenized:
    """Extraction's tokenization of a whole split: plain for sentence tasks, aligned for token/span tasks
    (span contexts in windows of `stride` overlapping tokens when given)."""
    if task is None:
        return tokenize(tokenizer, split, max_length, truncation)
    return tokenize_task(tokenizer, split, task, max_length, truncation, stride)


@dataclass
class TextFeatures:
    """Features of a split in storage order (longest first), as read back from a store."""

    tok: Tokenized
    order: np.ndarray  # (N,) order[j] = input index of the j-th example
    tokens: np.ndarray | None  # (N_tokens, L, D) float, examples in storage order
    pooled: np.ndarray | None  # (N, L, D) float

    @property
    def lengths(self) -> np.ndarray:
        return self.tok.lengths[self.order]

    def token_extra(self, name: str) -> np.ndarray:
        """A per-token alignment array (`word_index`, `char_start`, `char_end`) in storage order."""
        return np.concatenate([self.tok.extra[name][r] for r in self.order])


def featurise(lm: LoadedModel, split: SplitData, settings: dict[str, Any], layers: Sequence[int], *,
              task: str | None = None, keep: str = "tokens", batch_size: int = 32, device: str = "cpu",
              compute_dtype: str = "float32", projection: dict[int, Any] | None = None) -> TextFeatures:
    """Run `lm` over `split` with a store's `settings` (max_length, truncation, dtype); keep `tokens` or the
    pooled vectors named by `keep` (`cls` | `mean`) of `layers`. `task`: token | span for aligned tokenization."""
    import torch

    from .forward import forward_batch

    layers = list(layers)
    info = TaskInfo(task) if task is not None else None
    tok = tokenize_split(lm.tokenizer, split, info, settings["max_length"], settings["truncation"],
                         settings.get("stride"))
    truncate_after(lm.model, max(layers))
    lm.model.to(device=device, dtype=getattr(torch, compute_dtype))
    order = storage_order(tok.lengths)
    dtype = settings["dtype"]
    parts = [forward_batch(lm, tok, split, order[a:a + batch_size], layers, dtype, device, {}, projection)
             for a in range(0, len(order), batch_size)]
    stacked = np.stack([from_stored(np.concatenate([p[f"L{k}/{keep}"] for p in parts]), dtype) for k in layers],
                       axis=1)  # (N_tokens, L, D) or (N, L, D)
    return TextFeatures(tok, order, stacked if keep == "tokens" else None, None if keep == "tokens" else stacked)
