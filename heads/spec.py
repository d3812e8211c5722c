"""`HeadSpec`: everything that rebuilds a head's modules, saved as head.json's `architecture` so the
checkpoint carries the config that built it."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from .errors import HeadError, InputError
from .registry import HEADS, TASKS, head_class

CONTEXT_KINDS = ("lstm", "transformer")  # heads.context.KINDS, without importing torch


@dataclass
class HeadSpec:
    kind: str  # a head of the registry: ytuning | linear | mlp | ...
    task: str  # a task of the registry: classification | regression | token | span | ...
    n_outputs: int  # number of labels (tags; start/end); 1 for regression
    hidden_size: int  # D of the stored features
    n_layers_in: int  # L: how many stored layers the head reads
    d_head: int = 128  # Y-Tuning width; hidden width of mlp
    n_layers: int = 2  # Y-Tuning label blocks
    n_heads: int = 4
    dropout: float = 0.1
    ffn_mult: int = 4
    pooling: str | None = None  # cls | mean for heads reading pooled vectors; None for those reading tokens
    target_mean: float = 0.0  # regression targets are standardised with train statistics
    target_std: float = 1.0
    context_layers: int = 0  # layers over the projected memory that let tokens see each other (heads.context)
    context: str = "lstm"  # lstm | transformer; ignored when context_layers is 0

    def __post_init__(self) -> None:
        problems = []
        if self.kind not in HEADS:
            problems.append(f"head {self.kind!r}: use one of {', '.join(HEADS)}")
        if self.task not in TASKS:
            problems.append(f"task {self.task!r}: use one of {', '.join(TASKS)}")
        for name in ("n_outputs", "hidden_size", "n_layers_in", "d_head", "n_layers", "n_heads", "ffn_mult"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                problems.append(f"{name} = {v!r}: must be a positive integer")
        if not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            problems.append(f"--dropout {self.dropout!r}: must be in [0, 1)")
        if not isinstance(self.context_layers, int) or isinstance(self.context_layers, bool) or self.context_layers < 0:
            problems.append(f"--context-layers {self.context_layers!r}: must be 0 or a positive integer")
        if self.context not in CONTEXT_KINDS:
            problems.append(f"--context {self.context!r}: use one of {', '.join(CONTEXT_KINDS)}")
        if not isinstance(self.target_std, (int, float)) or self.target_std <= 0:
            problems.append(f"target_std {self.target_std!r}: must be positive")
        if not problems and self.context_layers and not head_class(self.kind).token_context:
            able = [k for k in HEADS if head_class(k).token_context]
            problems.append(f"--context-layers: the {self.kind} head has no token memory to add context to; use "
                            f"{' or '.join(able)}, or --context-layers 0")
        if not problems:
            problems += head_class(self.kind).spec_problems(self)
        if problems:
            raise InputError("; ".join(problems))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Any, source: str) -> "HeadSpec":
        if not isinstance(d, dict):
            raise HeadError(f"{source}: `architecture` is not an object; the head directory is damaged")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise HeadError(f"{source}: unknown architecture keys {unknown}; written by a newer heads?")
        try:
            return cls(**d)
        except (TypeError, InputError) as e:
            raise HeadError(f"{source}: invalid architecture ({e}); the head directory is damaged")
