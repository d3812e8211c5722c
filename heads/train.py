"""`heads train`: one head per seed from a store, dev-based model selection, test once, artefacts.

Protocol ("Revisiting Parameter-Efficient Tuning", EMNLP 2022): the dev split picks the best epoch (and
stops early); the test split is evaluated once, on that checkpoint; seeds are reported as mean +- std.
The backbone is never loaded: features come from the store through `heads.data`.

The recipe: resolve the task -> feature sources -> head spec -> per seed: build the head, fit -> save.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from featstore.device import pick_device
from featstore.store import Store, open_store

from .artifacts import head_meta, save_run, check_out
from .config import TrainConfig, context_of, select_stored_layers
from .data import Loader, check_splits, default_max_memory, make_sources
from .errors import InputError, StoreError
from .metrics import mean_std
from .nets import build_head, count_trainable, reads
from .runtime import batch_dtype, feed_segments, torch_threads
from .spec import HeadSpec
from .tasks import Task, resolve_task
from .trainer import Member, SeedResult, fit_group, param_groups


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
    context: str | None = None  # e.g. "2 x lstm": the context layers over the token memory; None without

    @property
    def trainable_percent(self) -> float | None:
        if not self.backbone_parameters:
            return None
        return 100.0 * self.trainable_parameters / self.backbone_parameters

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for s in d["seeds"]:
            if not s["decision"]:
                s.pop("decision")
        d["trainable_percent"] = self.trainable_percent
        return d


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


def label_prior(store: Store, task: Task, layers: list[int]) -> np.ndarray:
    """(Y, L, D) the backbone's features of the label names, recorded at extraction."""
    if not task.label_queries_from_names:
        raise InputError(f"--label-init prior needs label names to start from; a {task.name} task has none, use "
                         "--label-init random")
    feats = [store.label_features(task.column, k) for k in layers]
    if any(f is None for f in feats):
        raise StoreError(f"store {store.path} has no label-name features for column {task.column!r}; "
                         "use --label-init random")
    return np.stack(feats, axis=1)


@dataclass(kw_only=True)
class RunPlan:
    """What one config needs before its heads are built: task, features, head spec. `sources` may be shared
    with other configs that read the same features (a sweep)."""
    cfg: TrainConfig
    task: Task
    layers: list[int]
    pooling: str | None
    top: Any  # heads.top_layers.TopSetup when top layers are tuned, else None
    prior: np.ndarray | None
    names: list[str]
    sources: dict[str, Any]
    in_ram: dict[str, bool]
    targets: dict[str, Any]
    gold: dict[str, Any]
    spec: HeadSpec
    device: torch.device
    dtype: Any
    read: tuple  # (tokens|pooled, stored layers, pooling): configs with equal `read` share a pass over the store
    stats: Any = None  # a probe's input standardisation, computed once

    def loaders(self, seed: int) -> dict[str, Loader]:
        """Eval loaders of every split and the shuffled `_train` one of `seed` (its batch order)."""
        gpu = self.device.type == "cuda"  # 8-bit codes travel to a GPU as codes and are decoded there
        cfg = self.cfg
        loaders = {n: Loader(self.sources[n], self.targets[n], cfg.batch_size, shuffle=False, dtype=self.dtype,
                             codes_out=gpu) for n in self.names}
        loaders["_train"] = Loader(self.sources[cfg.train_split], self.targets[cfg.train_split], cfg.batch_size,
                                   shuffle=True, seed=seed, dtype=self.dtype, codes_out=gpu)
        return loaders


def plan_run(cfg: TrainConfig, store: Store, shared: dict[tuple, tuple] | None = None) -> RunPlan:
    """Resolve the task, the features and the head spec of `cfg`. `shared`: sources by feature key, reused."""
    check_splits(store, cfg.train_split, cfg.dev_split, cfg.test_split)
    task = resolve_task(store, cfg.task, cfg.label_column)
    feature = reads(cfg.head, task.name)  # tokens | pooled
    pooling = cfg.pooling if feature == "pooled" else None
    layers = select_stored_layers(cfg.layers, store.layers)
    top = None
    if cfg.tune_top_layers:  # the head reads tuned top layers fed the stored layer N-m (heads.top_layers)
        from .top_layers import setup_top

        top = setup_top(store.manifest, store.layers, cfg, feature, layers)
        layers = top.plan.head_layers
    prior = label_prior(store, task, layers) if cfg.label_init == "prior" else None
    device = torch.device(pick_device(cfg.device))
    names = [n for n in (cfg.train_split, cfg.dev_split, cfg.test_split) if n is not None]
    max_memory = cfg.max_memory if cfg.max_memory is not None else default_max_memory()
    # a tuned model reads token features of the stored layers it is fed, for either head
    read = ("tokens", tuple(top.plan.read_layers), None) if top is not None else (feature, tuple(layers), pooling)
    key = (*read, tuple(names))
    if shared is not None and key in shared:
        sources, in_ram = shared[key]
    else:
        sources, in_ram = make_sources(store, names, read[0], list(read[1]), read[2], max_memory)
        if shared is not None:
            shared.clear()  # one set of features in RAM at a time
            shared[key] = (sources, in_ram)
    targets = {n: task.targets(store.split(n)) for n in names}
    gold = {n: task.gold(store.split(n)) for n in names}
    spec = HeadSpec(kind=cfg.head, task=task.name, n_outputs=task.n_outputs, hidden_size=store.width,
                    n_layers_in=len(layers), d_head=cfg.d_head, n_layers=cfg.n_layers, n_heads=cfg.n_heads,
                    dropout=cfg.dropout, pooling=pooling, **context_of(cfg, task),
                    **task.fit(targets[cfg.train_split], cfg.train_split))
    for n in names:  # span heads with context layers see which tokens are question / context
        feed_segments(sources[n], task, spec, gold[n])
    return RunPlan(cfg=cfg, task=task, layers=layers, pooling=pooling, top=top, prior=prior, names=names,
                   sources=sources, in_ram=in_ram, targets=targets, gold=gold, spec=spec, device=device,
                   dtype=batch_dtype(device, store.dtype), read=read)


