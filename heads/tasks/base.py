"""The `Task` interface: everything task-specific that train, eval and predict need.

A task reads a store's targets, owns the loss, turns a batch of head outputs into per-example outputs,
decodes them to predictions, scores them, and writes the rows `eval` and `predict` print. For `predict` it
also says how raw texts become backbone inputs. Train, the inference loop, evaluate and predict call these
methods and never compare task names.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Sequence

import numpy as np
import torch

from featstore.extract.inputs import SplitData
from featstore.store import Split, Store

from ..metrics import higher_is_better


class Task(ABC):
    name: ClassVar[str]
    store_kind: ClassVar[str] = "sentence"  # the kind of store it reads: sentence | token | span
    output: ClassVar[str]  # "example": the head scores each example (B, Y); "position": each token (B, T, Y)
    extraction_task: ClassVar[str | None] = None  # featstore's token | span tokenization for raw text; None: plain
    named_outputs: ClassVar[bool] = True  # one name per output (labels, tags): head.json must list them
    label_queries_from_names: ClassVar[bool] = False  # --label-init prior: queries from the label names' features
    # `heads train` without --context-layers/--context: (layers, kind) of context over the memory, chosen by dev
    # results (docs/token-context.md); none for sentence tasks, whose heads read a whole example anyway
    default_context: ClassVar[tuple[int, str]] = (0, "lstm")
    segment_ids: ClassVar[bool] = False  # the head's token context sees which tokens are which (span: question/context)

    column: str
    label_names: list[str] | None
    # labels of the vocabulary that the training split lacks (kept by extraction for dev/test): never predicted
    untrained: tuple[str, ...] = ()

    # -- which tasks a store holds -------------------------------------------------------------------------
    @classmethod
    def detect(cls, store: Store, column: str | None) -> bool:
        """True when `--task auto` should pick this task for `store` (and `column`)."""
        return False

    @classmethod
    @abstractmethod
    def from_store(cls, store: Store, column: str | None) -> "Task":
        """The task of `column` in `store`, checked (a clear InputError/StoreError when it does not fit)."""

    @classmethod
    @abstractmethod
    def from_meta(cls, meta: dict[str, Any]) -> "Task":
        """The task a head was trained on, from its head.json."""

    @abstractmethod
    def to_meta(self) -> dict[str, Any]:
        """head.json fields that `from_meta` reads back."""

    @property
    def n_outputs(self) -> int:
        return len(self.label_names or [])

    @property
    @abstractmethod
    def primary(self) -> str:
        """The metric that selects epochs and seeds."""

    def better(self, a: float, b: float) -> bool:
        return a > b if higher_is_better(self.primary) else a < b

    # -- training ------------------------------------------------------------------------------------------
    @abstractmethod
    def targets(self, split: Split) -> np.ndarray:
        """Targets of a split in storage order, as batches carry them."""

    def fit(self, y_train: np.ndarray, split: str) -> dict[str, Any]:
        """Check the training targets; return HeadSpec fields learned from them (e.g. target standardisation)."""
        return {}

    @abstractmethod
    def loss(self, out: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None, spec: Any) -> torch.Tensor:
        ...

    def note_untrained(self, trained_ids: np.ndarray) -> None:
        """Remember the labels absent from the training targets (`trained_ids`: the ids that occur)."""
        seen = set(int(k) for k in np.unique(trained_ids))
        self.untrained = tuple(n for k, n in enumerate(self.label_names or []) if k not in seen)

    def untrained_meta(self) -> dict[str, Any]:
        return {"untrained_labels": list(self.untrained)} if self.untrained else {}

    def mask_untrained(self, scores: np.ndarray) -> np.ndarray:
        """`scores` (..., Y) with the untrained labels' scores at -inf: a head that never saw a label cannot
        sensibly predict it, and a weak head's noise on its output would otherwise surface as predictions."""
        if not self.untrained:
            return scores
        idx = [self.label_names.index(n) for n in self.untrained]
        scores = np.array(scores, dtype=np.float64, copy=True)
        scores[..., idx] = -np.inf
        return scores

    def decide(self, outputs: Any, gold: Any) -> dict[str, Any]:
        """Decision settings chosen on the trained model's dev outputs (e.g. a threshold); saved per seed."""
        return {}

    def apply(self, decision: dict[str, Any]) -> None:
        """Use decision settings (from `decide`, or a head.json) when decoding."""

    # -- outputs, decoding, metrics ------------------------------------------------------------------------
    @abstractmethod
    def collect(self, out: torch.Tensor, batch: Any, spec: Any) -> Sequence[np.ndarray]:
        """Per example of the batch, what the user sees of the head's output (probabilities, values, logits)."""

    def gather(self, per_example: list[np.ndarray]) -> Any:
        """All examples' outputs (storage order) as decode and metrics take them."""
        return per_example

    def gold(self, split: Split) -> Any:
        """What scoring a split needs besides the outputs (default: its targets)."""
        return self.targets(split)

    def segments(self, gold: Any) -> np.ndarray | None:
        """With `segment_ids`: per token (flat, storage order) its segment id, from what `gold` (or
        `predict_gold`) returned; the head's context layers add a learned embedding of it."""
        return None

    @abstractmethod
    def decode(self, outputs: Any, gold: Any) -> list[Any]:
        """Per example (storage order): its prediction."""

    @abstractmethod
    def metrics(self, outputs: Any, preds: list[Any], gold: Any) -> dict[str, float]:
        ...

    @abstractmethod
    def eval_record(self, i: int, outputs: Any, preds: list[Any], gold: Any) -> dict[str, Any]:
        """What `heads eval --predictions` writes for example `i` (besides its id and row)."""

    # -- predict on raw text -------------------------------------------------------------------------------
    @abstractmethod
    def predict_split(self, texts: Sequence[str], pairs: Sequence[str] | None, backbone: dict[str, Any]
                      ) -> tuple[SplitData, Any]:
        """Raw texts as a split the backbone's tokenization takes, and what decoding will need of them."""

    def predict_gold(self, prepared: Any, features: Any) -> Any:
        """What `decode` needs for predict (storage order), from predict_split's second value and the features."""
        return prepared

    @abstractmethod
    def predict_record(self, i: int, j: int, prepared: Any, outputs: Any, preds: list[Any]) -> dict[str, Any]:
        """What `heads predict` returns for input `i`, the `j`-th example in storage order."""

    @abstractmethod
    def format_record(self, rec: dict[str, Any]) -> str:
        """One line of `heads predict`'s table for a record of `predict_record`."""

    @staticmethod
    def short(text: str, width: int = 60) -> str:
        return text if len(text) <= width else text[:width - 3] + "..."


