"""Full fine-tuning baselines for vs_finetune.py: backbone + linear head on mean-pooled output, all weights trained.

`init_head` (a file written by `heads export`) starts the classifier from a head trained on the store: head-first
fine-tuning (LP-FT, Kumar et al. ICLR 2022; EH-FT, EMNLP 2022). `lora=r`: LoRA (PEFT) of rank r on the attention's
query and value projections through the whole backbone, the backbone's own weights frozen, the head trained.
Splits beyond train/validation (e.g. robustness.py's perturbed copies of test) are evaluated too (`split_accuracy`).
"""
from __future__ import annotations

import json
import math
import time

import numpy as np
import torch
from torch import nn

from featstore.extract.inputs import load_dataset
from featstore.extract.models import resolve_model_name
from featstore.extract.plan import pad_batch


class Classifier(nn.Module):
    def __init__(self, backbone, n_labels: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.config.hidden_size, n_labels)

    def forward(self, input_ids, attention_mask):
        h = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, D)
        m = attention_mask.unsqueeze(-1).float()
        return self.head((h * m).sum(1) / m.sum(1))  # mean pooling, as the store's `mean` vectors


def _batches(enc, idx, batch_size):
    for a in range(0, len(idx), batch_size):
        rows = idx[a:a + batch_size]
        yield (rows, *pad_batch([enc["input_ids"][r] for r in rows]))


def accuracy(model, enc, y, batch_size, device) -> float:
    model.eval()
    order = np.argsort([-len(x) for x in enc["input_ids"]])
    pred = np.zeros(len(y), dtype=np.int64)
    with torch.inference_mode():
        for rows, x, m in _batches(enc, order, batch_size * 2):
            pred[rows] = model(x.to(device), m.to(device)).argmax(-1).cpu().numpy()
    return float((pred == y).mean())


def finetune(data: dict[str, str], model_name: str, label_column: str, seed: int, epochs: int, max_length: int,
             lr: float = 5e-5, batch_size: int = 16, warmup: float = 0.1, init_head: str | None = None,
             device: str = "cpu", log=None, lora: int = 0) -> dict:
    """Train backbone + head; select the epoch by dev accuracy; report test accuracy of that epoch's weights."""
    from transformers import AutoModel, AutoTokenizer

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    ds = load_dataset(data, "text", None, [label_column], "id")
    names = ds.label_columns[0].names
    path = resolve_model_name(model_name)
    tok = AutoTokenizer.from_pretrained(path)
    backbone = AutoModel.from_pretrained(path)
    if lora:
        backbone = with_lora(backbone, lora)
    model = Classifier(backbone, len(names)).to(device)
    if init_head:
        from safetensors.torch import load_file

        w = load_file(init_head)
        model.head.weight.data.copy_(w["weight"])
        model.head.bias.data.copy_(w["bias"])
    enc = {k: tok(s.texts, truncation=True, max_length=max_length) for k, s in ds.splits.items()}
    y = {k: s.targets[label_column] for k, s in ds.splits.items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.01)
    steps = epochs * math.ceil(len(y["train"]) / batch_size)
    warm = max(1, int(warmup * steps))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warm, max(0.0, (steps - s) / max(1, steps - warm))))
    best, best_state, epoch_times = -1.0, None, []
    for epoch in range(epochs):
        model.train()
        t0 = time.perf_counter()
        for rows, x, m in _batches(enc["train"], rng.permutation(len(y["train"])), batch_size):
            loss = nn.functional.cross_entropy(model(x.to(device), m.to(device)),
                                               torch.as_tensor(y["train"][rows], device=device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
        epoch_times.append(time.perf_counter() - t0)
        dev = accuracy(model, enc["validation"], y["validation"], batch_size, device)
        if log:
            log(json.dumps({"epoch": epoch + 1, "dev_accuracy": dev, "seconds": epoch_times[-1]}))
        if dev > best:
            best, best_state = dev, {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    test = accuracy(model, enc["test"], y["test"], batch_size, device)
    extra = {k: accuracy(model, enc[k], y[k], batch_size, device) for k in enc if k not in ("train", "validation")}
    backbone_params = sum(p.numel() for n, p in model.backbone.named_parameters() if "lora_" not in n)
    return {"dev_accuracy": best, "test_accuracy": test, "train_seconds": float(sum(epoch_times)),
            "epoch_seconds": epoch_times, "split_accuracy": extra,
            "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "backbone_parameters": backbone_params}


LORA_TARGETS = {"deberta-v2": ["query_proj", "value_proj"]}  # BERT family: `query`, `value`


def with_lora(backbone, rank: int):
    """The backbone with LoRA adapters (rank `rank`, alpha 2*rank, dropout 0.1) on the attention's query and
    value projections; only the adapters train (PEFT's usual setting for encoders)."""
    from peft import LoraConfig, get_peft_model

    targets = LORA_TARGETS.get(backbone.config.model_type, ["query", "value"])
    cfg = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.1, target_modules=targets, bias="none")
    return get_peft_model(backbone, cfg)
