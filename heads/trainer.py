"""The one training loop: AdamW with warm-up and decay, gradient clipping, dev-based model selection and early
stopping, for K heads at once (`fit_group`; `heads train` is K = 1). It knows nothing of task or head kinds: the task
gives the loss and the metrics.

K heads that read the same features with the same batch order train together: each batch is read and decoded
once and fed to every head, each with its own optimizer, schedule, early stopping and best state. A head's
random stream (dropout) is its own: its generator state is swapped in around its steps, so a head trained in a
group sees exactly the numbers it would see trained alone.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from .config import TrainConfig
from .data import Loader
from .errors import InputError
from .runtime import autocast, infer_many, run_model, to_device
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


class Diverged(InputError):
    """A head's loss became NaN or infinite."""


def rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The global generators' state (CPU, and the GPU's): what dropout draws from next."""
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def set_rng_state(state: tuple[torch.Tensor, torch.Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


@dataclass(kw_only=True, eq=False)
class Member:
    """One head of a group: its model, settings and training state. Build the model right after
    `torch.manual_seed(seed)` and create the member then: it keeps the random state from there on."""

    model: torch.nn.Module
    groups: list[dict[str, Any]]  # its parameter groups (AdamW)
    task: Task
    spec: Any
    cfg: TrainConfig
    seed: int
    device: torch.device
    log: list[dict[str, Any]]
    frozen: torch.nn.Module | None = None  # a part kept in eval mode (no dropout) while training
    on_epoch: Callable[[int, float], bool] | None = None  # (epoch, dev value) -> True to stop now (pruning)
    rng: Any = None
    opt: Any = None
    sched: Any = None
    best_score: float | None = None
    best_state: dict[str, torch.Tensor] | None = None
    best_epoch: int = 0
    bad: int = 0
    epoch: int = 0  # epochs run
    seconds: list[float] = field(default_factory=list)
    loss_sum: float = 0.0
    n: int = 0
    pruned: bool = False
    diverged: str | None = None  # why it left its group, when `fit_group(..., drop_diverged=True)`

    def __post_init__(self) -> None:
        self.rng = rng_state(self.device)
        self.best_epoch = self.cfg.epochs

    def start(self, steps_per_epoch: int) -> None:
        self.opt = torch.optim.AdamW(self.groups, lr=self.cfg.lr)
        total = self.cfg.epochs * steps_per_epoch
        warmup = int(self.cfg.warmup * total)
        schedule = self.cfg.schedule
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: lr_factor(s, total, warmup, schedule))

    def begin_epoch(self, epoch: int) -> None:
        self.model.train()
        if self.frozen is not None:
            self.frozen.eval()
        self.epoch, self.loss_sum, self.n = epoch, 0.0, 0

    def step(self, batch: Any, x: torch.Tensor, mask: torch.Tensor | None, y: torch.Tensor) -> None:
        set_rng_state(self.rng, self.device)
        with autocast(self.device):
            out = run_model(self.model, self.spec, batch, x, mask)
        loss = self.task.loss(out, y, mask, self.spec)
        if not torch.isfinite(loss):  # a diverged head is never saved as if it had trained
            raise Diverged(f"training diverged (seed {self.seed}, epoch {self.epoch}): the loss is {loss.item()}; "
                             f"lower --lr (now {self.cfg.lr:g}) or keep --grad-clip on")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.opt.step()
        self.sched.step()
        self.rng = rng_state(self.device)
        n = len(batch.index)
        self.loss_sum, self.n = self.loss_sum + loss.item() * n, self.n + n

    def end_epoch(self, seconds: float, dev: dict[str, float] | None) -> bool:
        """Log the epoch, keep the best state; True when this head is done."""
        self.seconds.append(seconds)
        rec: dict[str, Any] = {"seed": self.seed, "epoch": self.epoch, "train_loss": self.loss_sum / max(self.n, 1),
                               "lr": self.sched.get_last_lr()[0], "seconds": seconds}
        if dev is not None:
            rec["dev"] = dev
            value = dev[self.task.primary]
            if self.best_score is None or (not np.isnan(value) and (np.isnan(self.best_score)
                                                                    or self.task.better(value, self.best_score))):
                self.best_score, self.best_epoch, self.bad = value, self.epoch, 0
                self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            else:
                self.bad += 1
            if self.on_epoch is not None and self.on_epoch(self.epoch, value):
                self.pruned = True
        self.log.append(rec)
        stop = self.cfg.patience is not None and dev is not None and self.bad >= self.cfg.patience
        return stop or self.pruned or self.epoch >= self.cfg.epochs

    def restore_best(self) -> None:
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
            self.best_state = None  # the model holds it now
        else:
            self.best_epoch = self.epoch  # no dev split: the last epoch is the result


def fit_group(members: list[Member], loaders: dict[str, Loader], gold: dict[str, Any], *, progress: bool = True,
              desc: str = "heads", final_splits: list[str] | None = None,
              drop_diverged: bool = False) -> list[SeedResult | None]:
    """Train every member on loaders["_train"] (read once per batch for all), each selecting its best epoch on
    its dev split; then score each on `final_splits` (default: its train, dev and test splits).
    `drop_diverged`: a head whose loss diverges leaves the group (its result is None) instead of failing all."""
    from featstore.io.progress import progress_bar

    train_loader = loaders["_train"]
    steps = len(train_loader)
    device = members[0].device
    for m in members:
        m.start(steps)
    active = list(members)
    bar = progress_bar(progress, total=max(m.cfg.epochs for m in members) * steps, desc=desc, unit="step",
                       leave=False)  # drawn on a terminal only: never into a redirected log
    epoch = 0
    while active:
        epoch += 1
        for m in active:
            m.begin_epoch(epoch)
        t0 = time.perf_counter()
        for batch in train_loader.epoch(epoch):
            x, mask = to_device(batch, device)
            y = torch.from_numpy(batch.y).to(device)
            for m in active:
                try:
                    m.step(batch, x, mask, y)
                except Diverged as e:
                    if not drop_diverged:
                        raise
                    m.diverged = str(e)
            active = [m for m in active if m.diverged is None]
            bar.update(1)
            if not active:
                break
        seconds = time.perf_counter() - t0
        if not active:  # every head of the group diverged
            break
        dev_split = active[0].cfg.dev_split  # members of a group share their splits
        devs = [None] * len(active)
        if dev_split is not None:
            outs = infer_many([m.model for m in active], [m.task for m in active], [m.spec for m in active],
                              loaders[dev_split], device)
            devs = [m.task.metrics(o, m.task.decode(o, gold[dev_split]), gold[dev_split])
                    for m, o in zip(active, outs)]
        active = [m for m, dev in zip(active, devs) if not m.end_epoch(seconds, dev)]
        last = members[0].log[-1] if members[0].log else {}
        bar.set_postfix(epoch=epoch, heads=len(active), loss=f"{last.get('train_loss', 0.0):.4f}")
        if not active:
            bar.update(bar.total - bar.n)
    bar.close()
    done = [m for m in members if m.diverged is None]
    for m in done:
        m.restore_best()
    cfg = members[0].cfg
    names = final_splits if final_splits is not None else \
        list(dict.fromkeys(n for n in (cfg.train_split, cfg.dev_split, cfg.test_split) if n is not None))
    scored = iter(score_members(done, names, cfg.dev_split or cfg.train_split, loaders, gold) if done else [])
    return [next(scored) if m.diverged is None else None for m in members]


def score_members(members: list[Member], names: list[str], select: str, loaders: dict[str, Loader],
                  gold: dict[str, Any]) -> list[SeedResult]:
    """Each member's metrics on `names`, decoded with the settings its task chose on split `select`."""
    device = members[0].device
    outs = {n: infer_many([m.model for m in members], [m.task for m in members], [m.spec for m in members],
                          loaders[n], device) for n in dict.fromkeys([select, *names])}
    results = []
    for j, m in enumerate(members):
        m.task.apply(decision := m.task.decide(outs[select][j], gold[select]))  # e.g. a threshold chosen on dev
        metrics = {n: m.task.metrics(outs[n][j], m.task.decode(outs[n][j], gold[n]), gold[n]) for n in names}
        results.append(SeedResult(seed=m.seed, metrics=metrics, best_epoch=m.best_epoch, epochs_run=m.epoch,
                                  seconds_per_epoch=float(np.mean(m.seconds)) if m.seconds else 0.0,
                                  decision=decision))
    return results
