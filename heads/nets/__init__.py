"""Heads from the registry: `build_head(spec)` and which features a head reads for a task."""
from __future__ import annotations

from torch import nn

from ..errors import InputError
from ..registry import HEADS, head_class, task_class
from ..spec import HeadSpec


def reads(kind: str, task: str) -> str:
    """`tokens` or `pooled`: what head `kind` reads for `task`; an unsupported pair is a user error."""
    output = task_class(task).output
    what = head_class(kind).reads.get(output)
    if what is None:
        able = [k for k in HEADS if output in head_class(k).reads]
        raise InputError(f"the {kind} head does not support {task} tasks (they score every {output}); "
                         f"use {' or '.join(able)}")
    return what


def build_head(spec: HeadSpec) -> nn.Module:
    reads(spec.kind, spec.task)
    return head_class(spec.kind).build(spec, task_class(spec.task).output)


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
