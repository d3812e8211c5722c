"""Trial bookkeeping on Optuna's relational storage: which configs exist, which a worker has claimed, which
are done. Optuna also samples (`--samples`: TPE) and prunes. A SQLite file is the default (one machine, any
number of workers); a database URL lets workers on many machines take trials from one study.

SQLite has no row locks (`SELECT ... FOR UPDATE`), so on it every claim runs under an exclusive lock on a file
beside the database: two workers never take the same trial. A trial left running by a worker that died is put
back in the queue: at once by a worker on the same host (the dead pid is seen), and by any worker once the dead
one's Optuna heartbeat is older than the grace period (a machine that died, or a worker killed elsewhere).
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import threading
import time
import warnings
from typing import Any, Iterator

from ..errors import InputError
from .space import Space, config_key

STUDY = "heads-sweep"
HEARTBEAT_SECONDS = 60  # how often a worker marks the trials it holds alive (--heartbeat)
GRACE_BEATS = 3  # a trial whose worker missed this many heartbeats is taken back


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise InputError("heads sweep needs Optuna: pip install -e '.[sweep]' (or pip install optuna)")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # heartbeats (RDBStorage's, fail_stale_trials) are marked experimental; users need not be told at every run
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def sqlite_path(url: str) -> str | None:
    return url[len("sqlite:///"):] if url.startswith("sqlite:///") else None


def _start_time(pid: int) -> str | None:
    """When process `pid` started (Linux), so a reused pid is not taken for a live worker."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def me() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": _start_time(os.getpid())}


def _alive(worker: dict[str, Any]) -> bool:
    """False only for a worker of this host that is certainly gone; workers of other hosts are trusted."""
    if worker.get("host") != socket.gethostname():
        return True
    pid = worker.get("pid")
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return worker.get("start") is None or _start_time(pid) == worker.get("start")


