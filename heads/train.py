"""`heads train`: one head per seed from a store, dev-based model selection, test once, artefacts.

Protocol ("Revisiting Parameter-Efficient Tuning", EMNLP 2022): the dev split picks the best epoch (and
stops early); the test split is evaluated once, on that checkpoint; seeds are reported as mean +- std.
The backbone is never loaded: features come from the store through `heads.data`.
"""
from __future__ import annotations

import os

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

import featstore
from featstore.device import pick_device
from featstore.store import Store, open_store

from . import __version__
from .artifacts import FORMAT, FORMAT_VERSION, check_out, save_run
from .config import HeadSpec, TrainConfig, select_stored_layers
from .data import Loader, default_max_memory
from .errors import InputError, StoreError
from .metrics import higher_is_better, mean_std
from .models import build_head, count_trainable, loss_fn
from .seqmodels import seq_loss
from .seqtask import SeqTask, resolve_seq_task, token_input_stats
from .task import (LabelTask, autocast, batch_dtype, check_splits, make_sources, resolve_task, to_device,
                   torch_threads)


@dataclass(kw_only=True)
class SeedResult:
    seed: int
    metrics: dict[str, dict[str, float]]  # split name -> metric -> value (best checkpoint)
    best_epoch: int
    epochs_run: int
    seconds_per_epoch: float


@dataclass(kw_only=True)
class TrainResult:
    out: str
    head: str
    task: str
    label_column: str
    primary_metric: str
    splits: dict[str, str | None]  # role (train/dev/test) -> split name
    layers: list[int]
    seeds: list[SeedResult]
    summary: dict[str, dict[str, dict[str, float]]]  # split -> metric -> {mean, std, n}
    best_seed: int
    trainable_parameters: int
    backbone_parameters: int | None
    seconds_per_epoch: float
    device: str
    in_ram: dict[str, bool] = field(default_factory=dict)

    @property
    def trainable_percent(self) -> float | None:
        if not self.backbone_parameters:
            return None
        return 100.0 * self.trainable_parameters / self.backbone_parameters

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["trainable_percent"] = self.trainable_percent
        return d


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Linear warm-up, then linear or cosine decay to zero (or constant)."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 1.0 - progress if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on biases, norms, the layer mix and label queries (they are embeddings)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or name.endswith("queries") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _prior(store: Store, lt: LabelTask, layers: list[int]) -> np.ndarray:
    feats = [store.label_features(lt.column, k) for k in layers]
    if any(f is None for f in feats):
        raise StoreError(f"store {store.path} has no label-name features for column {lt.column!r}; "
                         "use --label-init random")
    return np.stack(feats, axis=1)  # (Y, L, D)


