"""Tasks: one module each, found through `heads.registry`. `resolve_task` picks the task of a store."""
from __future__ import annotations

from typing import Any

from featstore.store import Store

from ..errors import InputError
from ..registry import TASKS, task_class
from .base import Task


def resolve_task(store: Store, task: str = "auto", column: str | None = None) -> Task:
    """The task `store` (and its label `column`) holds; `task` other than auto names it, and must fit."""
    if task == "auto":
        found = next((name for name in TASKS if task_class(name).detect(store, column)), None)
        if found is None:
            raise InputError(f"store {store.path}: no task fits label column {column!r}; name one with --task")
        task = found
    cls = task_class(task)
    if store.task != "sentence" and cls.store_kind != store.task:
        raise InputError(f"--task {task} but store {store.path} holds a {store.task} task; use --task {store.task} "
                         "(or auto)")
    return cls.from_store(store, column)


def task_of_head(meta: dict[str, Any]) -> Task:
    """The task a head was trained on (head.json)."""
    return task_class(meta["task"]).from_meta(meta)


__all__ = ["Task", "resolve_task", "task_of_head"]
