"""The format registry: which backend class reads and writes stores of a manifest's `format`. A module of its
own so that the manifest's validation can look formats up without importing the backends."""
from __future__ import annotations

from typing import Any

from ..errors import StoreError

FORMATS_BY_NAME: dict[str, type[Any]] = {}


def register_format(cls: type[Any]) -> type[Any]:
    """Class decorator: `cls` is the backend that writes and reads stores of `cls.format` locally."""
    FORMATS_BY_NAME[cls.format] = cls
    return cls


def format_backend(fmt: Any, source: str) -> type[Any]:
    """The registered backend for a manifest's `format`; a clear refusal for anything else."""
    cls = FORMATS_BY_NAME.get(fmt) if isinstance(fmt, str) else None
    if cls is None:
        raise StoreError(f"{source}: manifest format {str(fmt)[:40]!r} unknown ({' or '.join(FORMATS_BY_NAME)})")
    return cls
