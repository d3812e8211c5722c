"""The one device choice of featstore and heads: `auto` is CUDA when present, else the CPU."""
from __future__ import annotations

from .errors import InputError


def pick_device(device: str) -> str:
    """`auto`, `cpu`, `cuda` or `cuda:N` -> a torch device string; a bad or unavailable one is an InputError."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError):
        raise InputError(f"--device {device!r}: use auto, cpu, cuda or cuda:N")
    if kind not in ("cpu", "cuda"):
        raise InputError(f"--device {device!r}: use auto, cpu, cuda or cuda:N")
    if kind == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {device}: CUDA is not available here; use --device cpu or auto")
    return device
