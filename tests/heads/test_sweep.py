"""`heads sweep`: a sweep equals separate `heads train` runs (weights and metrics), only the picked config is
scored on test, bad grids are one line, a killed sweep resumes to the same table, and workers sharing one
SQLite study never train a config twice."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from cli.heads_cli import main
from heads import TrainConfig, evaluate, train
from heads.errors import InputError
from heads.sweep import SweepConfig, sweep
from heads.sweep.run import MODEL, read_trial, trial_dir
from heads.sweep.space import config_key
from tests.cli.test_heads_cli import assert_user_error

from .synthetic import classification_store

pytest.importorskip("optuna")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# small heads with dropout (each head's random stream must be its own) and early stopping
HEAD = dict(d_head=16, n_layers=1, n_heads=2, dropout=0.2, epochs=4, patience=2)
GRID = ["d_head=16", "n_layers=1", "n_heads=2", "dropout=0.2", "epochs=4", "patience=2"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    d = tmp_path_factory.mktemp("sweep")
    return classification_store(str(d / "store"), n_train=120, n_dev=40, n_test=40, signal=4.0, layers=(0, 1, 2),
                                signal_layer=1)


def test_sweep_equals_separate_runs(store, tmp_path):
    lrs = [1e-3, 3e-3, 1e-2]
    fixed = dict(head="ytuning", store=store, label_column="label", seeds=[0, 1])
    r = sweep(SweepConfig(fixed=fixed, grid=["lr=" + ",".join(map(str, lrs)), *GRID], out=str(tmp_path / "sw"),
                          progress=False))
    assert [row.state for row in r.rows] == ["complete"] * 3
    devs = [row.dev["mean"] for row in r.rows]
    assert devs == sorted(devs, reverse=True)  # sorted by dev, best first
    for lr in lrs:
        run = str(tmp_path / f"lr{lr}")
        sep = train(TrainConfig("ytuning", store=store, label_column="label", out=run, seeds=[0, 1], lr=lr,
                                progress=False, **HEAD))
        params = {"lr": lr, **{k: v for k, v in HEAD.items()}}
        key = config_key(params)
        rec = read_trial(r.out, key)
        assert "test" not in json.dumps(rec["seeds"])  # only the picked config is ever scored on test
        for s in sep.seeds:
            trained = load_file(os.path.join(trial_dir(r.out, key), str(s.seed), MODEL))
            alone = load_file(os.path.join(run, "seeds", str(s.seed), "head.safetensors"))
            for k, v in alone.items():
                torch.testing.assert_close(trained["head." + k], v, rtol=1e-5, atol=1e-6)
            got = rec["seeds"][str(s.seed)]
            assert got["best_epoch"] == s.best_epoch and got["epochs_run"] == s.epochs_run
            for split in ("train", "validation"):
                assert got["metrics"][split] == pytest.approx(s.metrics[split], abs=1e-6)
        if params == r.picked:  # the picked config's head directory is the separate run's, test included
            with open(os.path.join(r.best, "metrics.json")) as f, open(os.path.join(run, "metrics.json")) as g:
                mb, ms = json.load(f), json.load(g)
            for m, v in ms["summary"]["test"].items():
                assert mb["summary"]["test"][m] == pytest.approx(v) and r.test[m] == pytest.approx(v)
            for s in ("0", "1"):
                torch.testing.assert_close(load_file(os.path.join(r.best, "seeds", s, "head.safetensors")),
                                           load_file(os.path.join(run, "seeds", s, "head.safetensors")))
    ev = evaluate(r.best, store, "test")  # an ordinary head directory
    assert ev.metrics["accuracy"] == pytest.approx(
        json.load(open(os.path.join(r.best, "metrics.json")))["seeds"][str(ev.seed)]["test"]["accuracy"])


def test_configs_reading_other_features_and_samples(store, tmp_path):
    """layers=all and layers=-1 read different features (two groups); --samples draws from ranges."""
    fixed = dict(head="ytuning", store=store, label_column="label", seeds=[0])
    r = sweep(SweepConfig(fixed=fixed, grid=["layers=all|-2,-1", *GRID[:-2], "epochs=2"], ranges=["lr=1e-3:1e-2:log"],
                          samples=3, out=str(tmp_path / "s"), progress=False))
    assert len(r.rows) == 3 and all(1e-3 <= row.params["lr"] <= 1e-2 for row in r.rows)
    assert {row.params["layers"] for row in r.rows} <= {"all", "-2,-1"}
    assert os.path.isfile(os.path.join(r.best, "head.json"))


def test_a_diverged_config_is_listed_not_picked(store, tmp_path):
    fixed = dict(head="ytuning", store=store, label_column="label", seeds=[0])
    r = sweep(SweepConfig(fixed=fixed, grid=["lr=1e9,1e-3", *GRID[:-2], "epochs=2"], out=str(tmp_path / "d"),
                          progress=False))
    assert [(row.params["lr"], row.state) for row in r.rows] == [(1e-3, "complete"), (1e9, "diverged")]
    assert r.picked["lr"] == 1e-3
    # a pass whose every head diverges ends early; the sweep reports that no config finished
    with pytest.raises(InputError, match="no config of the sweep"):
        sweep(SweepConfig(fixed=fixed, grid=["lr=1e9,1e10", *GRID[:-2], "epochs=2"], out=str(tmp_path / "all"),
                          progress=False))


def test_streamed_chunks_equal_one_pass_in_ram(store, tmp_path):
    """Streamed from the store, two heads per pass (3 configs: passes of 2 and 1) = all three in one pass in RAM."""
    grid = ["lr=1e-3,3e-3,1e-2", *GRID[:-2], "epochs=2"]
    runs = {}
    for name, max_memory, hpp in (("ram", None, None), ("streamed", 0, 2)):
        fixed = dict(head="ytuning", store=store, label_column="label", seeds=[0], max_memory=max_memory)
        runs[name] = sweep(SweepConfig(fixed=fixed, grid=grid, out=str(tmp_path / name), heads_per_pass=hpp,
                                       progress=False))
    assert [r.dev for r in runs["ram"].rows] == [r.dev for r in runs["streamed"].rows]
    for row in runs["ram"].rows:
        a, b = (load_file(os.path.join(trial_dir(runs[n].out, row.key), "0", MODEL)) for n in ("ram", "streamed"))
        torch.testing.assert_close(a, b)


def invoke(args):
    return CliRunner().invoke(main, args)


@pytest.mark.parametrize("grid, fragments", [
    (["--grid", "foo=1"], ["'foo'", "not an option of heads train"]),
    (["--grid", "lr=abc"], ["lr='abc'", "not a number"]),
    (["--grid", "lr="], ["no values"]),
    (["--grid", "seeds=1,2"], ["--seeds is fixed"]),
    (["--grid", "d_head=0", "--grid", "lr=-1"], ["--d-head 0", "--lr -1.0"]),  # every problem at once
    ([], ["nothing to sweep"]),
    (["--range", "lr=1e-3:1e-2"], ["--range needs --samples"]),
    (["--range", "lr=1e-2:1e-3:log", "--samples", "2"], ["LOW must be below HIGH"]),
])
def test_bad_grid_is_one_line(store, tmp_path, grid, fragments):
    r = invoke(["sweep", "ytuning", "--store", store, "--label-column", "label", "--out", str(tmp_path / "o"),
                "--quiet", *grid])
    assert_user_error(r, *fragments)
    assert not os.path.exists(tmp_path / "o")  # nothing made before the options were checked


def test_help():
    r = invoke(["sweep", "--help"])
    assert r.exit_code == 0 and "--grid" in r.output and "--samples" in r.output and "--workers" in r.output


def _cmd(store, out, *extra):
    return [sys.executable, "-m", "cli.heads_cli", "sweep", "ytuning", "--store", store, "--label-column", "label",
            "--grid", "lr=1e-3,3e-3,1e-2,3e-2", *[a for g in GRID[:-2] for a in ("--grid", g)],
            "--grid", "epochs=2", "--seeds", "0", "--threads", "1", "--quiet", "--json", "--out", out, *extra]


def _env():
    return {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _table(stdout: str) -> list:
    d = json.loads(stdout)
    return [(row["key"], row["dev"], row["best_epochs"]) for row in d["rows"]] + [d["picked"], d["test"]]


def test_killed_sweep_resumes_to_the_same_table(store, tmp_path):
    full = subprocess.run(_cmd(store, str(tmp_path / "full")), env=_env(), cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert full.returncode == 0, full.stderr
    out = str(tmp_path / "killed")
    p = subprocess.Popen(_cmd(store, out, "--heads-per-pass", "1"), env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    trials = os.path.join(out, "trials")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (os.path.isdir(trials) and
                                               [d for d in os.listdir(trials) if "partial" not in d]):
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    done = [d for d in os.listdir(trials) if "partial" not in d]
    assert 1 <= len(done) < 4, done  # killed mid-sweep
    assert not os.path.exists(os.path.join(out, "best"))
    again = subprocess.run(_cmd(store, out), env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert _table(again.stdout) == _table(full.stdout)


@pytest.mark.skipif(shutil.which("unshare") is None or os.geteuid() != 0,
                    reason="runs a worker under another host name with `unshare --uts` (needs root)")
def test_configs_of_a_worker_that_died_on_another_machine_are_taken_back(store, tmp_path):
    """A worker under another host name claims every config and dies: its pid means nothing here, so only its
    stale heartbeat tells; a worker here takes the configs back and finishes the sweep."""
    import optuna

    out = str(tmp_path / "remote")
    cmd = _cmd(store, out, "--heads-per-pass", "4", "--heartbeat", "1")
    cmd[cmd.index("epochs=2")] = "epochs=40"  # long enough to be caught holding its configs
    other = subprocess.Popen(["unshare", "--uts", "sh", "-c", 'hostname other-machine && exec "$@"', "sh", *cmd],
                             env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = f"sqlite:///{out}/sweep.db"
    deadline = time.monotonic() + 120
    held: list = []
    while time.monotonic() < deadline and len(held) < 4:
        time.sleep(0.05)
        try:
            trials = optuna.load_study(study_name="heads-sweep", storage=db).get_trials()
        except Exception:  # noqa: BLE001 - not created yet
            continue
        held = [t for t in trials if t.state == optuna.trial.TrialState.RUNNING
                and t.user_attrs.get("worker", {}).get("host") == "other-machine"]
    os.kill(other.pid, signal.SIGKILL)
    other.wait()
    assert len(held) == 4, "the other machine's worker never held the configs"
    here = subprocess.run(cmd, env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert here.returncode == 0, here.stderr
    trials = optuna.load_study(study_name="heads-sweep", storage=db).get_trials()
    TS = optuna.trial.TrialState
    assert sorted(t.number for t in trials if t.state == TS.FAIL) == sorted(t.number for t in held)
    redone = [t for t in trials if t.state == TS.COMPLETE]
    assert sorted(t.user_attrs["requeued_from"] for t in redone) == sorted(t.number for t in held)
    assert len(json.loads(here.stdout)["rows"]) == 4


def test_two_workers_on_one_study_never_train_a_config_twice(store, tmp_path):
    import optuna

    out = str(tmp_path / "shared")
    os.makedirs(out)
    # two independent commands on one SQLite study, started together (as on two terminals) ...
    procs = [subprocess.Popen(_cmd(store, out, "--heads-per-pass", "1"), env=_env(), cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    res = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e for _, e in res]
    assert _table(res[0][0]) == _table(res[1][0])  # both print the whole table
    # ... and `--workers 2` on a second study
    w = subprocess.run(_cmd(store, str(tmp_path / "w2"), "--workers", "2", "--heads-per-pass", "1"), env=_env(),
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert w.returncode == 0, w.stderr
    assert _table(w.stdout) == _table(res[0][0])
    for d in (out, str(tmp_path / "w2")):
        study = optuna.load_study(study_name="heads-sweep", storage=f"sqlite:///{d}/sweep.db")
        trials = study.get_trials()
        keys = [t.user_attrs["key"] for t in trials]
        assert len(keys) == 4 and len(set(keys)) == 4  # each config claimed once: none trained twice
        assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
        # a trial's worker is recorded when it is claimed, and a config is trained only by its claimer
        assert all(os.path.isfile(os.path.join(d, "trials", k, "result.json")) for k in keys)


def test_a_claim_killed_before_its_worker_is_recorded_is_requeued(tmp_path):
    """kill -9 between Optuna's ask (the trial is RUNNING) and recording the worker, inside the claim lock: the
    next claim puts the trial back in the queue instead of waiting for it forever."""
    from heads.sweep.space import parse_space
    from heads.sweep.study import Study

    space = parse_space(["lr=1e-3,3e-3"], [], None)
    url = f"sqlite:///{tmp_path}/sweep.db"
    study = Study(url, "settings", "maximize", space, None)
    lost = study.study.ask(study.distributions())  # what the killed claimer left: RUNNING, no worker
    assert "worker" not in lost.user_attrs
    again = Study(url, "settings", "maximize", space, None)
    claimed = again.claim(2)
    assert sorted(t.params["lr"] for t in claimed) == [1e-3, 3e-3]  # both configs, the lost one requeued
    assert all(t.user_attrs["worker"]["pid"] == os.getpid() for t in claimed)
