"""One frozen forward pass -> the host arrays a store keeps: ragged token features and pooled vectors of the
kept layers, cast to the stored dtype, screened for values the stored dtype cannot hold."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from ..errors import ExtractionError
from .device_side import HostCopy
from .models import LoadedModel
from .plan import Tokenized, pad_batch


def forward_batch(lm: LoadedModel, tok: Tokenized, split, rows: np.ndarray, layers: list[int], dtype: str,
                  device: str, stats: dict[int, list[float]], projection: dict[int, Any] | None = None,
                  hand_over: str = "host") -> dict[str, Any]:
    """One padded forward pass; returns host arrays of the kept layers (ragged tokens + pooled).

    `projection`: layer -> (mean (D,), basis (D, N)) tensors on `device`; each layer is projected there, before
    pooling (pooling is linear, so pooled vectors are the projections of the pooled features)."""
    import torch

    lengths = tok.lengths[rows]
    ids, mask = pad_batch([tok.input_ids[r] for r in rows], lm.tokenizer.pad_token_id or 0)
    types = pad_batch([tok.token_type_ids[r] for r in rows])[0] if tok.token_type_ids is not None else None
    kwargs = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
    if types is not None:
        kwargs["token_type_ids"] = types.to(device)
    with torch.inference_mode():
        out = lm.model(**kwargs, output_hidden_states=True)
        result = keep_layers(out.hidden_states, kwargs["attention_mask"], layers, dtype, stats, projection,
                             lambda k, h, pooled, m, store_dtype: _check_finite(k, h, pooled, m, rows, split,
                                                                                store_dtype, dtype), hand_over)
    result["lengths"] = lengths
    result["rows"] = rows
    result["ids"] = [split.ids[r] for r in rows]
    for k, per in (tok.extra or {}).items():  # (n_tokens,) per-token alignment of token/span tasks
        result[k] = np.concatenate([per[r] for r in rows]).astype(np.int32)
    result["input_ids"] = np.concatenate([np.asarray(tok.input_ids[r], dtype=np.int32) for r in rows])
    return result


def keep_layers(hidden_states: Sequence[Any], attention_mask: Any, layers: list[int], dtype: str,
                stats: dict[int, list[float]], projection: dict[int, Any] | None = None,
                on_overflow: Callable[..., None] | None = None, hand_over: str = "host") -> dict[str, Any]:
    """Everything extraction does to a batch after the model: keep the chosen layers' hidden states (B, T, D),
    project them, pool them, screen them for values the stored dtype cannot hold, gather statistics, cast,
    and hand them over: `hand_over="host"` as numpy arrays (waits for the copy), `"copying"` as `HostCopy`s
    (the extraction loop: non-blocking on a GPU, the writer waits), `"device"` as the (float32) tensors where
    they are, for `encode_segment_on_device`. `on_overflow(layer, h, pooled, mask,
    store_dtype)` raises naming the example when the cheap screen fires (benchmarks/bench_pipeline.py feeds
    this synthetic hidden states)."""
    import torch

    store_dtype = getattr(torch, dtype)
    limit = torch.finfo(store_dtype).max
    m = attention_mask.bool()  # (B, T)
    B = m.shape[0]
    weights = (attention_mask.float() / m.sum(1, keepdim=True)).unsqueeze(1)  # (B, 1, T)
    result: dict[str, Any] = {}
    for k in layers:
        h = hidden_states[k].float()  # (B, T, D)
        if projection is not None:
            mean, basis = projection[k]
            h = (h - mean) @ basis  # (B, T, N)
        flat = h[m]  # (n_tokens, D), example after example
        pooled = torch.cat([h[:, 0], torch.bmm(weights, h).squeeze(1)])  # (2B, D): cls then mean
        # Sum and sum of squares give the statistics and screen for overflow in one BLAS pass each:
        # every |x| is below the stored dtype's max whenever the sum of squares is.
        total, squares = float(flat.sum()), float(torch.dot(flat.view(-1), flat.view(-1)))
        p_squares = float(torch.dot(pooled.view(-1), pooled.view(-1)))
        if not (abs(total) < float("inf") and squares < limit * limit and p_squares < limit * limit):
            if on_overflow is not None:
                on_overflow(k, h, pooled, m, store_dtype)
        st = stats.setdefault(k, [0.0, 0.0, 0])
        st[0] += total
        st[1] += squares
        st[2] += flat.numel()
        keep = {"host": lambda t: HostCopy(t).numpy(), "copying": HostCopy, "device": lambda t: t}[hand_over]
        result[f"L{k}/tokens"] = keep(flat.to(store_dtype))
        result[f"L{k}/cls"], result[f"L{k}/mean"] = keep(pooled[:B].to(store_dtype)), keep(pooled[B:].to(store_dtype))
    return result


def _check_finite(layer: int, h, pooled, mask, rows, split, store_dtype, dtype: str) -> None:
    """Exact check once the cheap screen fired: raise naming the first example that does not fit."""
    import torch

    finite = torch.isfinite(h.to(store_dtype)).all(dim=-1) | ~mask  # (B, T)
    ok_pooled = torch.isfinite(pooled.to(store_dtype)).all(dim=-1).view(2, -1).all(dim=0)  # (B,)
    bad = ~(finite.all(dim=1) & ok_pooled)
    if bad.any():
        b = int(bad.nonzero()[0, 0])
        raise ExtractionError(
            f"non-finite features in layer {layer} for example {split.ids[rows[b]]!r} (split {split.name!r}, "
            f"row {int(rows[b])}) when stored as {dtype}; use --dtype bfloat16 or float32")


def label_name_features(lm: LoadedModel, label_names: dict[str, list[str]], layers: list[int],
                        device: str, projection: dict[int, Any] | None = None) -> dict[str, np.ndarray]:
    """Mean-pooled features of each label name (e.g. "sport"), for label-prior initialisation of heads."""
    import torch

    out = {}
    for col, names in label_names.items():
        enc = lm.tokenizer(names, padding=True, return_tensors="pt")
        enc = {k: v.to(device) for k, v in enc.items()}
        with torch.inference_mode():
            hs = lm.model(**enc, output_hidden_states=True).hidden_states
        mf = enc["attention_mask"].unsqueeze(-1).float()
        for k in layers:
            f = (hs[k].float() * mf).sum(1) / mf.sum(1)  # (Y, D)
            if projection is not None:
                mean, basis = projection[k]
                f = (f - mean) @ basis  # (Y, N)
            out[f"label_features/{col}/L{k}"] = f.cpu().numpy()
    return out
