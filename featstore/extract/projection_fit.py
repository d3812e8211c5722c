"""`--project N` during extraction: fit the PCA basis on a sample of the training split before any segment is
written (the model already on its device), keep it in the store, and load it back as device tensors."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..store import StorageBackend
from ..store.projection import array_names as projection_arrays, fit_pca, sample_rows
from .config import ExtractConfig
from .forward import forward_batch
from .inputs import Dataset
from .models import LoadedModel
from .plan import Segment, Tokenized, plan_batches, tokenize


def fit_projection(cfg: ExtractConfig, ds: Dataset, lm: LoadedModel, toks: dict[str, Tokenized],
                    layers: list[int], device: str, backend: StorageBackend, manifest: dict) -> None:
    """PCA per layer on a sample of the training split (the first split without one), before any segment is
    written; kept in the store (and recorded in the working manifest) so a resumed run reuses it exactly."""
    name = "train" if "train" in ds.splits else next(iter(ds.splits))
    lengths = toks[name].lengths
    rows = sample_rows(lengths)
    missing = [int(r) for r in rows if toks[name].input_ids[r] is None]  # under torchrun: other ranks' rows
    if missing:
        tokenize(lm.tokenizer, ds.splits[name], cfg.max_length, cfg.truncation, rows=np.asarray(missing),
                 into=toks[name])
    seg = Segment(name, -1, rows[np.lexsort((rows, -lengths[rows]))])  # longest first, as plan_batches wants
    plan_batches(seg, lengths, cfg.batch_tokens)
    feats: dict[int, list[np.ndarray]] = {k: [] for k in layers}
    for batch in seg.batches:
        out = forward_batch(lm, toks[name], ds.splits[name], batch, layers, "float32", device, {})
        for k in layers:
            feats[k].append(out[f"L{k}/tokens"])
    arrays = {}
    for k in layers:
        mean, basis = fit_pca(np.concatenate(feats[k]), cfg.project)
        arrays.update(zip(projection_arrays(k), (mean, basis)))
    manifest.setdefault("files", {}).update(backend.write_arrays(arrays, manifest["layout"]["chunk_bytes"]))
    manifest["projection"] = {"fitted_on": {"split": name, "examples": int(len(rows)),
                                            "tokens": int(lengths[rows].sum())}}
    backend.write_manifest(manifest)


def load_projection(backend: StorageBackend, layers: list[int], device: str) -> dict[int, Any]:
    import torch

    out = {}
    for k in layers:
        mean, basis = (torch.from_numpy(np.asarray(backend.array(n)[:], dtype=np.float32)).to(device)
                       for n in projection_arrays(k))
        out[k] = (mean, basis)
    backend.close()
    return out
