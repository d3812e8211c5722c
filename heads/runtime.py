"""Running a head: CPU threads, device placement of batches (8-bit codes decoded on the device), and the one
inference loop that train, eval and predict share."""
from __future__ import annotations

import contextlib
import os
from typing import Any

import numpy as np
import torch

from featstore.store.encoding import FP8_VALUES, decode_tensors

from .data import Loader
from .tasks import Task


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
    return decode_tensors(q, scale, seg, mask, shift, gain)


def infer(model: torch.nn.Module, task: Task, spec: Any, loader: Loader, device: torch.device) -> Any:
    """The task's outputs for every example of the loader's source, in storage order."""
    return infer_many([model], [task], [spec], loader, device)[0]


def feed_segments(source: Any, task: Task, spec: Any, gold: Any) -> None:
    """A head with context layers of a task with segment ids (span: question / context) reads them beside the
    features: attach them, per token, to the split's source."""
    if getattr(spec, "context_layers", 0) and task.segment_ids:
        source.segments = task.segments(gold)


def run_model(model: torch.nn.Module, spec: Any, batch: Any, x: torch.Tensor, mask: torch.Tensor | None
              ) -> torch.Tensor:
    """The head on a batch: `model(x, mask)`, plus the batch's segment ids when the head has context layers that
    read them (span tasks; heads sharing one source may differ)."""
    if batch.segments is None or not getattr(spec, "context_layers", 0):
        return model(x, mask)
    return model(x, mask, torch.from_numpy(batch.segments).to(x.device))


@torch.no_grad()
def infer_many(models: list[torch.nn.Module], tasks: list[Task], specs: list[Any], loader: Loader,
               device: torch.device) -> list[Any]:
    """`infer` for several heads on one pass over the loader: each batch is read and moved once."""
    for model in models:
        model.eval()
    res: list[list[Any]] = [[None] * len(loader.source) for _ in models]
    for batch in loader.epoch(0):
        x, mask = to_device(batch, device)
        for model, task, spec, rows in zip(models, tasks, specs, res):
            with autocast(device):
                out = run_model(model, spec, batch, x, mask)
            for i, row in zip(batch.index, task.collect(out, batch, spec)):
                rows[int(i)] = row
    return [task.gather(rows) for task, rows in zip(tasks, res)]


def score(model: torch.nn.Module, task: Task, spec: Any, loader: Loader, gold: Any,
          device: torch.device) -> tuple[dict[str, float], Any, list[Any]]:
    """Metrics of the head on a split (and its outputs and predictions, storage order)."""
    outputs = infer(model, task, spec, loader, device)
    preds = task.decode(outputs, gold)
    return task.metrics(outputs, preds, gold), outputs, preds
