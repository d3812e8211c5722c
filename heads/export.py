"""`heads export`: a trained head in a form a fine-tuning script loads to initialise its classifier.

A `linear` head on one layer's pooled vector becomes a plain `weight` (Y, D) and `bias` (Y,) with the input
standardisation folded in, so `logits = pool(backbone(x)) @ weight.T + bias` on top of the backbone gives the
head's predictions (head-first fine-tuning: LP-FT, EH-FT). Other heads are exported as their state dict; the
metadata carries the architecture to rebuild them with `heads.models.build_head`.
"""
from __future__ import annotations

import json
import os

import torch

from featstore.errors import InputError

from .artifacts import load_head

FORMAT = "heads-export"


def export_head(run: str, out: str, seed: int | None = None) -> dict[str, str]:
    """Write `out` (.safetensors); returns its metadata."""
    from safetensors.torch import save_file

    if not out.endswith(".safetensors"):
        raise InputError(f"--out {out}: use a .safetensors file name")
    head = load_head(run, seed)
    spec = head.spec
    meta = {"format": FORMAT, "kind": spec.kind, "task": spec.task, "layers": json.dumps(head.layers),
            "label_names": json.dumps(head.label_names), "pooling": str(spec.pooling),
            "architecture": json.dumps(spec.to_json()), "store_fingerprint": head.meta["store"]["fingerprint"],
            "backbone": str(head.meta.get("backbone", {}).get("name"))}
    if spec.kind == "linear":
        lin = head.model.net[-1]
        std, mean = head.model.in_std, head.model.in_mean  # (L*D,)
        weight = lin.weight / std  # (Y, L*D)
        bias = lin.bias - (lin.weight * (mean / std)).sum(1)  # (Y,)
        if spec.task == "regression":  # outputs are standardised targets: undo it here
            weight, bias = weight * spec.target_std, bias * spec.target_std + spec.target_mean
        tensors = {"weight": weight, "bias": bias}
    else:
        tensors = dict(head.model.state_dict())
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, out, metadata=meta)
    return meta


def load_export(path: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        md = f.metadata() or {}
        if md.get("format") != FORMAT:
            raise InputError(f"{path} is not a file written by `heads export`")
        return {k: f.get_tensor(k) for k in f.keys()}, md
