"""`SweepConfig`: what `heads sweep` takes, checked whole before any feature is read."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from ..config import TrainConfig
from ..errors import InputError
from .space import FIXED, KINDS, Space, check_configs, parse_space
from .study import GRACE_BEATS, HEARTBEAT_SECONDS

# options that change how a sweep runs, never its results
RUN_ONLY = ("out", "device", "threads", "progress", "storage_options", "cache_dir", "max_memory", "overwrite")


@dataclass(kw_only=True)
class SweepConfig:
    """The fixed `heads train` options, what to vary, and how to run."""
    fixed: dict[str, Any]  # TrainConfig fields every config shares (head, store, label_column, seeds, ...)
    grid: list[str] = field(default_factory=list)  # NAME=V1,V2
    ranges: list[str] = field(default_factory=list)  # NAME=LOW:HIGH[:log]
    samples: int | None = None  # sample this many configs (TPE) instead of the whole grid
    out: str = "sweep"
    storage: str | None = None  # database URL of the study; default: SQLite at <out>/sweep.db
    workers: int = 1
    heads_per_pass: int | None = None  # None: as many as memory allows
    heartbeat: int = HEARTBEAT_SECONDS  # seconds between a worker's heartbeats in the study
    progress: bool = True

    @property
    def url(self) -> str:
        return self.storage or "sqlite:///" + os.path.abspath(os.path.join(self.out, "sweep.db"))

    @property
    def seeds(self) -> list[int]:
        return list(self.fixed.get("seeds") or [0])

    @property
    def best(self) -> str:
        return os.path.join(self.out, "best")

    def train_config(self, **over: Any) -> TrainConfig:
        return TrainConfig(**{**self.fixed, "out": self.best, **over})

    def to_json(self, secrets: bool = False) -> dict[str, Any]:
        """As JSON; storage option values (credentials) only with `secrets` (to a worker's stdin, never a file)."""
        d = asdict(self)
        if not secrets:
            d["fixed"] = {**self.fixed, "storage_options": sorted(self.fixed.get("storage_options") or {})}
        return d

    def check(self) -> Space:
        """All problems with the options and with every config, in one line."""
        problems = []
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1:
            problems.append(f"--workers {self.workers!r}: must be a positive integer")
        hpp = self.heads_per_pass
        if hpp is not None and (isinstance(hpp, bool) or not isinstance(hpp, int) or hpp < 1):
            problems.append(f"--heads-per-pass {hpp!r}: must be a positive integer")
        hb = self.heartbeat
        if isinstance(hb, bool) or not isinstance(hb, int) or hb < 1:
            problems.append(f"--heartbeat {hb!r}: must be a positive number of seconds (a dead worker's configs "
                            f"are taken back after {GRACE_BEATS} missed beats)")
        if os.path.isfile(self.out):
            problems.append(f"--out {self.out} is a file; give a directory for the sweep")
        unknown = sorted(set(self.fixed) - set(FIXED) - set(KINDS))
        if unknown:
            problems.append(f"unknown options {unknown}")
        space = None
        try:
            space = parse_space(self.grid, self.ranges, self.samples)
            check_configs({**self.fixed, "out": self.best}, space)
        except InputError as e:
            problems.append(str(e))
        if problems:
            raise InputError("; ".join(problems))
        return space

    def settings_hash(self, space: Space, fingerprint: str) -> str:
        """What decides the results: another sweep must not share this one's study or trial directories."""
        d = {"fixed": {k: v for k, v in self.fixed.items() if k not in RUN_ONLY}, "space": space.to_json(),
             "samples": self.samples, "store": fingerprint}
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()