def build_member(plan: RunPlan, seed: int, loaders: dict[str, Loader], log: list[dict[str, Any]]) -> Member:
    """A freshly initialised head for `seed` (weights and dropout from the seed's random stream), on the device."""
    torch.manual_seed(seed)
    head = build_head(plan.spec)
    if plan.prior is not None:
        head.init_queries_from(plan.prior)
    if hasattr(head, "set_input_stats") and plan.top is None:  # a probe standardises its inputs
        plan.stats = plan.stats or plan.sources[plan.cfg.train_split].input_stats()
        head.set_input_stats(*plan.stats)
    groups, model, frozen = param_groups(head, plan.cfg.weight_decay), head, None
    if plan.top is not None:
        model, more, frozen = plan.top.wrap(head, plan.spec, loaders[plan.cfg.train_split], plan.device)
        groups += more
    model.to(plan.device)
    return Member(model=model, groups=groups, task=plan.task, spec=plan.spec, cfg=plan.cfg, seed=seed,
                  device=plan.device, log=log, frozen=frozen)


def split_state(plan: RunPlan, model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The head's weights, and the tuned top layers' (empty without them), on the CPU."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    if plan.top is None:
        return state, {}
    # the wrapper's state: head.* and top.* -> two files
    return ({k[5:]: v for k, v in state.items() if k.startswith("head.")},
            {k[4:]: v for k, v in state.items() if k.startswith("top.")})


def _train(cfg: TrainConfig, store: Store) -> TrainResult:
    plan = plan_run(cfg, store)
    log: list[dict[str, Any]] = []
    results, states, tops = [], {}, {}
    for seed in cfg.seeds:
        loaders = plan.loaders(seed)
        member = build_member(plan, seed, loaders, log)
        n_params = count_trainable(member.model)
        results += fit_group([member], loaders, plan.gold, progress=cfg.progress, desc=f"{cfg.head} seed {seed}")
        states[seed], tops[seed] = split_state(plan, member.model)
    return save_result(plan, store, results, states, tops, log, n_params)


def save_result(plan: RunPlan, store: Store, results: list[SeedResult], states: dict[int, dict[str, torch.Tensor]],
                tops: dict[int, dict[str, torch.Tensor]], log: list[dict[str, Any]], n_params: int) -> TrainResult:
    """Summarise the seeds and write the head directory to `plan.cfg.out`."""
    cfg, task, names, layers = plan.cfg, plan.task, plan.names, plan.layers
    roles = {"train": cfg.train_split, "dev": cfg.dev_split, "test": cfg.test_split}
    primary = task.primary
    select = cfg.dev_split or cfg.train_split  # best seed by the dev metric (train when there is no dev split)
    best_seed = max(results, key=lambda r: r.metrics[select][primary]).seed
    summary = {n: {m: mean_std([r.metrics[n][m] for r in results]) for m in results[0].metrics[n]} for n in names}
    per_epoch = float(np.mean([r.seconds_per_epoch for r in results]))
    result = TrainResult(out=cfg.out, head=cfg.head, task=task.name, label_column=task.column, primary_metric=primary,
                         splits=roles, layers=layers, seeds=results, summary=summary, best_seed=best_seed,
                         trainable_parameters=n_params, backbone_parameters=store.manifest["model"].get("num_parameters"),
                         seconds_per_epoch=per_epoch, device=str(plan.device), in_ram=plan.in_ram,
                         context=(f"{plan.spec.context_layers} x {plan.spec.context}" if plan.spec.context_layers
                                  else None))
    meta = head_meta(cfg, store, plan.spec, task, layers, result)
    extra = None
    if plan.top is not None:
        meta.update(plan.top.meta(cfg, plan.pooling))
        extra = {seed: {meta["top_layers"]["weights"]: t} for seed, t in tops.items()}
    metrics = {"primary_metric": primary, "splits": roles,
               "seeds": {str(r.seed): {**r.metrics, "best_epoch": r.best_epoch, "epochs_run": r.epochs_run,
                                       "seconds_per_epoch": r.seconds_per_epoch} for r in results},
               "summary": summary}
    projection = {}
    for k in layers:  # a projected store: predict must map new texts' features the same way
        p = store.projection(k)
        if p is not None:
            projection[f"L{k}.mean"], projection[f"L{k}.basis"] = (torch.from_numpy(a) for a in p)
    save_run(cfg.out, meta, states, metrics, log, cfg.overwrite, projection or None, extra)
    return result
