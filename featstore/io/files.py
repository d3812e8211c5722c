"""Checksums and atomic writes of local files."""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import numpy as np

from ..errors import StoreError


def sha256_file(path: str, bufsize: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(bufsize):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_array(x: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(x).view(np.uint8).reshape(-1).data).hexdigest()


def write_json_atomic(path: str, obj: Any) -> None:
    """Temporary file, fsync, rename: readers see the old file or the new one, never half of one."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_json(path: str, what: str = "manifest") -> Any:
    """A JSON file of a store; a damaged one is a StoreError naming it, never a traceback."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise StoreError(f"{path}: the {what} is not valid JSON ({str(e)[:80]}); the store is damaged, "
                         "re-extract or re-pull it")


def check_can_create(path: str, flag: str) -> None:
    """Fail before any expensive work if `path` cannot be created: a file on the way, or no permission."""
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise StoreError(f"{flag} {path}: {parent} is a file, not a directory; choose another {flag}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise StoreError(f"{flag} {path}: no permission to write in {parent}; choose another {flag}")


def format_bytes(n: float) -> str:
    """Human size in binary units."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return str(n)
