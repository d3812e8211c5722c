"""What train, eval and predict share: the label task of a store column, feature sources, device, inference."""
from __future__ import annotations

import os

import contextlib
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from featstore.errors import InputError, StoreError
from featstore.store import Split, Store
from featstore.store.encoding import FP8_VALUES, read_itemsize

from .config import HeadSpec
from .data import Loader, PooledSource, Source, StoreTokens, token_bytes


@dataclass
class LabelTask:
    """A store's label column seen as a task: classification over `label_names`, or regression."""

    column: str
    task: str  # classification | regression
    label_names: list[str] | None
    values: np.ndarray | None = None  # regression on a class column with numeric names: class id -> value

    @property
    def n_outputs(self) -> int:
        return len(self.label_names) if self.task == "classification" else 1

    @property
    def primary(self) -> str:
        from .metrics import PRIMARY

        return PRIMARY[self.task]

    def evaluate(self, model: torch.nn.Module, spec: HeadSpec, loader: Loader, device: torch.device) -> dict[str, float]:
        """Every metric of the task on one split (the loader's targets)."""
        from .metrics import compute

        return compute(self.task, loader.targets, infer(model, spec, loader, device), self.n_outputs)

    def targets(self, split: Split) -> np.ndarray:
        t = split.targets(self.column)
        if self.values is not None:
            return self.values[t.astype(np.int64)]
        return t.astype(np.int64) if self.task == "classification" else t.astype(np.float32)


def _number(s: str) -> float | None:
    try:
        return float(s)
    except (TypeError, ValueError):
        return None


def resolve_task(store: Store, column: str, task: str = "auto") -> LabelTask:
    """Task from the column's kind; `regression` on a class column works only when its labels are numbers."""
    cols = store.label_columns
    if column not in cols:
        raise StoreError(f"store {store.path} has no label column {column!r}; it has {', '.join(cols) or 'none'} "
                         "(add one with `featstore extract --label-column`)")
    kind, names = cols[column]["kind"], cols[column]["names"]
    if task == "auto":
        task = "classification" if kind == "class" else "regression"
    if task == "classification":
        if kind != "class":
            raise InputError(f"label column {column!r} holds continuous numbers (regression); classification "
                             "needs a class column (re-extract with --label-column NAME:class)")
        if not names or len(names) < 2:
            raise InputError(f"label column {column!r} has {len(names or [])} class(es); classification needs 2 or more")
        return LabelTask(column, task, list(names))
    if kind == "regression":
        return LabelTask(column, "regression", None)
    values = [_number(n) for n in names]
    if any(v is None for v in values):
        text = [n for n, v in zip(names, values) if v is None][:3]
        raise InputError(f"label column {column!r} is text ({', '.join(map(repr, text))} ...), not numbers; "
                         "regression needs a numeric column (use --task classification)")
    return LabelTask(column, "regression", None, np.asarray(values, dtype=np.float32))


def check_splits(store: Store, train: str | None, dev: str | None, test: str | None) -> None:
    """Every named split exists; the messages say how to proceed without a dev or test split."""
    have = store.splits
    p = []
    if train is not None and train not in have:
        p.append(f"store {store.path} has no split {train!r} to train on; its splits are {', '.join(have)} "
                 "(use --train-split)")
    if dev is not None and dev not in have:
        p.append(f"store {store.path} has no dev split {dev!r} for model selection (its splits: {', '.join(have)}); "
                 "pass --dev-split NAME, or --dev-split none to keep the last epoch without early stopping")
    if test is not None and test not in have:
        p.append(f"store {store.path} has no test split {test!r} (its splits: {', '.join(have)}); "
                 "pass --test-split NAME, or --test-split none")
    if p:
        raise StoreError("; ".join(p))


def feature_bytes(split: Split, spec_kind: str, n_layers: int) -> int:
    if spec_kind == "ytuning":
        return token_bytes(split, n_layers)
    itemsize = read_itemsize(split.store.dtype)
    return split.n_examples * n_layers * split.store.width * itemsize


