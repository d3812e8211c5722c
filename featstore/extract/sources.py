"""What an extraction reads before any model runs: the inputs of every split, and the max length the model takes.
Shared by `extract` and `estimate` (which must count exactly what extraction will store)."""
from __future__ import annotations

from typing import Any

from ..errors import InputError
from .config import ExtractConfig
from .inputs import Dataset, load_dataset
from .tasks import TaskInfo, load_span_dataset, load_token_dataset


def load_inputs(cfg: ExtractConfig) -> tuple[Dataset, TaskInfo | None]:
    """Read and check every split's file (and a token/span task's tags or answers)."""
    if cfg.task == "token":
        return load_token_dataset(cfg.data, cfg.tokens_column, cfg.tags_column, cfg.id_column, cfg.tag_scheme,
                                  cfg.repair_tags, cfg.strict_labels)
    if cfg.task == "span":
        return load_span_dataset(cfg.data, cfg.repair_answers)
    return load_dataset(cfg.data, cfg.text_column, cfg.pair_column, cfg.label_columns, cfg.id_column,
                        allow_empty_text=cfg.allow_empty_text, strict_labels=cfg.strict_labels), None


def resolve_max_length(cfg: ExtractConfig, tokenizer: Any, config: Any) -> None:
    """Default to the model's limit (at most 512); refuse more than a model with absolute positions takes."""
    limit = tokenizer.model_max_length if 0 < tokenizer.model_max_length < 1_000_000 else None
    positions = getattr(config, "max_position_embeddings", None)
    if getattr(config, "position_biased_input", True) and isinstance(positions, int) and positions > 0:
        limit = min(limit or positions, positions)  # absolute positions: longer inputs would fail in the model
    if cfg.max_length is None:
        cfg.max_length = min(512, limit or 512)
    elif limit and cfg.max_length > limit:
        raise InputError(f"--max-length {cfg.max_length} exceeds this model's limit of {limit}; use --max-length {limit}")
