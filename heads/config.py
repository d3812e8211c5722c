"""Typed configuration for training heads, validated before any feature is read: `TrainConfig` is what
`heads train` takes (`HeadSpec`, in heads.spec, is what builds a head)."""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from .errors import InputError
from .registry import HEADS, TASKS, head_class
from .spec import CONTEXT_KINDS

SCHEDULES = ("linear", "cosine", "constant")


@dataclass
class TrainConfig:
    """Everything `heads train` takes. `validate()` reports every problem at once."""

    head: str
    store: str
    label_column: str | None = None  # sentence tasks; token/span stores carry their targets
    out: str | None = None
    train_split: str = "train"
    dev_split: str | None = "validation"  # None: no model selection, the last epoch is kept
    test_split: str | None = "test"  # None: no held-out evaluation
    layers: str | None = None  # default: all stored layers for ytuning, the last one for linear/mlp
    task: str = "auto"  # auto: from the label column's kind
    epochs: int = 10
    batch_size: int = 32
    lr: float | None = None
    weight_decay: float = 0.01
    warmup: float = 0.1  # fraction of all steps
    schedule: str = "linear"
    grad_clip: float = 1.0  # 0: off
    patience: int | None = 3  # epochs without dev improvement before stopping; None: never stop early
    seeds: list[int] = field(default_factory=lambda: [0])
    d_head: int = 128
    n_layers: int = 2
    n_heads: int = 4
    dropout: float = 0.1
    label_init: str = "random"
    pooling: str = "mean"
    max_memory: int | None = None  # bytes of features held in RAM; None: a safe fraction of available RAM
    device: str = "auto"
    # CPU threads for torch; None: all cores but one (the prefetcher's), every core with tuned top layers
    threads: int | None = None
    overwrite: bool = False
    progress: bool = True
    storage_options: dict[str, Any] = field(default_factory=dict)  # for a store URL (s3://...)
    cache_dir: str | None = None  # local cache of a remote store (default: the user cache directory)
    tune_top_layers: int = 0  # >0: also tune the backbone's top m layers, fed the stored layer N-m (heads.top_layers)
    top_lr: float = 5e-5  # their peak learning rate (a fine-tuning one); 0 keeps them frozen
    backbone: str | None = None  # the backbone's directory when the one named in the store moved
    # context layers over the head's token memory (heads.context); None: the task's default for heads that have one
    context_layers: int | None = None
    context: str | None = None  # lstm | transformer; None: the task's default

    def __post_init__(self) -> None:
        if self.head in HEADS and (self.layers is None or self.lr is None):
            kind = head_class(self.head)
            self.layers = kind.default_layers if self.layers is None else self.layers
            self.lr = kind.default_lr if self.lr is None else self.lr
        self.dev_split = none_if_none(self.dev_split)
        self.test_split = none_if_none(self.test_split)

    def validate(self) -> None:
        p = []
        if self.head not in HEADS:
            p.append(f"head {self.head!r}: use one of {', '.join(HEADS)}")
        if self.task != "auto" and self.task not in TASKS:
            p.append(f"--task {self.task!r}: use auto or one of {', '.join(TASKS)}")
        if not self.out:
            p.append("--out is required: the directory the head is written to")
        if not _pos_int(self.epochs):
            p.append(f"--epochs {self.epochs!r}: must be a positive integer")
        if not _pos_int(self.batch_size):
            p.append(f"--batch-size {self.batch_size!r}: must be a positive integer")
        if self.lr is None or not 0 < self.lr < float("inf"):
            p.append(f"--lr {self.lr!r}: must be positive")
        if not 0 <= self.weight_decay < float("inf"):
            p.append(f"--weight-decay {self.weight_decay!r}: must be >= 0")
        if not 0 <= self.warmup < 1:
            p.append(f"--warmup {self.warmup!r}: a fraction of the training steps, in [0, 1)")
        if self.schedule not in SCHEDULES:
            p.append(f"--schedule {self.schedule!r}: use one of {', '.join(SCHEDULES)}")
        if not 0 <= self.grad_clip < float("inf"):
            p.append(f"--grad-clip {self.grad_clip!r}: must be >= 0 (0 turns clipping off)")
        if self.patience is not None and not _pos_int(self.patience):
            p.append(f"--patience {self.patience!r}: must be a positive integer")
        if not self.seeds or not all(_nonneg_int(s) for s in self.seeds):
            p.append(f"--seeds {self.seeds!r}: give non-negative integers below 2**63, e.g. 0,1,2")
        elif len(set(self.seeds)) != len(self.seeds):
            p.append(f"--seeds {self.seeds!r}: a seed is repeated")
        for name in ("d_head", "n_layers", "n_heads"):
            if not _pos_int(getattr(self, name)):
                p.append(f"--{name.replace('_', '-')} {getattr(self, name)!r}: must be a positive integer")
        kind = head_class(self.head) if self.head in HEADS else None
        if kind is not None and _pos_int(self.d_head) and _pos_int(self.n_heads):
            p += kind.size_problems(self.d_head, self.n_heads)
        if not 0 <= self.dropout < 1:
            p.append(f"--dropout {self.dropout!r}: must be in [0, 1)")
        if not _nonneg_int(self.tune_top_layers):
            p.append(f"--tune-top-layers {self.tune_top_layers!r}: must be a non-negative integer")
        elif self.tune_top_layers and kind is not None and not kind.tunes_top_layers:
            able = " and ".join(k for k in HEADS if head_class(k).tunes_top_layers)
            p.append(f"--tune-top-layers works with {able} heads, not {self.head}")
        if not isinstance(self.top_lr, (int, float)) or not 0 <= self.top_lr < float("inf"):
            p.append(f"--top-lr {self.top_lr!r}: must be >= 0 (0 keeps the top layers frozen)")
        if self.context_layers is not None and not _nonneg_int(self.context_layers):
            p.append(f"--context-layers {self.context_layers!r}: must be 0 or a positive integer")
        elif self.context_layers and kind is not None and not kind.token_context:
            able = " and ".join(k for k in HEADS if head_class(k).token_context)
            p.append(f"--context-layers works with {able} heads, not {self.head}; drop it or use --context-layers 0")
        if self.context is not None and self.context not in CONTEXT_KINDS:
            p.append(f"--context {self.context!r}: use one of {', '.join(CONTEXT_KINDS)}")
        if self.label_init not in ("random", "prior"):
            p.append(f"--label-init {self.label_init!r}: use random or prior")
        elif self.label_init == "prior" and kind is not None and not kind.label_queries:
            able = ", ".join(k for k in HEADS if head_class(k).label_queries)
            p.append(f"--label-init prior applies to {able} heads only")
        if self.pooling not in ("cls", "mean"):
            p.append(f"--pooling {self.pooling!r}: use cls or mean")
        if self.threads is not None and not _pos_int(self.threads):
            p.append(f"--threads {self.threads!r}: must be a positive integer")
        if self.max_memory is not None and self.max_memory < 0:
            p.append("--max-memory must be >= 0 (0 streams every split from the store)")
        if self.dev_split is not None and self.dev_split == self.train_split:
            p.append(f"--dev-split {self.dev_split!r} is the training split; model selection needs held-out data")
        if self.test_split is not None and self.test_split == self.dev_split:
            p.append(f"--test-split {self.test_split!r} is also the dev split: the split used for model selection "
                     "is never the reported one; use another split, or --test-split none")
        if self.test_split is not None and self.test_split == self.train_split:
            p.append(f"--test-split {self.test_split!r} is the training split; use a held-out split")
        if p:
            raise InputError("; ".join(p))

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["storage_options"] = sorted(d["storage_options"])  # keys only: values may hold credentials
        return d


