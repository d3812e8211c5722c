"""Y-Tuning without a store: the same head, its features recomputed by the frozen backbone on every batch.

This is Y-Tuning as the paper trains it without feature reuse: no backward through the backbone, but a
forward pass through it at every step of every epoch. vs_finetune.py compares it with the store.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from featstore.extract.inputs import load_dataset
from featstore.extract.forward import label_name_features
from featstore.extract.models import load_model, resolve_model_layers
from featstore.extract.plan import pad_batch
from heads.nets import build_head, count_trainable
from heads.spec import HeadSpec
from heads.tasks.classification import Classification
from heads.trainer import lr_factor, param_groups


def _features(lm, enc, rows, layers):
    """Backbone forward for one batch -> (B, T, L, D) float32 features of the kept layers + mask."""
    device = next(lm.model.parameters()).device
    x, m = pad_batch([enc["input_ids"][r] for r in rows])
    x, m = x.to(device), m.to(device)
    with torch.inference_mode():
        hs = lm.model(input_ids=x, attention_mask=m, output_hidden_states=True).hidden_states
        feats = torch.stack([hs[k] for k in layers], dim=2).float()  # (B, T, L, D)
    return feats.clone(), m.bool()  # clone: inference tensors cannot enter autograd


def _predict(model, lm, enc, layers, batch_size):
    model.eval()
    order = np.argsort([-len(x) for x in enc["input_ids"]])
    out = np.zeros((len(order), model.spec.n_outputs), dtype=np.float32)
    with torch.no_grad():
        for a in range(0, len(order), batch_size):
            rows = order[a:a + batch_size]
            x, m = _features(lm, enc, rows, layers)
            out[rows] = model(x, m).softmax(-1).float().cpu().numpy()
    return out


def train_nostore(data: dict[str, str], model_name: str, label_column: str, seed: int, epochs: int,
                  max_length: int, layers_spec: str = "all", batch_size: int = 32, lr: float = 1e-3,
                  label_init: str = "prior", device: str = "cpu") -> dict:
    """The same head as `heads train ytuning --label-init prior`, its backbone on `device` (bf16 on CUDA, as
    extraction computes), recomputing the features of every batch of every epoch."""
    ds = load_dataset(data, "text", None, [label_column], "id")
    col = ds.label_columns[0]
    lm = load_model(model_name, device=device, dtype="bfloat16" if device.startswith("cuda") else "float32")
    layers = resolve_model_layers(layers_spec, lm.num_layers)
    enc = {k: lm.tokenizer(s.texts, truncation=True, max_length=max_length) for k, s in ds.splits.items()}
    y = {k: s.targets[label_column] for k, s in ds.splits.items()}
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    spec = HeadSpec(kind="ytuning", task="classification", n_outputs=len(col.names), hidden_size=lm.hidden_size,
                    n_layers_in=len(layers))
    model = build_head(spec)
    task = Classification(label_column, col.names)
    if label_init == "prior":  # as `heads train --label-init prior`: the label names' features, centred
        lf = label_name_features(lm, {label_column: col.names}, layers, device)
        model.init_queries_from(np.stack([lf[f"label_features/{label_column}/L{k}"] for k in layers], axis=1))
    model.to(device)
    opt = torch.optim.AdamW(param_groups(model, 0.01), lr=lr)
    steps = epochs * -(-len(y["train"]) // batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, steps, int(0.1 * steps), "linear"))
    best, best_state, seconds = -1.0, None, []
    for _ in range(epochs):
        model.train()
        t0 = time.perf_counter()
        order = rng.permutation(len(y["train"]))
        for a in range(0, len(order), batch_size):
            rows = order[a:a + batch_size]
            x, m = _features(lm, enc["train"], rows, layers)
            loss = task.loss(model(x, m), torch.as_tensor(y["train"][rows], device=device), None, spec)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
        seconds.append(time.perf_counter() - t0)
        probs = _predict(model, lm, enc["validation"], layers, 64)
        dev = task.metrics(probs, task.decode(probs, None), y["validation"])["accuracy"]
        if dev > best:
            best, best_state = dev, {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    probs = _predict(model, lm, enc["test"], layers, 64)
    test = task.metrics(probs, task.decode(probs, None), y["test"])
    return {"test_accuracy": test["accuracy"], "dev_accuracy": best, "seconds": float(sum(seconds)),
            "epoch_seconds": float(np.mean(seconds)), "trainable_parameters": count_trainable(model),
            "backbone_parameters": lm.num_parameters}
