"""`heads export`: a trained head in a form a fine-tuning script loads to initialise its classifier.

A `linear` head on one layer's pooled vector becomes a plain `weight` (Y, D) and `bias` (Y,) with the input
standardisation folded in, so `logits = pool(backbone(x)) @ weight.T + bias` on top of the backbone gives the
head's predictions (head-first fine-tuning: LP-FT, EH-FT). Other heads are exported as their state dict; the
metadata carries the architecture to rebuild them with `heads.nets.build_head`.

A head trained with `--tune-top-layers` also writes `<out>.backbone.safetensors`: the tuned layers under the full
model's state-dict names (as a saved `AutoModel`), so `model.load_state_dict(tensors, strict=False)` puts them in
place for head-first fine-tuning of the whole backbone.
"""
from __future__ import annotations

import json
import os

import torch

from featstore.errors import InputError

from .artifacts import load_head

FORMAT = "heads-export"


def backbone_path(out: str) -> str:
    """Where the tuned top layers of an exported head go, beside `out`."""
    return out[:-len(".safetensors")] + ".backbone.safetensors"


def export_head(run: str, out: str, seed: int | None = None) -> dict[str, str]:
    """Write `out` (.safetensors), and the tuned top layers beside it for such a head; returns its metadata."""
    from safetensors.torch import save_file

    if not out.endswith(".safetensors"):
        raise InputError(f"--out {out}: use a .safetensors file name")
    head = load_head(run, seed)
    spec = head.spec
    tuned = "top_layers" in head.meta
    net = head.model.head if tuned else head.model  # a tuned run's model wraps the head and its top layers
    meta = {"format": FORMAT, "kind": spec.kind, "task": spec.task, "layers": json.dumps(head.layers),
            "label_names": json.dumps(head.label_names), "pooling": str(spec.pooling),
            "architecture": json.dumps(spec.to_json()), "store_fingerprint": head.meta["store"]["fingerprint"],
            "backbone": str(head.meta.get("backbone", {}).get("name"))}
    tensors = net.export_tensors()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    if tuned:
        from .top_layers import export_full_keys

        t = head.meta["top_layers"]
        meta["layers"] = json.dumps(t["head_layers"])
        meta["tuned_layers"] = json.dumps(list(range(t["plan"]["input_layer"] + 1, t["plan"]["num_layers"] + 1)))
        top = export_full_keys(head.meta, head.model.top.state_dict())
        save_file({k: v.detach().cpu().contiguous() for k, v in top.items()}, backbone_path(out),
                  metadata={**meta, "content": "tuned top layers, full-model state-dict names"})
        meta["backbone_file"] = backbone_path(out)
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, out, metadata=meta)
    return meta


def load_export(path: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        md = f.metadata() or {}
        if md.get("format") != FORMAT:
            raise InputError(f"{path} is not a file written by `heads export`")
        return {k: f.get_tensor(k) for k in f.keys()}, md
