"""What the local backends share: segment directories with records, and cleaning up after killed writers."""
from __future__ import annotations

import os
import shutil

from ..io.files import load_json
from .base import SEGMENT_RECORD

PARTIAL = ".partial"


def partial_name(directory: str, name: str) -> str:
    """A temporary name beside the final one: hidden, and marked so a later run can clean it up."""
    return os.path.join(directory, f".{name}{PARTIAL}-{os.getpid()}")


def committed_records(base: str, part_suffix: str = "") -> dict[str, dict]:
    """Segments under `base/segments` whose record exists: written whole and renamed into place.

    Zarr segments are directories holding their record; HDF5 parts (`part_suffix` ".h5") have the record
    beside them as `<name>.json`."""
    out: dict[str, dict] = {}
    seg_root = os.path.join(base, "segments")
    if not os.path.isdir(seg_root):
        return out
    for split in sorted(os.listdir(seg_root)):
        sdir = os.path.join(seg_root, split)
        if not os.path.isdir(sdir):
            continue
        for name in sorted(os.listdir(sdir)):
            if name.startswith("."):
                continue
            if part_suffix:
                if not name.endswith(part_suffix):
                    continue
                rec = os.path.join(sdir, name[:-len(part_suffix)] + ".json")
            else:
                rec = os.path.join(sdir, name, SEGMENT_RECORD)
            if os.path.isfile(rec):
                out[f"{split}/{name.removesuffix(part_suffix) if part_suffix else name}"] = \
                    load_json(rec, "segment record")
    return out


def remove_partials(base: str) -> None:
    seg_root = os.path.join(base, "segments")
    if not os.path.isdir(seg_root):
        return
    for split in os.listdir(seg_root):
        sdir = os.path.join(seg_root, split)
        if not os.path.isdir(sdir):
            continue
        for name in os.listdir(sdir):
            if name.startswith(".") and PARTIAL in name:
                p = os.path.join(sdir, name)
                shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)
