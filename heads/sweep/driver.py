"""`heads sweep`: every config x seed trained (many heads per pass), the dev metric picks the config (mean
over seeds), only the picked config is evaluated on test, and its heads are written as an ordinary head
directory. Workers (processes here, or machines sharing a database) take configs from one Optuna study.

    <out>/sweep.db          the study (unless --storage): which configs exist, are claimed, are done
    <out>/trials/<key>/     each finished config: its models per seed and result.json (no test scores)
    <out>/best/             the picked config's head directory (heads eval/predict/compare/export read it)
    <out>/sweep.json        the table, as --json prints it

A killed sweep restarted with the same command keeps the finished configs and trains the rest; a config's
results do not depend on which others shared its passes, so they equal an uninterrupted sweep's.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from featstore.store import Store, open_store

from ..artifacts import _write_json
from ..data import check_splits, default_max_memory
from ..errors import InputError
from ..metrics import higher_is_better, mean_std
from ..nets import count_trainable
from ..runtime import torch_threads
from ..tasks import resolve_task
from ..train import build_member, plan_run, save_result, split_state
from ..trainer import score_members
from .config import SweepConfig
from .memory import CLAIM
from .run import MODEL, read_trial, train_configs, trial_dir
from .space import Space, config_key, config_of
from .study import Study

POLL_SECONDS = 2.0


@dataclass(kw_only=True)
class Row:
    key: str
    params: dict[str, Any]
    state: str  # complete | pruned | diverged
    dev: dict[str, float]  # the primary metric on dev: mean, std, n over seeds
    best_epochs: list[int]


@dataclass(kw_only=True)
class SweepResult:
    out: str
    primary_metric: str
    higher_is_better: bool
    dev_split: str
    swept: list[str]
    seeds: list[int]
    rows: list[Row]  # best dev first; pruned configs last
    picked: dict[str, Any]  # the picked config's params
    best: str  # its head directory
    test: dict[str, dict[str, float]] | None  # its test metrics (mean, std, n); None without a test split
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def sweep(sc: SweepConfig) -> SweepResult:
    """Run (or resume, or join) the sweep `sc`; return its table once every config is done."""
    t0 = time.perf_counter()
    space = sc.check()
    os.makedirs(sc.out, exist_ok=True)
    store, study = open_study(sc, space)
    try:
        with torch_threads(sc.fixed.get("threads")):
            configs = len(space.configs()) if not sc.samples else sc.samples
            total = configs * len(sc.seeds)
            if sc.workers > 1 and sc.heads_per_pass is None:  # claims small enough that every worker gets some
                sc.heads_per_pass = max(1, min(CLAIM, math.ceil(configs / sc.workers)))
            with _bar(sc, total) as bar:
                procs = start_workers(sc) if sc.workers > 1 else []
                while True:  # this process trains too: configs requeued from dead workers, or all of them
                    work(sc, store, study, bar)
                    if wait_for_others(study):
                        break
            for p in procs:
                if p.wait() != 0:
                    raise InputError(f"a sweep worker (pid {p.pid}) failed with exit code {p.returncode}; see its "
                                     "message above, then rerun the same command to resume")
            return finish(sc, store, study, space, time.perf_counter() - t0)
    finally:
        store.close()


def open_study(sc: SweepConfig, space: Space) -> tuple[Store, Study]:
    fixed = sc.fixed
    store = open_store(fixed["store"], storage_options=fixed.get("storage_options") or None,
                       cache_dir=fixed.get("cache_dir"))
    try:
        cfg = sc.train_config()
        check_splits(store, cfg.train_split, cfg.dev_split, cfg.test_split)
        primary = resolve_task(store, cfg.task, cfg.label_column).primary
        direction = "maximize" if higher_is_better(primary) else "minimize"
        return store, Study(sc.url, sc.settings_hash(space, store.fingerprint), direction, space, sc.samples,
                            heartbeat=sc.heartbeat)
    except BaseException:
        store.close()
        raise


def _bar(sc: SweepConfig, total: int) -> Any:
    """Configs x seeds trained by this process (each config's epochs have a bar of their own)."""
    from featstore.io.progress import progress_bar

    return progress_bar(sc.progress, total=total, desc="configs x seeds", unit="head")


def work(sc: SweepConfig, store: Store, study: Study, bar: Any) -> None:
    """Claim configs and train them until the study has none left for this worker."""
    k = sc.heads_per_pass or CLAIM
    while trials := study.claim(k):
        todo = [t for t in trials if read_trial(sc.out, t.user_attrs["key"]) is None]
        with study.beating(trials):
            states = train_configs(sc, store, [t.params for t in todo], trials=todo, prune=bool(sc.samples),
                                   bar=bar) if todo else {}
        # skip_if_finished: a trial taken back from this worker while it was alive (its heartbeats did not reach
        # the database in time) is queued again; whoever claims that copy finds this result and records it
        tell = lambda t, *a, **kw: study.study.tell(t, *a, skip_if_finished=True, **kw)  # noqa: E731
        for t in trials:
            key = t.user_attrs["key"]
            if states.get(key) == "pruned":
                tell(t, state=study.trial_state.PRUNED)
                continue
            if states.get(key) == "diverged":  # listed in the table, never picked
                t.set_user_attr("diverged", True)
                tell(t, state=study.trial_state.FAIL)
                continue
            rec = read_trial(sc.out, key)  # trained now, or before a crash that came between writing and telling
            t.set_user_attr("seeds", {s: {"dev": r["metrics"][dev_of(sc)][rec["primary_metric"]],
                                          "best_epoch": r["best_epoch"]} for s, r in rec["seeds"].items()})
            value = rec["dev"]["mean"]
            if value is None or not math.isfinite(value):
                tell(t, state=study.trial_state.FAIL)
            else:
                tell(t, value)


def dev_of(sc: SweepConfig) -> str:
    cfg = sc.train_config()
    return cfg.dev_split or cfg.train_split


def wait_for_others(study: Study) -> bool:
    """Wait while other workers train; True when the study is done, False when there is work for this one
    (configs requeued from a worker that died)."""
    while True:
        with study.locked():
            study.requeue_stale()
        c = study.counts()
        if c["waiting"] or (study.samples and study.made() < study.samples):
            return False
        if not c["running"]:
            return True
        time.sleep(POLL_SECONDS)


def start_workers(sc: SweepConfig) -> list[subprocess.Popen]:
    """`sc.workers - 1` more processes (this one is a worker too), each on its share of the cores (its own
    GPU when there are several); they take configs from the study as this one does."""
    n = sc.workers
    threads = sc.fixed.get("threads") or max(1, (os.cpu_count() or 1) // n)
    # each process holds its own copy of the features it keeps in RAM: they share the budget
    budget = sc.fixed.get("max_memory")
    share = (budget if budget is not None else default_max_memory()) // n
    child = SweepConfig(**{**sc.to_json(secrets=True), "workers": 1, "progress": False})
    child.fixed = {**child.fixed, "threads": threads, "max_memory": share}
    gpus = _gpu_count(sc.fixed.get("device", "auto"))
    procs = []
    for i in range(1, n):
        env = dict(os.environ)
        if gpus > 1:
            env["CUDA_VISIBLE_DEVICES"] = str(i % gpus)
        p = subprocess.Popen([sys.executable, "-m", "heads.sweep"], stdin=subprocess.PIPE, env=env)
        p.stdin.write(json.dumps(child.to_json(secrets=True)).encode())
        p.stdin.close()
        procs.append(p)
    sc.fixed = {**sc.fixed, "threads": threads, "max_memory": share}  # this process's share
    torch.set_num_threads(threads)
    if gpus > 1:
        torch.cuda.set_device(0)
    return procs


def _gpu_count(device: str) -> int:
    if device not in ("auto", "cuda"):
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def worker_main(payload: str) -> None:
    """A worker process of `--workers N`: claims and trains configs until none are left."""
    sc = SweepConfig(**json.loads(payload))
    space = sc.check()
    store, study = open_study(sc, space)
    try:
        with torch_threads(sc.fixed.get("threads")):
            work(sc, store, study, _bar(sc, 0))
    finally:
        store.close()


def finish(sc: SweepConfig, store: Store, study: Study, space: Space, seconds: float) -> SweepResult:
    """The table; the picked config's head directory (written once, by the first worker to get here)."""
    cfg = sc.train_config()
    primary = resolve_task(store, cfg.task, cfg.label_column).primary
    higher = higher_is_better(primary)
    order = {config_key(p): i for i, p in enumerate(space.configs())}
    rows = []
    for t in sorted(study.finished(), key=lambda t: (order.get(t.user_attrs["key"], len(order)), t.number)):
        seeds = t.user_attrs.get("seeds") or {}
        dev = mean_std([v["dev"] for v in seeds.values()]) if seeds else {"mean": float("nan"), "std": 0.0, "n": 0}
        state = "diverged" if t.user_attrs.get("diverged") else t.state.name.lower()
        rows.append(Row(key=t.user_attrs["key"], params=dict(t.params), state=state, dev=dev,
                        best_epochs=[v["best_epoch"] for v in seeds.values()]))

    def rank(r: Row) -> tuple:
        m = r.dev["mean"]
        bad = r.state != "complete" or m is None or not math.isfinite(m)
        return (bad, 0.0 if bad else (-m if higher else m))

    rows.sort(key=rank)  # stable: ties keep grid order
    if not rows or rank(rows[0])[0]:
        raise InputError(f"no config of the sweep in {sc.out} finished with a dev score; see the trial logs in "
                         f"{os.path.join(sc.out, 'trials')}")
    picked = rows[0]
    test = write_best(sc, store, picked)
    result = SweepResult(out=sc.out, primary_metric=primary, higher_is_better=higher, dev_split=dev_of(sc),
                         swept=space.names, seeds=sc.seeds, rows=rows, picked=picked.params, best=sc.best, test=test,
                         seconds=seconds)
    _write_json(os.path.join(sc.out, "sweep.json"), result.to_json())
    return result


def write_best(sc: SweepConfig, store: Store, row: Row) -> dict[str, dict[str, float]] | None:
    """The picked config's heads as an ordinary head directory, scored on test once (the only config that is).
    From the trial's saved models; trained here when another machine trained it."""
    from safetensors.torch import load_file

    cfg = config_of({**sc.fixed, "out": sc.best, "overwrite": True, "progress": False}, row.params)
    mark = os.path.join(sc.best, "sweep_pick.json")
    if os.path.isfile(mark) and os.path.isfile(os.path.join(sc.best, "head.json")):
        with open(mark) as f:
            if json.load(f).get("key") == row.key:
                with open(os.path.join(sc.best, "metrics.json")) as m:
                    return json.load(m)["summary"].get(cfg.test_split) if cfg.test_split else None
    rec = read_trial(sc.out, row.key)
    if rec is None:
        train_configs(sc, store, [row.params])
        rec = read_trial(sc.out, row.key)
    plan = plan_run(cfg, store)
    results, states, tops = [], {}, {}
    for seed in sc.seeds:
        loaders = plan.loaders(seed)
        m = build_member(plan, seed, loaders, [])
        state = load_file(os.path.join(trial_dir(sc.out, row.key), str(seed), MODEL))
        m.model.load_state_dict(state if plan.top is not None else {k[5:]: v for k, v in state.items()})
        saved = rec["seeds"][str(seed)]
        m.best_epoch, m.epoch, m.seconds = saved["best_epoch"], saved["epochs_run"], [saved["seconds_per_epoch"]]
        results += score_members([m], plan.names, cfg.dev_split or cfg.train_split, loaders, plan.gold)
        states[seed], tops[seed] = split_state(plan, m.model)
    r = save_result(plan, store, results, states, tops, rec["log"], count_trainable(m.model))
    _write_json(mark, {"key": row.key, "params": row.params})
    return r.summary.get(cfg.test_split) if cfg.test_split else None
