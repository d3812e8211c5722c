"""Tag schemes of token tasks (BIO/IOB2, IOBES, or plain tag sets): detection, validation, repair.

Shared by extraction (which refuses an I- without its B- unless asked to repair) and heads' metrics.
"""
from __future__ import annotations

from typing import Sequence

SCHEMES = ("IOB2", "IOBES", "none")


def split_tag(tag: str) -> tuple[str, str]:
    """`B-PER` -> ("B", "PER"); `O` -> ("O", ""); a tag without a prefix -> ("", tag)."""
    if tag == "O":
        return "O", ""
    if len(tag) > 2 and tag[1] in "-_" and tag[0] in "BIES":
        return tag[0], tag[2:]
    return "", tag


def detect_scheme(sequences: Sequence[Sequence[str]]) -> str:
    """IOBES when E-/S- prefixes occur, IOB2 when every non-O tag has a B-/I- prefix, else `none` (POS, chunks
    without prefixes): entity metrics need a scheme."""
    prefixes = {split_tag(t)[0] for seq in sequences for t in seq}
    prefixes.discard("O")
    if not prefixes or "" in prefixes:
        return "none"
    if prefixes <= {"B", "I"}:
        return "IOB2"
    if prefixes <= {"B", "I", "E", "S"}:
        return "IOBES"
    return "none"


def invalid_tags(tags: Sequence[str], scheme: str) -> list[int]:
    """Positions of tags that continue an entity that never started (I-X, E-X without B-X/I-X of X before)."""
    bad = []
    prev_p, prev_t = "O", ""
    for i, tag in enumerate(tags):
        p, t = split_tag(tag)
        if p in ("I", "E") and not (prev_p in ("B", "I") and prev_t == t):
            bad.append(i)
        prev_p, prev_t = p, t
    return bad if scheme in ("IOB2", "IOBES") else []


def repair_tags(tags: Sequence[str], scheme: str) -> list[str]:
    """Start every entity that was never started: I-X -> B-X (IOBES: I-X -> B-X, E-X -> S-X)."""
    out = list(tags)
    for i in invalid_tags(tags, scheme):
        p, t = split_tag(out[i])
        out[i] = ("S-" if p == "E" else "B-") + t
    return out
