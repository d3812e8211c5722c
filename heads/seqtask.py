"""Token and span tasks seen by train, eval and predict: targets, inference, decoding to words / answer text.

Decoding needs what the store keeps beside the features: each token's word index and character span, and
per example the gold words + tags or the context + gold answers. Predictions are read off each word's first
sub-word (token tasks) or the best valid context span (span tasks), then scored at word / answer level.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from featstore.errors import InputError
from featstore.store import Split, Store

from .config import HeadSpec
from .seqmetrics import squad_metrics, token_metrics
from .seqmodels import IGNORE, best_span

MAX_ANSWER_TOKENS = 30


@dataclass(kw_only=True)
class Alignment:
    """Per-token alignment of a set of examples (storage order) and their gold records."""

    offsets: np.ndarray  # (N + 1,)
    word_index: np.ndarray  # (n_tokens,) -1 = special token / not context
    char_start: np.ndarray  # (n_tokens,)
    char_end: np.ndarray  # (n_tokens,)
    gold: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def of(cls, split: Split) -> "Alignment":
        return cls(offsets=split.offsets, word_index=split.token_array("word_index"),
                   char_start=split.token_array("char_start"), char_end=split.token_array("char_end"),
                   gold=split.gold())

    def example(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.word_index[a:b], self.char_start[a:b], self.char_end[a:b]


@dataclass
class SeqTask:
    """A token store (tags) or a span store (answers) as a task; the same interface as `LabelTask`."""

    task: str  # token | span
    label_names: list[str] | None  # token: tag names; span: ["start", "end"]
    scheme: str | None = None
    null_answers: bool = False  # span: some questions have no answer (SQuAD v2): predict "" when it wins
    column: str = "tags"
    values: Any = None
    _align: dict[str, Alignment] = field(default_factory=dict, repr=False)

    @property
    def n_outputs(self) -> int:
        return len(self.label_names)

    @property
    def primary(self) -> str:
        if self.task == "span" or self.scheme in ("IOB2", "IOBES"):
            return "f1"
        return "accuracy"

    def alignment(self, split: Split) -> Alignment:
        if split.name not in self._align:
            align = Alignment.of(split)
            if self.task == "token" and self.column != "tags":  # a tag column added by `featstore add-labels`
                for g, tags in zip(align.gold, split.gold_tags(self.column)):
                    g["tags"] = tags
            self._align[split.name] = align
        return self._align[split.name]

    def targets(self, split: Split) -> np.ndarray:
        """Token: (N, T_max) tag ids padded with -100; span: (N, 2) start/end token positions."""
        if self.task == "span":
            return split.span_targets()
        flat, off = split.token_targets(self.column), split.offsets
        out = np.full((split.n_examples, int(split.lengths.max(initial=1))), IGNORE, dtype=np.int64)
        for i in range(split.n_examples):
            out[i, :off[i + 1] - off[i]] = flat[off[i]:off[i + 1]]
        return out

    def decode(self, logits: list[np.ndarray], align: Alignment, max_answer: int = MAX_ANSWER_TOKENS) -> list[Any]:
        """Per example: predicted tags per word (token), or (answer text, char start, char end) (span)."""
        preds: list[Any] = []
        for i, lg in enumerate(logits):
            words, cs, ce = align.example(i)
            if self.task == "token":
                n_words = len(align.gold[i]["words"])
                tags = ["O" if "O" in self.label_names else self.label_names[0]] * n_words
                best = lg.argmax(-1)  # (T,)
                for t in range(len(words)):
                    w = words[t]
                    if w >= 0 and (t == 0 or words[t - 1] != w):
                        tags[w] = self.label_names[int(best[t])]
                preds.append(tags)
            else:
                context = align.gold[i]["context"]
                s, e, score = best_span(lg[:, 0], lg[:, 1], cs >= 0, max_answer)
                if not np.isfinite(score) or (self.null_answers and lg[0, 0] + lg[0, 1] > score):
                    preds.append(("", -1, -1))
                else:
                    preds.append((context[cs[s]:ce[e]], int(cs[s]), int(ce[e])))
        return preds

    def score(self, preds: list[Any], align: Alignment) -> dict[str, float]:
        if self.task == "token":
            return token_metrics([g["tags"] for g in align.gold], preds, self.scheme or "none")
        return squad_metrics([p[0] for p in preds], [g["answers"] for g in align.gold])

    def evaluate(self, model: torch.nn.Module, spec: HeadSpec, loader: Any, device: torch.device) -> dict[str, float]:
        split = loader.source.split
        align = self.alignment(split)
        return self.score(self.decode(infer_tokens(model, loader, device), align), align)


@torch.no_grad()
def infer_tokens(model: torch.nn.Module, loader: Any, device: torch.device) -> list[np.ndarray]:
    """Per example (storage order): (T_i, Y) logits of its real tokens."""
    from .task import autocast, to_device

    model.eval()
    res: list[np.ndarray | None] = [None] * len(loader.source)
    for batch in loader.epoch(0):
        x, mask = to_device(batch, device)
        with autocast(device):
            out = model(x, mask).float().cpu().numpy()  # (B, T, Y)
        for b, i in enumerate(batch.index):
            res[int(i)] = out[b, :int(batch.mask[b].sum())]
    return res  # type: ignore[return-value]


def resolve_seq_task(store: Store, task: str = "auto", column: str | None = None) -> SeqTask:
    """The store's token or span task; `--task` must agree with it. `column`: a tag column added to a token
    store by `featstore add-labels` (default: the extracted tags)."""
    info = store.task_info  # a clear error for a sentence store
    kind = store.task
    if task not in ("auto", kind):
        raise InputError(f"--task {task} but store {store.path} holds a {kind} task; use --task {kind} (or auto)")
    if kind == "token":
        cols = {"tags": info, **info.get("tag_columns", {})}
        column = column or "tags"
        if column not in cols:
            raise InputError(f"store {store.path} has no tag column {column!r}; it has {', '.join(cols)}")
        names = list(cols[column]["tag_names"])
        if len(names) < 2:
            raise InputError(f"store {store.path} has {len(names)} tag(s); a token task needs 2 or more")
        return SeqTask("token", names, cols[column].get("scheme"), column=column)
    null = any(s.get("unanswerable", 0) for s in info.get("splits", {}).values())
    return SeqTask("span", ["start", "end"], None, null, column="answer")


def token_input_stats(source: Any, max_tokens: int = 200_000) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of token inputs (L*D,) over up to `max_tokens` training tokens (linear baseline)."""
    n = len(source)
    stop = int(np.searchsorted(source.offsets, min(max_tokens, int(source.offsets[-1])), side="left"))
    x = source.read_float(0, max(1, min(stop, n))).reshape(-1, source.n_layers * source.hidden).astype(np.float64)
    return x.mean(0), x.std(0)