def _input_stats(source: Any, rows: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of the pooled inputs (N, L*D), accumulated in float64 a slice at a time (no full copy)."""
    x = source.x.reshape(len(source.x), -1)
    s, ss = np.zeros(x.shape[1]), np.zeros(x.shape[1])
    for a in range(0, len(x), rows):
        part = x[a:a + rows].astype(np.float64)
        s += part.sum(0)
        ss += np.square(part).sum(0)
    mean = s / len(x)
    return mean, np.sqrt(np.maximum(ss / len(x) - mean ** 2, 0.0))


def train(cfg: TrainConfig) -> TrainResult:
    """Train `cfg.seeds` heads on a store and write the head directory to `cfg.out`."""
    cfg.validate()
    check_out(cfg.out, cfg.overwrite)
    store = open_store(cfg.store, storage_options=cfg.storage_options or None, cache_dir=cfg.cache_dir)
    try:
        # tuned top layers are transformer compute like fine-tuning's: every core (measured on the 2-core machine,
        # top 2 of 6 layers: 13.4 s per epoch on one thread, 9.1 s on two); a head alone leaves one to the prefetcher
        threads = cfg.threads if cfg.threads is not None or not cfg.tune_top_layers else os.cpu_count() or 1
        with torch_threads(threads):
            return _train(cfg, store)
    finally:
        store.close()


def _train(cfg: TrainConfig, store: Store) -> TrainResult:
    roles = {"train": cfg.train_split, "dev": cfg.dev_split, "test": cfg.test_split}
    check_splits(store, cfg.train_split, cfg.dev_split, cfg.test_split)
    seq = store.task != "sentence" or cfg.task in ("token", "span")  # a tag per word / an answer span
    if not seq and not cfg.label_column:
        raise InputError(f"--label-column is required: store {store.path} holds sentence labels "
                         f"({', '.join(store.label_columns) or 'none'})")
    lt: LabelTask | SeqTask = resolve_seq_task(store, cfg.task, cfg.label_column) if seq else \
        resolve_task(store, cfg.label_column, cfg.task)
    if seq and cfg.head == "mlp":
        raise InputError(f"the mlp head reads pooled vectors; a {lt.task} task needs ytuning or linear")
    layers = select_stored_layers(cfg.layers, store.layers)
    plan = top0 = read = None
    if cfg.tune_top_layers:  # the head reads tuned top layers fed the stored layer N-m (heads.top_layers)
        from .top_layers import load_top_layers, plan_top

        plan = plan_top(store.manifest, store.layers, cfg.tune_top_layers, cfg.head, layers)
        layers = plan.head_layers
        top0, read = load_top_layers(store.manifest, plan.m, cfg.backbone)
    if cfg.label_init == "prior" and lt.task != "classification":
        raise InputError("--label-init prior needs a classification task (label names); use --label-init random")
    prior = _prior(store, lt, layers) if cfg.label_init == "prior" else None
    device = torch.device(pick_device(cfg.device))
    names = [n for n in (cfg.train_split, cfg.dev_split, cfg.test_split) if n is not None]
    max_memory = cfg.max_memory if cfg.max_memory is not None else default_max_memory()
    pooling = cfg.pooling if cfg.head != "ytuning" and not seq else None
    if plan is None:
        sources, in_ram = make_sources(store, names, "ytuning" if seq else cfg.head, layers, pooling, max_memory)
    else:  # token features of the stored layers the tuned model reads, for either head
        sources, in_ram = make_sources(store, names, "ytuning", plan.read_layers, None, max_memory)
    targets = {n: lt.targets(store.split(n)) for n in names}

    ytrain = targets[cfg.train_split]
    if seq:
        t_mean, t_std = 0.0, 1.0
    elif lt.task == "classification":
        seen = np.unique(ytrain)
        if len(seen) < 2:
            raise InputError(f"split {cfg.train_split!r} has only one class of {cfg.label_column!r}; nothing to learn")
        t_mean, t_std = 0.0, 1.0
    else:
        t_mean, t_std = float(ytrain.mean()), float(ytrain.std()) or 1.0
    spec = HeadSpec(kind=cfg.head, task=lt.task, n_outputs=lt.n_outputs, hidden_size=store.width,
                    n_layers_in=len(layers), d_head=cfg.d_head, n_layers=cfg.n_layers, n_heads=cfg.n_heads,
                    dropout=cfg.dropout, pooling=pooling, target_mean=t_mean, target_std=t_std)
    stats = None if cfg.head == "ytuning" or plan is not None else (
        token_input_stats(sources[cfg.train_split]) if seq else _input_stats(sources[cfg.train_split]))
    primary = lt.primary
    dtype = batch_dtype(device, store.dtype)

    log: list[dict[str, Any]] = []
    results, states, tops = [], {}, {}
    for seed in cfg.seeds:
        gpu = device.type == "cuda"  # 8-bit codes travel to a GPU as codes and are decoded there
        loaders = {n: Loader(sources[n], targets[n], cfg.batch_size, shuffle=False, dtype=dtype, codes_out=gpu)
                   for n in names}
        loaders["_train"] = Loader(sources[cfg.train_split], ytrain, cfg.batch_size, shuffle=True, seed=seed,
                                   dtype=dtype, codes_out=gpu)
        res, state, n_params = _train_seed(seed, cfg, spec, lt, loaders, prior, stats, device, primary, log,
                                           top=(top0, plan) if plan is not None else None)
        results.append(res)
        if plan is not None:  # the wrapper's state: head.* and top.* -> two files
            tops[seed] = {k[4:]: v for k, v in state.items() if k.startswith("top.")}
            state = {k[5:]: v for k, v in state.items() if k.startswith("head.")}
        states[seed] = state

    select = cfg.dev_split or cfg.train_split  # best seed by the dev metric (train when there is no dev split)
    best_seed = max(results, key=lambda r: r.metrics[select][primary]).seed
    summary = {n: {m: mean_std([r.metrics[n][m] for r in results]) for m in results[0].metrics[n]} for n in names}
    per_epoch = float(np.mean([r.seconds_per_epoch for r in results]))
    result = TrainResult(out=cfg.out, head=cfg.head, task=lt.task, label_column=lt.column, primary_metric=primary,
                         splits=roles, layers=layers, seeds=results, summary=summary, best_seed=best_seed,
                         trainable_parameters=n_params, backbone_parameters=store.manifest["model"].get("num_parameters"),
                         seconds_per_epoch=per_epoch, device=str(device), in_ram=in_ram)
    meta = _head_meta(cfg, store, spec, lt, layers, result)
    if plan is not None:
        from .top_layers import TOP_WEIGHTS

        meta["layers"] = plan.read_layers  # what eval and predict read from a store or a truncated backbone
        meta["top_layers"] = {"plan": asdict(plan), "head_layers": plan.head_layers, "top_lr": cfg.top_lr,
                              "pooling": pooling, "weights": TOP_WEIGHTS,
                              "config": store.manifest["model"]["config"], "checkpoint": read.to_json()}
    metrics = {"primary_metric": primary, "splits": roles,
               "seeds": {str(r.seed): {**r.metrics, "best_epoch": r.best_epoch, "epochs_run": r.epochs_run,
                                       "seconds_per_epoch": r.seconds_per_epoch} for r in results},
               "summary": summary}
    projection = {}
    for k in layers:  # a projected store: predict must map new texts' features the same way
        p = store.projection(k)
        if p is not None:
            projection[f"L{k}.mean"], projection[f"L{k}.basis"] = (torch.from_numpy(a) for a in p)
    extra = {seed: {meta["top_layers"]["weights"]: t} for seed, t in tops.items()} if plan is not None else None
    save_run(cfg.out, meta, states, metrics, log, cfg.overwrite, projection or None, extra)
    return result


def _train_seed(seed: int, cfg: TrainConfig, spec: HeadSpec, lt: LabelTask | SeqTask, loaders: dict[str, Loader],
                prior: np.ndarray | None, stats: Any, device: torch.device, primary: str,
                log: list[dict[str, Any]], top: tuple[Any, Any] | None = None
                ) -> tuple[SeedResult, dict[str, torch.Tensor], int]:
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    seq = spec.task in ("token", "span")
    model = build_head(spec)
    if prior is not None:
        model.init_queries_from(prior)
    if stats is not None:
        model.set_input_stats(*stats)
    groups = param_groups(model, cfg.weight_decay)
    frozen_top = False
    if top is not None:  # tuned top layers under the head, with their own (smaller) learning rate
        import copy

        from .top_layers import TunedModel, pooled_stats

        head, layers_top = model, copy.deepcopy(top[0])
        model = TunedModel(layers_top, head, top[1], spec.pooling if spec.kind != "ytuning" else None).to(device)
        if spec.kind != "ytuning":
            head.set_input_stats(*pooled_stats(model, loaders[cfg.train_split], device))
        frozen_top = cfg.top_lr == 0
        layers_top.requires_grad_(not frozen_top)
        if not frozen_top:
            groups += [{**g, "lr": cfg.top_lr} for g in param_groups(layers_top, cfg.weight_decay)]
    model.to(device)
    n_params = count_trainable(model)
    opt = torch.optim.AdamW(groups, lr=cfg.lr)
    train_loader = loaders["_train"]
    total = cfg.epochs * len(train_loader)
    warmup = int(cfg.warmup * total)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, warmup, cfg.schedule))
    better = (lambda a, b: a > b) if higher_is_better(primary) else (lambda a, b: a < b)
    best_score, best_state, best_epoch, bad, seconds = None, None, cfg.epochs, 0, []
    bar = tqdm(total=total, desc=f"{spec.kind} seed {seed}", unit="step", disable=not cfg.progress, leave=False)
    epoch = 0
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        if frozen_top:  # a frozen backbone part runs as at extraction: no dropout
            model.top.eval()
        t0, loss_sum, n = time.perf_counter(), 0.0, 0
        for batch in train_loader.epoch(epoch):
            x, mask = to_device(batch, device)
            y = torch.from_numpy(batch.y).to(device)
            with autocast(device):
                out = model(x, mask)
            loss = seq_loss(spec, out, y, mask) if seq else loss_fn(spec, out, y)
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
            rec["dev"] = lt.evaluate(model, spec, loaders[cfg.dev_split], device)
            score = rec["dev"][primary]
            if best_score is None or (not np.isnan(score) and (np.isnan(best_score) or better(score, best_score))):
                best_score, best_epoch, bad = score, epoch, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                bad += 1
            bar.set_postfix(epoch=epoch, loss=f"{rec['train_loss']:.4f}", **{f"dev_{primary}": f"{score:.4f}"})
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
    metrics = {}
    for name in dict.fromkeys(n for n in (cfg.train_split, cfg.dev_split, cfg.test_split) if n is not None):
        metrics[name] = lt.evaluate(model, spec, loaders[name], device)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return SeedResult(seed=seed, metrics=metrics, best_epoch=best_epoch, epochs_run=epoch,
                      seconds_per_epoch=float(np.mean(seconds))), state, n_params


def _head_meta(cfg: TrainConfig, store: Any, spec: HeadSpec, lt: LabelTask | SeqTask, layers: list[int],
               r: TrainResult) -> dict[str, Any]:
    """head.json: what rebuilds the head, what it fits (store fingerprint), how to re-extract (backbone)."""
    m = store.manifest
    model = {k: m["model"].get(k) for k in ("name", "path", "revision", "weights_sha256", "num_layers",
                                            "hidden_size", "num_parameters", "architecture")}
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "tool": {"name": "heads", "version": __version__, "featstore_version": featstore.__version__},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "head": spec.kind, "task": spec.task, "architecture": spec.to_json(),
        "label_column": lt.column, "label_names": lt.label_names,
        "label_values": lt.values.tolist() if lt.values is not None else None,
        "layers": layers, "pooling": spec.pooling,
        "seq_task": ({"scheme": lt.scheme, "null_answers": lt.null_answers} if isinstance(lt, SeqTask) else None),
        "store": {"path": store.path, "fingerprint": store.fingerprint, "hidden_size": store.width,
                  "layers": store.layers, "dtype": store.dtype, "model": model, "tokenizer": m["tokenizer"],
                  "settings": m["settings"],
                  "dataset": {"splits": {k: {"sha256": v["sha256"], "n_examples": v["n_examples"]}
                                         for k, v in m["dataset"]["splits"].items()}}},
        "backbone": {"name": m["model"].get("name"), "path": m["model"].get("path"), "tokenizer": m["tokenizer"],
                     "settings": m["settings"], "runtime": m.get("runtime", {}),
                     "text_column": m["dataset"].get("text_column"), "pair_column": m["dataset"].get("pair_column"),
                     "num_parameters": m["model"].get("num_parameters")},
        "training": cfg.to_json(), "splits": r.splits, "seeds": list(cfg.seeds), "best_seed": r.best_seed,
        "primary_metric": r.primary_metric, "trainable_parameters": r.trainable_parameters,
        "trainable_percent": r.trainable_percent, "seconds_per_epoch": r.seconds_per_epoch,
        "metrics": r.summary,
    }
