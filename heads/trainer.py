"""The one training loop: AdamW with warm-up and decay, gradient clipping, dev-based model selection and early
stopping. It knows nothing of task or head kinds: the task gives the loss and the metrics."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .config import TrainConfig
from .data import Loader
from .errors import InputError
from .runtime import autocast, infer, run_model, score, to_device
from .tasks import Task


@dataclass(kw_only=True)
class SeedResult:
    seed: int
    metrics: dict[str, dict[str, float]]  # split name -> metric -> value (best checkpoint)
    best_epoch: int
    epochs_run: int
    seconds_per_epoch: float
    decision: dict[str, Any] = field(default_factory=dict)  # what the task chose on dev (e.g. a threshold)


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Linear warm-up, then linear or cosine decay to zero (or constant)."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 1.0 - progress if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(model: torch.nn.Module, weight_decay: float, lr: float | None = None) -> list[dict[str, Any]]:
    """No weight decay on biases, norms, the layer mix and label queries (they are embeddings)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or name.endswith("queries") else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [{**g, "lr": lr} for g in groups] if lr is not None else groups


def fit(model: torch.nn.Module, groups: list[dict[str, Any]], task: Task, spec: Any, cfg: TrainConfig, seed: int,
        loaders: dict[str, Loader], gold: dict[str, Any], device: torch.device, log: list[dict[str, Any]],
        frozen: torch.nn.Module | None = None) -> SeedResult:
    """Train `model` (its parameters in `groups`) on loaders["_train"]; keep the best epoch by the dev metric;
    return the metrics of every split on it. `frozen`: a part kept in eval mode (no dropout) while training."""
    from tqdm.auto import tqdm

    primary = task.primary
    opt = torch.optim.AdamW(groups, lr=cfg.lr)
    train_loader = loaders["_train"]
    total = cfg.epochs * len(train_loader)
    warmup = int(cfg.warmup * total)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, warmup, cfg.schedule))
    best_score, best_state, best_epoch, bad, seconds = None, None, cfg.epochs, 0, []
    bar = tqdm(total=total, desc=f"{spec.kind} seed {seed}", unit="step", disable=not cfg.progress, leave=False)
    epoch = 0
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        if frozen is not None:
            frozen.eval()
        t0, loss_sum, n = time.perf_counter(), 0.0, 0
        for batch in train_loader.epoch(epoch):
            x, mask = to_device(batch, device)
            y = torch.from_numpy(batch.y).to(device)
            with autocast(device):
                out = run_model(model, spec, batch, x, mask)
            loss = task.loss(out, y, mask, spec)
            if not torch.isfinite(loss):  # a diverged head is never saved as if it had trained
                raise InputError(f"training diverged (seed {seed}, epoch {epoch}): the loss is {loss.item()}; "
                                 f"lower --lr (now {cfg.lr:g}) or keep --grad-clip on")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            loss_sum, n = loss_sum + loss.item() * len(batch.index), n + len(batch.index)
            bar.update(1)
        seconds.append(time.perf_counter() - t0)
        rec: dict[str, Any] = {"seed": seed, "epoch": epoch, "train_loss": loss_sum / max(n, 1),
                               "lr": sched.get_last_lr()[0], "seconds": seconds[-1]}
        if cfg.dev_split is not None:
            rec["dev"] = score(model, task, spec, loaders[cfg.dev_split], gold[cfg.dev_split], device)[0]
            value = rec["dev"][primary]
            if best_score is None or (not np.isnan(value) and (np.isnan(best_score) or task.better(value, best_score))):
                best_score, best_epoch, bad = value, epoch, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                bad += 1
            bar.set_postfix(epoch=epoch, loss=f"{rec['train_loss']:.4f}", **{f"dev_{primary}": f"{value:.4f}"})
        else:
            bar.set_postfix(epoch=epoch, loss=f"{rec['train_loss']:.4f}")
        log.append(rec)
        if cfg.patience is not None and cfg.dev_split is not None and bad >= cfg.patience:
            break
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        best_epoch = epoch  # no dev split: the last epoch is the result
    names = list(dict.fromkeys(n for n in (cfg.train_split, cfg.dev_split, cfg.test_split) if n is not None))
    outputs = {n: infer(model, task, spec, loaders[n], device) for n in names}
    select = cfg.dev_split or cfg.train_split
    task.apply(decision := task.decide(outputs[select], gold[select]))  # e.g. a threshold chosen on dev
    metrics = {n: task.metrics(outputs[n], task.decode(outputs[n], gold[n]), gold[n]) for n in names}
    return SeedResult(seed=seed, metrics=metrics, best_epoch=best_epoch, epochs_run=epoch,
                      seconds_per_epoch=float(np.mean(seconds)), decision=decision)
