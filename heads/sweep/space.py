"""What a sweep varies: `--grid name=v1,v2` (every combination) and `--range name=lo:hi[:log]` (sampled with
`--samples N`), over the options of `heads train`. Everything is checked before any feature is read, and every
problem is reported at once."""
from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import dataclass, field, fields
from typing import Any

from ..config import TrainConfig
from ..errors import InputError

# options of a run, not of a head: they stay fixed for the whole sweep (given as ordinary options)
FIXED = ("store", "label_column", "out", "train_split", "dev_split", "test_split", "task", "seeds", "max_memory",
         "device", "threads", "overwrite", "progress", "storage_options", "cache_dir", "backbone")


def _kinds() -> dict[str, type]:
    """Sweepable TrainConfig field -> int | float | str, read from its annotation."""
    out = {}
    for f in fields(TrainConfig):
        if f.name in FIXED:
            continue
        ann = str(f.type)
        out[f.name] = int if ann.startswith("int") else float if ann.startswith("float") else str
    return out


KINDS = _kinds()


@dataclass(frozen=True)
class Range:
    low: float
    high: float
    log: bool
    kind: type  # int | float

    def to_json(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high, "log": self.log, "kind": self.kind.__name__}


@dataclass
class Space:
    grid: dict[str, list[Any]] = field(default_factory=dict)  # option -> values, every combination tried
    ranges: dict[str, Range] = field(default_factory=dict)  # option -> range, sampled (--samples)

    @property
    def names(self) -> list[str]:
        return [*self.grid, *self.ranges]

    def configs(self) -> list[dict[str, Any]]:
        """Every combination of the grid, in the order the values were given."""
        keys = list(self.grid)
        return [dict(zip(keys, combo)) for combo in itertools.product(*(self.grid[k] for k in keys))]

    def to_json(self) -> dict[str, Any]:
        return {"grid": self.grid, "ranges": {k: r.to_json() for k, r in self.ranges.items()}}


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def _value(name: str, text: str, problems: list[str]) -> Any:
    kind, text = KINDS[name], text.strip()
    if name == "patience" and text.lower() in ("0", "none"):
        return None  # as `heads train --patience 0`: never stop early
    try:
        return kind(text) if kind is not float else float(text)
    except ValueError:
        problems.append(f"{name}={text!r}: not {'an integer' if kind is int else 'a number'}")
        return None


def _name(raw: str, flag: str, problems: list[str]) -> str | None:
    name = raw.strip().lstrip("-").replace("-", "_")
    if name in KINDS:
        return name
    if name in FIXED:
        problems.append(f"{flag} {raw}: {_option(name)} is fixed for a whole sweep; give it as an option")
    else:
        problems.append(f"{flag} {raw!r}: not an option of heads train; sweep one of {', '.join(KINDS)}")
    return None


def _item(item: str, flag: str, usage: str, problems: list[str]) -> tuple[str, str | None, str]:
    """`NAME=REST` -> (NAME as given, the option's field name or None when it is no sweepable option, REST)."""
    raw, eq, rest = item.partition("=")
    if not eq:
        problems.append(f"{flag} {item!r}: use {usage}")
        return raw, None, rest
    return raw, _name(raw, flag, problems), rest


def parse_space(grid: list[str], ranges: list[str], samples: int | None) -> Space:
    """`lr=3e-4,1e-3` (values split on `|` instead when one holds a comma: `layers=all|-2,-1`) and
    `lr=1e-4:1e-2:log` -> a checked Space."""
    problems: list[str] = []
    space = Space()
    for item in grid:
        raw, name, values = _item(item, "--grid", "NAME=V1,V2 (e.g. lr=3e-4,1e-3)", problems)
        if name is None:
            continue
        parts = [v for v in values.split("|" if "|" in values else ",") if v.strip()]
        if not parts:
            problems.append(f"--grid {item!r}: no values; give e.g. {raw}=V1,V2")
            continue
        if name in space.grid:
            problems.append(f"--grid {name} is given twice; put all its values in one --grid")
        space.grid[name] = list(dict.fromkeys(_value(name, v, problems) if name != "layers" else v.strip()
                                              for v in parts))
    for item in ranges:
        raw, name, spec = _item(item, "--range", "NAME=LOW:HIGH[:log] (e.g. lr=1e-4:1e-2:log)", problems)
        if name is None:
            continue
        if KINDS[name] is str:
            problems.append(f"--range {name}: a range needs a numeric option; use --grid {name}=A,B")
            continue
        bits = spec.split(":")
        log = len(bits) == 3 and bits[2].strip() == "log"
        if len(bits) not in (2, 3) or (len(bits) == 3 and not log):
            problems.append(f"--range {item!r}: use NAME=LOW:HIGH or NAME=LOW:HIGH:log")
            continue
        n = len(problems)
        low, high = (_value(name, b, problems) for b in bits[:2])
        if len(problems) > n:
            continue
        if not low < high:
            problems.append(f"--range {item!r}: LOW must be below HIGH")
        elif log and low <= 0:
            problems.append(f"--range {item!r}: a log range needs LOW > 0")
        if name in space.grid or name in space.ranges:
            problems.append(f"{_option(name)} is swept twice; give it one --grid or one --range")
        space.ranges[name] = Range(low, high, log, KINDS[name])
    if not grid and not ranges:
        problems.append("nothing to sweep: give --grid NAME=V1,V2 (repeatable) or --range NAME=LOW:HIGH with --samples")
    if space.ranges and samples is None:
        problems.append("--range needs --samples N (how many configs to sample); or list values with --grid")
    if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int) or samples < 1):
        problems.append(f"--samples {samples!r}: must be a positive integer")
    if problems:
        raise InputError("; ".join(problems))
    return space


def config_of(fixed: dict[str, Any], params: dict[str, Any]) -> TrainConfig:
    """The TrainConfig of one point of the space: `params` over the fixed options. Options left at the head's
    default (layers, lr) follow a swept head."""
    return TrainConfig(**{**fixed, **params})


def check_configs(fixed: dict[str, Any], space: Space) -> None:
    """Every grid point is a valid `heads train` config (ranges at their ends); all problems in one line."""
    problems: list[str] = []
    points = space.configs() or [{}]
    for params in points:
        for name, r in space.ranges.items():
            for v in (r.low, r.high):
                try:
                    config_of(fixed, {**params, name: r.kind(v)}).validate()
                except InputError as e:
                    problems.append(f"{name}={v:g}: {e}")
        try:
            config_of(fixed, params).validate()
        except InputError as e:
            where = ", ".join(f"{k}={v}" for k, v in params.items())
            problems.append(f"{where}: {e}" if where else str(e))
    if problems:
        raise InputError("; ".join(dict.fromkeys(problems)))


def config_key(params: dict[str, Any]) -> str:
    """A short, stable name for a point of the space (its trial directory)."""
    text = json.dumps({k: params[k] for k in sorted(params)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def describe(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={_show(v)}" for k, v in params.items())


def _show(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if math.isfinite(v) else str(v)
    return "none" if v is None else str(v)