def make_sources(store: Store, names: Sequence[str], kind: str, layers: Sequence[int], pooling: str | None,
                 max_memory: int) -> tuple[dict[str, Source], dict[str, bool]]:
    """One source per split; splits are held in RAM in the given order while they fit under `max_memory`."""
    sources, in_ram, budget = {}, {}, max_memory
    for name in dict.fromkeys(names):
        split = store.split(name)
        if kind == "ytuning":
            need = feature_bytes(split, kind, len(layers))
            in_ram[name] = need <= budget
            budget -= need if in_ram[name] else 0
            sources[name] = StoreTokens(split, layers, in_ram[name])
        else:
            in_ram[name] = True  # pooled vectors: one per example, always small
            sources[name] = PooledSource.from_split(split, layers, pooling)
    return sources, in_ram


@contextlib.contextmanager
def torch_threads(n: int | None) -> Any:
    """Run with `n` CPU threads, then restore. Default: one core left free for the batch-prefetch thread
    (torch's default of every core made training ~10x slower on 2 cores, its threads fighting the prefetcher)."""
    if n is None:
        n = max(1, (os.cpu_count() or 1) - 1)
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def batch_dtype(device: torch.device, store_dtype: str) -> Any:
    """float16 features stay float16 on their way to a GPU (half the bytes) and widen there; else float32."""
    return np.float16 if device.type == "cuda" and store_dtype == "float16" else np.float32


def autocast(device: torch.device) -> Any:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_device(batch: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A batch's features (float32) and mask on `device`; 8-bit codes travel as codes and are decoded there."""
    x = torch.from_numpy(batch.x).to(device, non_blocking=True)
    mask = torch.from_numpy(batch.mask).to(device) if batch.mask is not None else None
    if batch.codec is not None:
        return decode_on_device(x, batch, mask, device), mask
    return x.float(), mask


def _device_tables(codec: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The codec's shift/gain tables (and fp8's value table) on `device`, moved once per source and device."""
    key = str(device)
    if key not in codec.on_device:
        fp8 = torch.from_numpy(FP8_VALUES).to(device) if codec.encoding == "fp8" else None
        codec.on_device[key] = (torch.from_numpy(codec.shift).to(device), torch.from_numpy(codec.gain).to(device), fp8)
    return codec.on_device[key]


def decode_on_device(codes: torch.Tensor, batch: Any, mask: torch.Tensor, device: torch.device) -> torch.Tensor:
    """(B, T, L, D) 8-bit codes on `device` -> float32 features, row = codes * scale * gain[seg] + shift[seg];
    padding decodes to 0, as float batches are padded."""
    shift, gain, fp8 = _device_tables(batch.codec, device)  # (S, L, D), (S, L, D), (256,) | None
    scale = torch.from_numpy(batch.scale).to(device, non_blocking=True)  # (B, T, L)
    seg = torch.from_numpy(batch.seg).to(device, non_blocking=True)  # (B,): an example's rows share a segment
    q = codes.float() if fp8 is None else fp8[codes.long()]  # fp8: a 256-entry table, exact
    x = torch.addcmul(shift[seg][:, None], q * scale.unsqueeze(-1), gain[seg][:, None])  # (B, T, L, D)
    return x * mask[:, :, None, None]


@torch.no_grad()
def infer(model: torch.nn.Module, spec: HeadSpec, loader: Loader, device: torch.device) -> np.ndarray:
    """Outputs for every example in storage order: probabilities (N, Y) or values (N,)."""
    from .models import outputs

    model.eval()
    n = len(loader.source)
    res = np.zeros((n, spec.n_outputs) if spec.task == "classification" else (n,), dtype=np.float32)
    for batch in loader.epoch(0):
        x, mask = to_device(batch, device)
        with autocast(device):
            out = model(x, mask)
        res[batch.index] = outputs(spec, out).cpu().numpy()
    return res
