"""`heads eval`: a trained head on any split of a store with the same features (same fingerprint)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from featstore.device import pick_device
from featstore.store import open_store
from featstore.store.manifest import diff_settings

from .artifacts import LoadedHead, load_head
from .data import Loader, default_max_memory
from .errors import HeadError, InputError
from .metrics import compute
from .task import batch_dtype, infer, make_sources, resolve_task, torch_threads


@dataclass(kw_only=True)
class EvalResult:
    run: str
    store: str
    split: str
    seed: int
    task: str
    primary_metric: str
    metrics: dict[str, float]
    n_examples: int
    predictions: list[dict[str, Any]] = field(default_factory=list, repr=False)  # input order

    def to_json(self, predictions: bool = False) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in ("run", "store", "split", "seed", "task", "primary_metric", "metrics",
                                            "n_examples")}
        if predictions:
            d["predictions"] = self.predictions
        return d


def check_compatible(head: LoadedHead, store: Any) -> None:
    """Refuse a store whose features differ from those the head was trained on, saying what differs."""
    want = head.meta["store"]
    problems = []
    if store.width != want["hidden_size"]:
        problems.append(f"its hidden size is {store.width}, the head was trained on features of hidden size "
                        f"{want['hidden_size']} (model {want.get('model', {}).get('name')})")
    missing = [k for k in head.layers if k not in store.layers]
    if missing:
        problems.append(f"it lacks layers {missing} that the head reads (it holds {store.layers})")
    if not problems and store.fingerprint != want["fingerprint"]:
        try:
            what = ", ".join(diff_settings(want, store.manifest))
        except (KeyError, TypeError):
            what = "fingerprint"
        problems.append(f"its features differ from the head's store (fingerprint {store.fingerprint[:12]} vs "
                        f"{want['fingerprint'][:12]}: {what})")
    if problems:
        raise HeadError(f"store {store.path} does not fit head {head.run}: {'; '.join(problems)}; "
                        "use the store the head was trained on, or one extracted with the same model and settings")


def evaluate(run: str, store: str, split: str = "test", *, seed: int | None = None, batch_size: int = 64,
             device: str = "auto", max_memory: int | None = None, threads: int | None = None,
             storage_options: dict[str, Any] | None = None, cache_dir: str | None = None) -> EvalResult:
    """Metrics (and per-example predictions) of the head in `run` on one split of `store` (a path or URL)."""
    if batch_size < 1:
        raise InputError(f"--batch-size {batch_size}: must be positive")
    if threads is not None and threads < 1:
        raise InputError(f"--threads {threads}: must be positive")
    with torch_threads(threads):
        return _evaluate(run, store, split, seed, batch_size, device, max_memory, storage_options, cache_dir)


def _evaluate(run: str, store: str, split: str, seed: int | None, batch_size: int, device: str,
              max_memory: int | None, storage_options: dict[str, Any] | None, cache_dir: str | None) -> EvalResult:
    dev = torch.device(pick_device(device))
    head = load_head(run, seed, device=str(dev))
    st = open_store(store, storage_options=storage_options or None, cache_dir=cache_dir)
    try:
        check_compatible(head, st)
        sp = st.split(split)
        if head.spec.task in ("token", "span"):
            return _evaluate_seq(run, store, st, sp, head, batch_size, dev, max_memory)
        lt = resolve_task(st, head.meta["label_column"], head.spec.task)
        if lt.label_names != head.label_names:
            raise HeadError(f"store {st.path}: labels of column {lt.column!r} are {lt.label_names}, the head's are "
                            f"{head.label_names}; they must be the same, in the same order")
        budget = max_memory if max_memory is not None else default_max_memory()
        tuned = "top_layers" in head.meta  # tuned top layers read tokens of the stored layer N-m, for any head
        sources, _ = make_sources(st, [split], "ytuning" if tuned else head.spec.kind, head.layers,
                                  None if tuned else head.spec.pooling, budget)
        y = lt.targets(sp)
        loader = Loader(sources[split], y, batch_size, shuffle=False, dtype=batch_dtype(dev, st.dtype),
                        codes_out=dev.type == "cuda")
        out = infer(head.model, head.spec, loader, dev)
        metrics = compute(lt.task, y, out, lt.n_outputs)
        preds = _predictions(head, out, y, sp)
        primary = head.meta["primary_metric"]
        return EvalResult(run=run, store=store, split=split, seed=head.seed, task=lt.task, primary_metric=primary,
                          metrics=metrics, n_examples=sp.n_examples, predictions=preds)
    finally:
        st.close()


def _predictions(head: LoadedHead, out: np.ndarray, y: np.ndarray, sp: Any) -> list[dict[str, Any]]:
    ids, rows = sp.example_ids, sp.rows
    names = head.label_names
    recs = []
    for i in sp.input_order():
        r: dict[str, Any] = {"id": ids[i], "row": int(rows[i])}
        if head.spec.task == "classification":
            r["label"] = names[int(out[i].argmax())]
            r["target"] = names[int(y[i])]
            r["probabilities"] = {n: float(p) for n, p in zip(names, out[i])}
        else:
            r["prediction"] = float(out[i])
            r["target"] = float(y[i])
        recs.append(r)
    return recs


def _evaluate_seq(run: str, store: str, st: Any, sp: Any, head: LoadedHead, batch_size: int, dev: torch.device,
                  max_memory: int | None) -> EvalResult:
    """Token / span heads: word-level tags or answer texts decoded and scored against the store's gold."""
    from .seqpredict import seq_task_of
    from .seqtask import infer_tokens, resolve_seq_task

    lt = resolve_seq_task(st, head.spec.task, head.meta.get("label_column"))
    if lt.label_names != head.label_names:
        raise HeadError(f"store {st.path}: tags are {lt.label_names}, the head's are {head.label_names}")
    lt.scheme, lt.null_answers = seq_task_of(head).scheme, seq_task_of(head).null_answers
    budget = max_memory if max_memory is not None else default_max_memory()
    sources, _ = make_sources(st, [sp.name], "ytuning", head.layers, None, budget)
    loader = Loader(sources[sp.name], None, batch_size, shuffle=False, dtype=batch_dtype(dev, st.dtype),
                    codes_out=dev.type == "cuda")
    align = lt.alignment(sp)
    preds = lt.decode(infer_tokens(head.model, loader, dev), align)
    ids, rows = sp.example_ids, sp.rows
    recs = []
    for i in sp.input_order():
        r: dict[str, Any] = {"id": ids[i], "row": int(rows[i])}
        if lt.task == "token":
            r["tags"], r["target"] = preds[i], align.gold[i]["tags"]
        else:
            r["answer"], r["start"], r["end"] = preds[i]
            r["target"] = align.gold[i]["answers"]
        recs.append(r)
    return EvalResult(run=run, store=store, split=sp.name, seed=head.seed, task=lt.task,
                      primary_metric=head.meta["primary_metric"], metrics=lt.score(preds, align),
                      n_examples=sp.n_examples, predictions=recs)
