"""Stored encodings and their decoding. No torch: readers decode with numpy alone.

Float encodings (`float16`, `bfloat16`, `float32`) store values as they are (numpy has no bfloat16, so bf16 is
stored as its raw 16 bits and tagged). 8-bit encodings (`int8`, `fp8` = float8 e4m3fn) store one byte per
value plus side arrays beside each coded array `X` (`X` = `L{k}/tokens`, `L{k}/cls`, `L{k}/mean`):

- `X_shift`, `X_gain` (D,) float32: a per-channel standardisation fitted on the segment's own rows. Hidden
  states have a few channels with huge, nearly constant values; without it a per-row absmax spends the 8-bit
  range on those channels and every other channel rounds to a few levels. Measured on synthetic rows with three
  ~100x outlier channels (`tests/featstore/test_encodings.py`): relative error on the ordinary channels, int8
  0.23 with per-row absmax alone vs 0.007 standardised first; fp8 0.027 either way, but its error on the whole
  row drops from 0.016 to 0.003 (the outliers keep their own precision). So both 8-bit encodings standardise.
- `X_scale` (R,) float32: the per-row absmax of the standardised row over the code's largest value.

decoded row = codes * scale[row] * gain + shift.
"""
from __future__ import annotations

from typing import Any

import numpy as np

DTYPES = ("float16", "bfloat16", "float32")
CODED = ("int8", "fp8")
ENCODINGS = DTYPES + CODED
BF16 = "bfloat16"
SIDE = ("scale", "shift", "gain")  # suffixes of the side arrays of a coded array: `X_scale` ...
INT8_MAX = 127  # symmetric: -128 is never written, so verify can tell it from a valid code
FP8_MAX = 448.0
FP8_NAN = (0x7F, 0xFF)


def _fp8_table() -> np.ndarray:
    """float32 value of every e4m3fn byte (0x7F / 0xFF are NaN)."""
    c = np.arange(256, dtype=np.int64)
    sign = np.where(c & 0x80, -1.0, 1.0)
    exp, mant = (c >> 3) & 0xF, c & 7
    mag = np.where(exp == 0, mant / 8.0 * 2.0 ** -6, (1.0 + mant / 8.0) * 2.0 ** (exp - 7.0))
    out = (sign * mag).astype(np.float32)
    out[list(FP8_NAN)] = np.nan
    return out


FP8_VALUES = _fp8_table()  # (256,)
_FP8_POS = FP8_VALUES[:0x7F].astype(np.float64)  # (127,) non-negative finite values, increasing


def is_coded(encoding: str) -> bool:
    return encoding in CODED


def encoding_of(settings: dict[str, Any]) -> str:
    """A store's encoding; stores written before encodings existed are their dtype."""
    return settings.get("encoding", settings["dtype"])


def to_storable(x: np.ndarray, dtype: str) -> np.ndarray:
    return x.view(np.uint16) if dtype == BF16 else x


def from_stored(x: np.ndarray, dtype: str) -> np.ndarray:
    """Stored values of a float encoding -> numpy (bf16 widened exactly to float32)."""
    if dtype == BF16:
        return (x.astype(np.uint32) << 16).view(np.float32)
    return x


def itemsize(encoding: str) -> int:
    """Bytes per stored value."""
    return 4 if encoding == "float32" else 1 if encoding in CODED else 2


def read_itemsize(encoding: str) -> int:
    """Bytes per value as readers return it (bf16 and 8-bit codes are decoded to float32)."""
    return 2 if encoding == "float16" else 4


def row_overhead(encoding: str) -> int:
    """Side bytes per stored row (the per-row scale) of a coded array."""
    return 4 if encoding in CODED else 0


def bytes_per_token(m: dict[str, Any]) -> int:
    """Stored bytes of one token's features over all kept layers (codes plus per-row scale)."""
    enc = encoding_of(m["settings"])
    width = int(m["settings"].get("project") or m["model"]["hidden_size"])
    return len(m["settings"]["layers"]) * (width * itemsize(enc) + row_overhead(enc))


def _fp8_encode(y: np.ndarray) -> np.ndarray:
    """float -> nearest e4m3fn byte (|y| <= 448 assumed): torch's cast (round to nearest even; several times
    faster than the table search below, which is kept for machines without torch)."""
    try:
        import torch
    except ImportError:
        return _fp8_encode_numpy(y)
    t = torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32))
    return t.to(torch.float8_e4m3fn).view(torch.uint8).numpy()


def _fp8_encode_numpy(y: np.ndarray) -> np.ndarray:
    """float -> nearest e4m3fn byte (|y| <= 448 assumed), by a search in the table of codes."""
    a = np.abs(y).astype(np.float64)
    hi = np.clip(np.searchsorted(_FP8_POS, a), 1, len(_FP8_POS) - 1)
    lo = hi - 1
    code = np.where(a - _FP8_POS[lo] <= _FP8_POS[hi] - a, lo, hi).astype(np.uint8)
    return code | np.where(y < 0, np.uint8(0x80), np.uint8(0)).astype(np.uint8)