class Study:
    """One sweep's study. `settings` fingerprints what was swept over what: another sweep is refused."""

    def __init__(self, url: str, settings: str, direction: str, space: Space, samples: int | None,
                 seed: int = 0, heartbeat: int = HEARTBEAT_SECONDS):
        optuna = _optuna()
        self.trial_state = optuna.trial.TrialState
        self.url, self.space, self.samples, self.heartbeat = url, space, samples, heartbeat
        path = sqlite_path(url)
        self.lock_path = path + ".lock" if path else None
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        sampler = optuna.samplers.TPESampler(seed=seed) if samples else None
        pruner = optuna.pruners.MedianPruner(n_warmup_steps=1) if samples else optuna.pruners.NopPruner()
        with self.locked():  # on SQLite, also the schema: two workers starting together must not both make it
            try:
                storage = optuna.storages.RDBStorage(
                    url, engine_kwargs={"connect_args": {"timeout": 60}} if path else {},
                    heartbeat_interval=heartbeat, grace_period=GRACE_BEATS * heartbeat,
                    heartbeat_stale_trial_callback=lambda study, trial: self._requeue(trial))
            except Exception as e:  # noqa: BLE001 - a bad URL or an unreachable server: one line
                raise InputError(f"--storage {url}: cannot open ({type(e).__name__}: {str(e)[:160]})")
            try:
                self.study = optuna.create_study(study_name=STUDY, storage=storage, direction=direction,
                                                 sampler=sampler, pruner=pruner)
                self.study.set_user_attr("settings", settings)
                self._enqueue_grid()
            except optuna.exceptions.DuplicatedStudyError:
                self.study = optuna.load_study(study_name=STUDY, storage=storage, sampler=sampler, pruner=pruner)
                self._wait_for("settings")
                if self.study.user_attrs["settings"] != settings:
                    raise InputError(f"the sweep study at {url} was started with other settings (store, options, "
                                     "grid, ranges or seeds); use another --out (or --storage), or the same command")
                if not self.samples:
                    self._wait_for("enqueued")

    def _wait_for(self, attr: str, seconds: float = 120) -> None:
        """Another worker is creating the study right now (a database server: no file lock)."""
        end = time.monotonic() + seconds
        while attr not in self.study.user_attrs:
            if self.lock_path or time.monotonic() > end:
                if attr == "enqueued":  # its creator died before queueing the grid: queue it here
                    self._enqueue_grid()
                    return
                raise InputError(f"the study at {self.url} has no {attr!r}: it was not made by heads sweep, or its "
                                 "maker died while creating it; remove it (or use another --out/--storage)")
            time.sleep(1)

    def _enqueue_grid(self) -> None:
        if self.samples:
            return
        have = {t.user_attrs.get("key") for t in self.study.get_trials(deepcopy=False)}
        for params in self.space.configs():
            key = config_key(params)
            if key not in have:
                self.study.enqueue_trial(params, user_attrs={"key": key})
        self.study.set_user_attr("enqueued", True)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        if self.lock_path is None:
            yield
            return
        with open(self.lock_path, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def distributions(self) -> dict[str, Any]:
        optuna = _optuna()
        d: dict[str, Any] = {k: optuna.distributions.CategoricalDistribution(v) for k, v in self.space.grid.items()}
        for k, r in self.space.ranges.items():
            cls = optuna.distributions.IntDistribution if r.kind is int else optuna.distributions.FloatDistribution
            d[k] = cls(r.kind(r.low), r.kind(r.high), log=r.log)
        return d

    def claim(self, k: int) -> list[Any]:
        """Up to `k` trials for this worker (fewer, or none, when the sweep has no more)."""
        optuna = _optuna()
        TS = optuna.trial.TrialState
        out = []
        with self.locked():
            self.requeue_stale()
            for _ in range(k):
                if self.samples:
                    if self.made() >= self.samples and not self.counts()["waiting"]:
                        break
                elif not self.study.get_trials(deepcopy=False, states=(TS.WAITING,)):
                    break
                with warnings.catch_warnings():  # heartbeats are meant for study.optimize; here they beat by hand
                    warnings.filterwarnings("ignore", message="Heartbeat of storage")
                    trial = self.study.ask(self.distributions())
                self.study._storage.record_heartbeat(trial._trial_id)  # from the claim on: a silent one is stale
                if "key" not in trial.user_attrs:
                    trial.set_user_attr("key", config_key(trial.params))
                trial.set_user_attr("worker", me())
                out.append(trial)
        return out

    @contextlib.contextmanager
    def beating(self, trials: list[Any]) -> Iterator[None]:
        """Record the heartbeat of `trials` every `heartbeat` seconds while they train, so that workers on other
        machines can tell this one is alive."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.heartbeat):
                for t in trials:
                    try:
                        self.study._storage.record_heartbeat(t._trial_id)
                    except Exception:  # noqa: BLE001 - a busy or briefly unreachable database: beat again later
                        pass

        thread = threading.Thread(target=beat, name="heads-sweep-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def requeue_stale(self) -> int:
        """Put trials of dead workers back in the queue: this host's at once, any host's once their heartbeat is
        stale; how many."""
        optuna = _optuna()
        TS = optuna.trial.TrialState
        n = 0
        for t in self.study.get_trials(deepcopy=False, states=(TS.RUNNING,)):
            worker = t.user_attrs.get("worker")
            # no worker recorded under the claim lock we hold: its claimer was killed between asking and recording
            dead = self.lock_path is not None if worker is None else not _alive(worker)
            if dead and self._fail(t):
                self._requeue(t)
                n += 1
        before = len(self.study.get_trials(deepcopy=False, states=(TS.WAITING,)))
        optuna.storages.fail_stale_trials(self.study)  # fails them and calls _requeue for each
        return n + len(self.study.get_trials(deepcopy=False, states=(TS.WAITING,))) - before

    def _fail(self, trial: Any) -> bool:
        """Mark a running trial failed; False when it finished (or another worker took it back) meanwhile."""
        optuna = _optuna()
        try:
            return self.study._storage.set_trial_state_values(trial._trial_id, state=optuna.trial.TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            return False

    def _requeue(self, trial: Any) -> None:
        self.study.enqueue_trial(trial.params, user_attrs={"key": trial.user_attrs.get("key"),
                                                           "requeued_from": trial.number})

    def made(self) -> int:
        """Configs of a sampled sweep so far: claimed, queued or finished (a trial put back in the queue counts
        once)."""
        c = self.counts()
        return c["waiting"] + c["running"] + c["complete"] + c["pruned"] + c["diverged"]

    def counts(self) -> dict[str, int]:
        states = ["diverged" if t.user_attrs.get("diverged") else t.state.name.lower()
                  for t in self.study.get_trials(deepcopy=False)]
        return {s: states.count(s) for s in ("waiting", "running", "complete", "pruned", "diverged", "fail")}

    def finished(self) -> list[Any]:
        """Finished trials (complete, pruned or diverged), one per config (the first to finish)."""
        TS = _optuna().trial.TrialState
        seen: dict[str, Any] = {}
        for t in self.study.get_trials(deepcopy=True, states=(TS.COMPLETE, TS.PRUNED, TS.FAIL)):
            if t.state != TS.FAIL or t.user_attrs.get("diverged"):
                seen.setdefault(t.user_attrs["key"], t)
        return list(seen.values())
