"""Stored dtypes and their decoding: numpy has no bfloat16, so bf16 is stored as its raw 16 bits and tagged."""
from __future__ import annotations

import numpy as np

DTYPES = ("float16", "bfloat16", "float32")
BF16 = "bfloat16"


def to_storable(x: np.ndarray, dtype: str) -> np.ndarray:
    return x.view(np.uint16) if dtype == BF16 else x


def from_stored(x: np.ndarray, dtype: str) -> np.ndarray:
    """Stored values -> numpy (bf16 widened exactly to float32)."""
    if dtype == BF16:
        return (x.astype(np.uint32) << 16).view(np.float32)
    return x


def itemsize(dtype: str) -> int:
    """Bytes per stored value."""
    return 4 if dtype == "float32" else 2


def read_itemsize(dtype: str) -> int:
    """Bytes per value as readers return it (bf16 is widened to float32)."""
    return 4 if dtype in ("float32", BF16) else 2