def encode(x: np.ndarray, encoding: str, standardise: bool = True) -> dict[str, np.ndarray]:
    """(R, D) float rows -> {"": codes (R, D), "_scale": (R,), "_shift": (D,), "_gain": (D,)}.

    `standardise=False` keeps shift 0 and gain 1 (only used to measure what the standardisation buys)."""
    x = np.asarray(x, dtype=np.float32)  # (R, D)
    R, D = x.shape
    if standardise and R:
        shift = x.mean(axis=0, dtype=np.float64).astype(np.float32)  # (D,)
        gain = x.std(axis=0, dtype=np.float64).astype(np.float32)  # (D,)
        gain = np.where(gain > 0, gain, np.float32(1.0)).astype(np.float32)
    else:
        shift, gain = np.zeros(D, np.float32), np.ones(D, np.float32)
    y = (x - shift) / gain  # (R, D)
    top = INT8_MAX if encoding == "int8" else FP8_MAX
    absmax = np.abs(y).max(axis=1) if D else np.zeros(R, np.float32)  # (R,)
    scale = np.where(absmax > 0, absmax / top, 1.0).astype(np.float32)  # (R,): all-zero rows decode to 0
    q = y / scale[:, None]
    if encoding == "int8":
        codes = np.clip(np.rint(q), -INT8_MAX, INT8_MAX).astype(np.int8)
    elif encoding == "fp8":
        codes = _fp8_encode(np.clip(q, -FP8_MAX, FP8_MAX))
    else:
        raise ValueError(f"{encoding!r} is not an 8-bit encoding")
    return {"": codes, "_scale": scale, "_shift": shift, "_gain": gain}


def decode(codes: np.ndarray, encoding: str, scale: np.ndarray, shift: np.ndarray, gain: np.ndarray) -> np.ndarray:
    """(..., D) codes + side arrays -> float32 rows: scale has the codes' shape without D (one per row), shift
    and gain broadcast against the codes' trailing axes ((D,), or (L, D) for rows of several layers)."""
    if encoding == "int8":
        q = codes.astype(np.float32)
    else:
        q = FP8_VALUES[codes.view(np.uint8)]
    return q * (np.asarray(scale, np.float32)[..., None] * np.asarray(gain, np.float32)) \
        + np.asarray(shift, np.float32)


def cast_float(x: np.ndarray, dtype: str) -> np.ndarray:
    """float32 rows -> a float encoding's host array (bf16 rounded to nearest even, as its raw 16 bits)."""
    if dtype == BF16:
        u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
        return ((u + np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1))) >> 16).astype(np.uint16)
    return np.asarray(x, dtype=np.float16 if dtype == "float16" else np.float32)


def storable(x: np.ndarray, encoding: str) -> dict[str, np.ndarray]:
    """Rows of one array -> what the store keeps under its name (suffix "") and its side arrays."""
    if encoding in CODED:
        return encode(x, encoding)
    return {"": to_storable(x, encoding)}


def code_problems(codes: np.ndarray, encoding: str, scale: np.ndarray, shift: np.ndarray,
                  gain: np.ndarray) -> list[str]:
    """What is wrong with coded values (empty = fine): codes out of range, scales not finite and positive."""
    out = []
    if encoding == "int8" and codes.size and int(codes.min()) < -INT8_MAX:
        out.append("codes out of range (-128)")
    if encoding == "fp8" and codes.size and np.isin(codes.view(np.uint8), FP8_NAN).any():
        out.append("NaN codes")
    if not (np.isfinite(scale).all() and (scale > 0).all()):
        out.append("scales not finite and positive")
    if not np.isfinite(shift).all():
        out.append("channel shifts not finite")
    if not (np.isfinite(gain).all() and (gain > 0).all()):
        out.append("channel gains not finite and positive")
    return out


def decode_tensors(q: Any, scale: Any, seg: Any, mask: Any, shift: Any, gain: Any) -> Any:
    """`decode` for torch tensors on one device, a padded batch at a time: (B, T, L, D) code values (fp8 already
    mapped through its table) x (B, T, L) row scales -> q * scale * gain[seg] + shift[seg] with (S, L, D) channel
    tables indexed by each example's segment (B,); padding (mask (B, T) = 0) decodes to 0, as float batches are
    padded. Tensor methods only: this module never imports torch."""
    x = shift[seg][:, None].addcmul(q * scale.unsqueeze(-1), gain[seg][:, None])  # (B, T, L, D)
    return x * mask[:, :, None, None]
