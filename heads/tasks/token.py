"""Token tagging (NER, POS): a tag per word, read off each word's first sub-word; entity F1 (seqeval strict)
for IOB2/IOBES tag sets, word accuracy otherwise."""
from __future__ import annotations

import re
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from featstore.extract.inputs import SplitData
from featstore.store import Split, Store

from ..errors import InputError
from featstore.extract.tasks import IGNORE

from ..metrics import entities, token_metrics
from .positions import Alignment, PositionTask


class TokenTagging(PositionTask):
    name = "token"
    store_kind = extraction_task = "token"
    default_context = (2, "lstm")

    def __init__(self, label_names: list[str], scheme: str | None, column: str = "tags"):
        super().__init__()
        self.label_names, self.scheme, self.column = list(label_names), scheme, column

    @classmethod
    def from_store(cls, store: Store, column: str | None) -> "TokenTagging":
        """`column`: a tag column added by `featstore add-labels` (default: the extracted tags)."""
        info = store.task_info  # a clear error for a sentence store
        cols = {"tags": info, **info.get("tag_columns", {})}
        column = column or "tags"
        if column not in cols:
            raise InputError(f"store {store.path} has no tag column {column!r}; it has {', '.join(cols)}")
        names = list(cols[column]["tag_names"])
        if len(names) < 2:
            raise InputError(f"store {store.path} has {len(names)} tag(s); a token task needs 2 or more")
        return cls(names, cols[column].get("scheme"), column)

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> "TokenTagging":
        info = meta.get("seq_task") or {}
        task = cls(meta["label_names"], info.get("scheme"), meta.get("label_column") or "tags")
        task.untrained = tuple(meta.get("untrained_labels") or ())
        return task

    def to_meta(self) -> dict[str, Any]:
        return {"label_column": self.column, "label_names": self.label_names, "label_values": None,
                "seq_task": {"scheme": self.scheme, "null_answers": False}, **self.untrained_meta()}

    @property
    def primary(self) -> str:
        return "f1" if self.scheme in ("IOB2", "IOBES") else "accuracy"

    def alignment(self, split: Split) -> Alignment:
        align = Alignment.of(split)
        if self.column != "tags":  # a tag column added by `featstore add-labels`
            for g, tags in zip(align.gold, split.gold_tags(self.column)):
                g["tags"] = tags
        return align

    def targets(self, split: Split) -> np.ndarray:
        """(N, T_max) tag ids on first sub-words, padded with -100."""
        flat, off = split.token_targets(self.column), split.offsets
        out = np.full((split.n_examples, int(split.lengths.max(initial=1))), IGNORE, dtype=np.int64)
        for i in range(split.n_examples):
            out[i, :off[i + 1] - off[i]] = flat[off[i]:off[i + 1]]
        return out

    def fit(self, y_train: np.ndarray, split: str) -> dict[str, Any]:
        self.note_untrained(y_train[y_train >= 0])
        return {}

    def loss(self, out: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None, spec: Any) -> torch.Tensor:
        """Cross-entropy over tags on first sub-words (-100 elsewhere)."""
        out = out.float()
        y = y[:, :out.shape[1]]  # targets are padded to the split's longest example
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1), ignore_index=IGNORE)

    def decode(self, outputs: list[np.ndarray], gold: Alignment) -> list[list[str]]:
        """Per example: the predicted tag of each word (its first sub-word's argmax over the tags train has)."""
        preds = []
        fallback = "O" if "O" in self.label_names else self.label_names[0]
        for i, lg in enumerate(outputs):
            words = gold.example(i)[0]
            tags = [fallback] * len(gold.gold[i]["words"])
            best = self.mask_untrained(lg).argmax(-1)  # (T,)
            for t in range(len(words)):
                w = words[t]
                if w >= 0 and (t == 0 or words[t - 1] != w):
                    tags[w] = self.label_names[int(best[t])]
            preds.append(tags)
        return preds

    def score(self, preds: list[list[str]], gold: Alignment) -> dict[str, float]:
        return token_metrics([g["tags"] for g in gold.gold], preds, self.scheme or "none")

    def eval_record(self, i: int, outputs: Any, preds: list[Any], gold: Alignment) -> dict[str, Any]:
        return {"tags": preds[i], "target": gold.gold[i]["tags"]}

    def predict_split(self, texts: Sequence[str], pairs: Sequence[str] | None, backbone: dict[str, Any]
                      ) -> tuple[SplitData, Any]:
        """Sentences, split on whitespace into words."""
        spans = [[(m.start(), m.end()) for m in re.finditer(r"\S+", t)] for t in texts]
        if any(not s for s in spans):
            raise InputError("a token head tags words: every --text needs at least one word")
        words = [[t[a:b] for a, b in s] for t, s in zip(texts, spans)]
        n = len(texts)
        split = SplitData("predict", "<predict>", [" ".join(w) for w in words], None, [f"t-{i}" for i in range(n)])
        split.extra = {"words": words, "tag_ids": [np.zeros(len(w), dtype=np.int64) for w in words]}
        return split, {"texts": list(texts), "spans": spans, "words": words,
                       "gold": [{"words": w, "tags": []} for w in words]}

    def predict_record(self, i: int, j: int, prepared: Any, outputs: Any, preds: list[Any]) -> dict[str, Any]:
        """Tags per word, and entities with character offsets in the text."""
        text, tags, spans = prepared["texts"][i], preds[j], prepared["spans"][i]
        ents = []
        for kind, w0, w1 in entities(tags, self.scheme or "IOB2", "strict") if self.scheme != "none" else []:
            a, b = spans[w0][0], spans[w1][1]
            ents.append({"type": kind, "text": text[a:b], "start": a, "end": b})
        return {"text": text, "words": prepared["words"][i], "tags": tags, "entities": ents}

    def format_record(self, rec: dict[str, Any]) -> str:
        """Entities with character offsets (tags when the tag set has no scheme)."""
        ents = [f"{e['type']}[{e['start']}:{e['end']}]={e['text']!r}" for e in rec["entities"]]
        return ("  ".join(ents) if ents else " ".join(rec["tags"]) if rec["tags"] else "-") + f"\t{rec['text']}"