class ExampleTask(Task):
    """One output vector per example, read from a sentence store's label column."""

    output = "example"
    column_kind: ClassVar[str | None] = None  # the label column kind `--task auto` picks this task for

    @classmethod
    def detect(cls, store: Store, column: str | None) -> bool:
        return store.task == "sentence" and label_column(store, column)["kind"] == cls.column_kind

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> "Task":
        return cls(meta["label_column"], meta["label_names"])  # type: ignore[call-arg]

    def to_meta(self) -> dict[str, Any]:
        return {"label_column": self.column, "label_names": self.label_names, "label_values": None, "seq_task": None,
                **self.untrained_meta()}

    def collect(self, out: torch.Tensor, batch: Any, spec: Any) -> np.ndarray:
        return self.outputs(out, spec).cpu().numpy()

    def gather(self, per_example: list[np.ndarray]) -> np.ndarray:
        return np.stack(per_example) if per_example else np.zeros((0,), np.float32)

    @abstractmethod
    def outputs(self, out: torch.Tensor, spec: Any) -> torch.Tensor:
        """Head output (B, Y) -> what users see, (B, ...) float32."""

    def predict_split(self, texts: Sequence[str], pairs: Sequence[str] | None, backbone: dict[str, Any]
                      ) -> tuple[SplitData, Any]:
        from ..errors import InputError

        pair_column = backbone.get("pair_column")
        if pair_column and pairs is None:
            raise InputError(f"this head was trained on text pairs ({pair_column!r}); give a --text-pair for every "
                             "--text")
        if not pair_column and pairs is not None:
            raise InputError("this head was trained on single texts; drop the text pairs")
        if pairs is not None and len(pairs) != len(texts):
            raise InputError(f"{len(texts)} texts but {len(pairs)} text pairs; give one pair per text")
        split = SplitData("predict", "<predict>", list(texts), list(pairs) if pairs is not None else None,
                          [f"text-{i}" for i in range(len(texts))])
        return split, (list(texts), list(pairs) if pairs is not None else None)

    def predict_record(self, i: int, j: int, prepared: Any, outputs: Any, preds: list[Any]) -> dict[str, Any]:
        texts, pairs = prepared
        rec: dict[str, Any] = {"text": texts[i]}
        if pairs is not None:
            rec["pair"] = pairs[i]
        rec.update(self.show(outputs[j], preds[j]))
        return rec

    @abstractmethod
    def show(self, output: np.ndarray, pred: Any) -> dict[str, Any]:
        """An example's prediction as `predict` returns it."""


def label_column(store: Store, column: str | None) -> dict[str, Any]:
    """The store's record of label column `column`, or a clear error naming the columns it has."""
    from ..errors import InputError, StoreError

    cols = store.label_columns
    if not column:
        raise InputError(f"--label-column is required: store {store.path} holds sentence labels "
                         f"({', '.join(cols) or 'none'})")
    if column not in cols:
        raise StoreError(f"store {store.path} has no label column {column!r}; it has {', '.join(cols) or 'none'} "
                         "(add one with `featstore extract --label-column`)")
    return cols[column]
