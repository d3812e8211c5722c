"""`heads eval`: a trained head on any split of a store with the same features (same fingerprint)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from featstore.device import pick_device
from featstore.store import open_store
from featstore.store.manifest import diff_settings

from .artifacts import LoadedHead, load_head
from .data import Loader, default_max_memory, make_sources
from .errors import HeadError, InputError
from .runtime import batch_dtype, feed_segments, score, torch_threads
from .tasks import resolve_task


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
        task = head.task
        have = resolve_task(st, task.name, task.column)
        if have.label_names != task.label_names:
            raise HeadError(f"store {st.path}: labels of column {task.column!r} are {have.label_names}, the head's are "
                            f"{task.label_names}; they must be the same, in the same order")
        budget = max_memory if max_memory is not None else default_max_memory()
        sources, _ = make_sources(st, [split], head.reads, head.layers, head.spec.pooling, budget)
        loader = Loader(sources[split], None, batch_size, shuffle=False, dtype=batch_dtype(dev, st.dtype),
                        codes_out=dev.type == "cuda")
        gold = task.gold(sp)
        feed_segments(sources[split], task, head.spec, gold)
        metrics, outputs, preds = score(head.model, task, head.spec, loader, gold, dev)
        ids, rows = sp.example_ids, sp.rows
        recs = [{"id": ids[i], "row": int(rows[i]), **task.eval_record(i, outputs, preds, gold)}
                for i in sp.input_order()]
        return EvalResult(run=run, store=store, split=split, seed=head.seed, task=task.name,
                          primary_metric=head.meta["primary_metric"], metrics=metrics, n_examples=sp.n_examples,
                          predictions=recs)
    finally:
        st.close()
