"""heads: train Y-Tuning label modules (and linear / MLP probes) on a featstore store, no backbone in memory.

    from heads import TrainConfig, train, evaluate, predict, load_head
    result = train(TrainConfig("ytuning", store="stores/sst2", label_column="label", out="runs/sst2"))
    evaluate("runs/sst2", "stores/sst2", "test").metrics
    predict("runs/sst2", ["a gripping, beautifully shot film"])   # loads the backbone named in the head

Only `predict` loads a backbone (and imports transformers); training and evaluation read the store alone.
The names below are imported on first use, so `import heads` (and `heads --help`) does not import torch.
"""
from __future__ import annotations

import importlib
import sys
import types
from typing import Any

__version__ = "0.1.0"

_WHERE = {"train": "train", "TrainResult": "train", "SeedResult": "trainer", "evaluate": "evaluate",
          "EvalResult": "evaluate", "predict": "predict", "load_head": "artifacts", "LoadedHead": "artifacts",
          "TrainConfig": "config", "HeadSpec": "spec", "HeadError": "errors", "Task": "tasks",
          "resolve_task": "tasks", "register_task": "registry", "register_head": "registry"}

__all__ = [*_WHERE, "__version__"]


class _Package(types.ModuleType):
    """Importing the submodule `heads.train` (or `evaluate`, `predict`) would bind it over the function of the
    same name on this package; the functions keep their names (the submodules stay in sys.modules)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _WHERE and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'heads' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
