"""Where tasks and heads are found by name. Adding one is a file plus a line here (or a `register_*` call).

Entries name a class as "module:Class" and are imported on first use, so the names are known (for
`--help`, validation) without importing torch.
"""
from __future__ import annotations

import importlib
from typing import Any

from .errors import InputError

TASKS: dict[str, Any] = {
    "classification": "heads.tasks.classification:Classification",
    "regression": "heads.tasks.regression:Regression",
    "multilabel": "heads.tasks.multilabel:MultiLabel",
    "token": "heads.tasks.token:TokenTagging",
    "span": "heads.tasks.span:SpanExtraction",
}

HEADS: dict[str, Any] = {
    "ytuning": "heads.nets.ytuning:YTuning",
    "linear": "heads.nets.probes:Linear",
    "mlp": "heads.nets.probes:MLP",
}


def _load(table: dict[str, Any], name: str, what: str) -> Any:
    if name not in table:
        raise InputError(f"unknown {what} {name!r}: use one of {', '.join(table)}")
    entry = table[name]
    if isinstance(entry, str):
        module, _, attr = entry.partition(":")
        entry = table[name] = getattr(importlib.import_module(module), attr)
    return entry


def task_class(name: str) -> Any:
    return _load(TASKS, name, "task")


def head_class(name: str) -> Any:
    return _load(HEADS, name, "head")


def register_task(name: str, cls: Any) -> None:
    """Make a task class (a `heads.tasks.base.Task`) available under `name` to train, eval and predict."""
    TASKS[name] = cls


def register_head(name: str, cls: Any) -> None:
    """Make a head class (a `heads.nets.base.Head`) available under `name`."""
    HEADS[name] = cls
