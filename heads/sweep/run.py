"""Training a sweep's configs: every config x seed, the configs that read the same features (and batch
order) many heads per pass. Each finished config is written whole to `<out>/trials/<key>/`: its models per
seed (safetensors) and result.json (dev and train metrics, log). Test is never scored here."""
from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import asdict
from typing import Any

import numpy as np

from featstore.store import Store

from ..artifacts import _write_json
from ..metrics import mean_std
from ..train import RunPlan, build_member, plan_run, split_state
from ..trainer import SeedResult, fit_group
from .config import SweepConfig
from .memory import heads_per_pass
from .space import config_key, config_of

MODEL = "model.safetensors"  # a trial's whole trained model per seed (head, and tuned top layers if any)


def trial_dir(out: str, key: str) -> str:
    return os.path.join(out, "trials", key)


def train_configs(sc: SweepConfig, store: Store, params_list: list[dict[str, Any]], *, trials: list[Any] | None = None,
                  prune: bool = False, bar: Any = None) -> dict[str, str]:
    """Train every config x seed, those reading the same features together, and write each config's trial
    directory. `trials` (Optuna's, parallel to `params_list`) receive per-epoch dev values for pruning.
    Returns key -> complete | pruned | diverged."""
    cfgs = [config_of({**sc.fixed, "out": "-", "test_split": None, "progress": False}, p) for p in params_list]
    # configs whose options name the same features: planned together, so one set of features is in RAM at once
    by_options: dict[tuple, list[int]] = {}
    for i, c in enumerate(cfgs):
        by_options.setdefault((c.head, c.layers, c.pooling, c.tune_top_layers), []).append(i)
    shared: dict[tuple, tuple] = {}
    states: dict[str, str] = {}
    for members in by_options.values():
        plans = {i: plan_run(cfgs[i], store, shared) for i in members}
        groups: dict[tuple, list[int]] = {}  # the same features and batch order: one pass trains them all
        for i in members:
            groups.setdefault((plans[i].read, cfgs[i].batch_size), []).append(i)
        for idx in groups.values():
            k = heads_per_pass([plans[i] for i in idx], sc.heads_per_pass)
            for a in range(0, len(idx), k):
                chunk = idx[a:a + k]
                states.update(_train_chunk(sc, [plans[i] for i in chunk], [params_list[i] for i in chunk],
                                           [trials[i] for i in chunk] if trials else None, prune, bar))
    return states


def _train_chunk(sc: SweepConfig, plans: list[RunPlan], params_list: list[dict[str, Any]], trials: list[Any] | None,
                 prune: bool, bar: Any) -> dict[str, str]:
    """One group of configs reading the same features: per seed, one pass over the store trains them all."""
    n = len(plans)
    logs: list[list[dict[str, Any]]] = [[] for _ in range(n)]
    results: list[dict[int, SeedResult]] = [{} for _ in range(n)]
    models: list[dict[int, Any]] = [{} for _ in range(n)]
    pruned = [False] * n
    failed: list[str | None] = [None] * n
    for s, seed in enumerate(sc.seeds):
        alive = [i for i in range(n) if not pruned[i] and failed[i] is None]
        if not alive:
            break
        loaders = plans[alive[0]].loaders(seed)
        members = []
        for i in alive:
            m = build_member(plans[i], seed, loaders, logs[i])
            if prune and trials is not None and s == 0:  # the first seed's dev curve decides (Optuna's pruner)
                m.on_epoch = _pruner(trials[i])
            members.append(m)
        desc = f"{len(members)} head{'s' if len(members) > 1 else ''} seed {seed}"
        cfg0 = plans[alive[0]].cfg
        names = [cfg0.train_split] + ([cfg0.dev_split] if cfg0.dev_split else [])
        out = fit_group(members, loaders, plans[alive[0]].gold, progress=sc.progress and sys.stderr.isatty(),
                        desc=desc, final_splits=names, drop_diverged=True)
        for i, m, r in zip(alive, members, out):
            if m.diverged:  # the config fails; the others go on
                failed[i] = m.diverged
                continue
            pruned[i] = m.pruned
            results[i][seed], models[i][seed] = r, split_state(plans[i], m.model)
        if bar is not None:
            bar.update(len(alive))
    states = {}
    for i in range(n):
        key = config_key(params_list[i])
        if pruned[i] or failed[i]:
            states[key] = "pruned" if pruned[i] else "diverged"
            continue
        write_trial(sc.out, key, params_list[i], plans[i], results[i], models[i], logs[i])
        states[key] = "complete"
    return states


def _pruner(trial: Any) -> Any:
    def on_epoch(epoch: int, value: float) -> bool:
        if np.isnan(value):
            return False
        trial.report(float(value), epoch)
        return trial.should_prune()
    return on_epoch


def write_trial(out: str, key: str, params: dict[str, Any], plan: RunPlan, results: dict[int, SeedResult],
                models: dict[int, tuple], log: list[dict[str, Any]]) -> None:
    """A finished config: its models per seed and results, written whole (temporary name, then renamed)."""
    from safetensors.torch import save_file

    final = trial_dir(out, key)
    tmp = f"{final}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    for seed, (head, top) in models.items():
        os.makedirs(os.path.join(tmp, str(seed)))
        save_file({**{f"head.{k}": v.contiguous() for k, v in head.items()},
                   **{f"top.{k}": v.contiguous() for k, v in top.items()}}, os.path.join(tmp, str(seed), MODEL))
    primary = plan.task.primary
    dev = plan.cfg.dev_split or plan.cfg.train_split
    _write_json(os.path.join(tmp, "result.json"), {
        "key": key, "params": params, "primary_metric": primary,
        "dev": mean_std([r.metrics[dev][primary] for r in results.values()]),
        "seeds": {str(s): {**asdict(r), "seed": s} for s, r in results.items()}, "log": log})
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)


def read_trial(out: str, key: str) -> dict[str, Any] | None:
    path = os.path.join(trial_dir(out, key), "result.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)