def _pos_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _nonneg_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**63  # torch seeds are 64-bit


def none_if_none(v: str | None) -> str | None:
    return None if v is None or v.strip().lower() == "none" else v


def parse_seeds(spec: str) -> list[int]:
    """`0,1,2` -> [0, 1, 2]."""
    try:
        return [int(s) for s in spec.split(",") if s.strip()]
    except ValueError:
        raise InputError(f"bad --seeds {spec!r}: use comma-separated integers, e.g. 0,1,2")


_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "kib": 1 << 10, "m": 1e6, "mb": 1e6, "mib": 1 << 20,
          "g": 1e9, "gb": 1e9, "gib": 1 << 30, "t": 1e12, "tb": 1e12, "tib": 1 << 40}


def parse_bytes(spec: str) -> int:
    """`8GB`, `512MiB`, `0` -> bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", spec)
    if not m or m.group(2).lower() not in _UNITS:
        raise InputError(f"bad --max-memory {spec!r}: use a size like 8GB, 512MiB or 0")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def context_of(cfg: TrainConfig, task: Any) -> dict[str, Any]:
    """HeadSpec's context fields: the options given, else the task's measured default (heads with a token memory
    only; a head without one gets none)."""
    if not head_class(cfg.head).token_context:
        return {"context_layers": 0, "context": cfg.context or "lstm"}
    layers, kind = task.default_context
    return {"context_layers": layers if cfg.context_layers is None else cfg.context_layers,
            "context": cfg.context or kind}


def select_stored_layers(spec: str | Sequence[int], stored: list[int]) -> list[int]:
    """Head layer spec -> absolute layer indices, all of which the store holds.

    `all` = every stored layer; a non-negative index is an absolute layer (as in `featstore extract`);
    a negative one counts from the store's deepest stored layer (-1 = the last stored layer).
    """
    if isinstance(spec, str):
        s = spec.strip()
        if s == "all":
            return list(stored)
        try:
            items = [int(x) for x in s.split(",") if x.strip()]
        except ValueError:
            raise InputError(f"bad --layers {spec!r}: use 'all' or comma-separated integers like -1,-2")
    else:
        items = list(spec)
    if not items:
        raise InputError("--layers is empty: give e.g. -1 or all")
    out: list[int] = []
    bad_neg = [i for i in items if i < 0 and -i > len(stored)]
    if bad_neg:
        raise InputError(f"--layers {bad_neg}: the store holds only {len(stored)} layers {stored} "
                         f"(-1..-{len(stored)} count from its deepest)")
    for i in items:
        a = stored[i] if i < 0 else i
        if a not in out:
            out.append(a)
    missing = [a for a in out if a not in stored]
    if missing:
        raise InputError(f"store lacks layers {missing}; it holds {stored} "
                         "(re-extract with those --layers, or choose from these)")
    return sorted(out)
