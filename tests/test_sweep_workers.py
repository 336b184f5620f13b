"""Sweep workers of one study draw differently, reproducibly; pruned trials are not FAILED runs (issue 15 item 6).

Before: every worker seeded its sampler with ``seed`` alone, so two workers on one storage (or a rerun of a study)
drew the same trials in pairs, and a pruned trial's MLflow run ended FAILED.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import optuna
import pytest

from videolavit import sweep
from videolavit.stages import motion_tokenizer

# one float: two samplers with different seeds cannot draw the same value; equal seeds draw it bit for bit
LAUNCHER_ENV = ("SLURM_ARRAY_TASK_ID", "SLURM_PROCID")  # would give the workers their index
SPEC = {"objective": "val/epe", "objectives": ["val/epe"], "fixed": {},
        "space": {"motion_tokenizer.optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}}


def _fake_fit(seen, prune=()):
    def fit(cfg, callbacks=None):
        seen.append(float(cfg.motion_tokenizer.optim.lr))
        if len(seen) - 1 in prune:
            raise optuna.TrialPruned("pruned by the test")
        return {"val/epe": float(cfg.motion_tokenizer.optim.lr), "tokens_per_clip": 8.0}

    return fit


@pytest.fixture
def fake_stage(monkeypatch, tmp_path):
    (tmp_path / "clips").mkdir()  # the stage's input check (the fake fit reads nothing)
    seen: list[float] = []
    monkeypatch.setattr(sweep, "load_sweep_spec", lambda stage: SPEC)
    monkeypatch.setattr(motion_tokenizer, "fit", _fake_fit(seen))
    for key in LAUNCHER_ENV:
        monkeypatch.delenv(key, raising=False)
    return seen


def _sweep(cfg, tmp_path, *options, storage="optuna.db"):
    return sweep.run_sweep("motion_tokenizer", cfg, ["study=s", f"storage=sqlite:///{tmp_path / storage}",
                                                     f"out={tmp_path / 'sweeps'}", "pruning=false", *options])


WORKER = textwrap.dedent("""
    import json, pathlib, sys, time
    from videolavit import sweep
    from videolavit.config import load_config
    from videolavit.stages import motion_tokenizer
    tmp, me, other = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    (tmp / "clips").mkdir(exist_ok=True)
    sweep.load_sweep_spec = lambda stage: json.loads(sys.argv[4])

    def fit(cfg, callbacks=None):  # hold the first trial until the other worker is in its own: truly concurrent
        (tmp / f"{me}.lr").write_text(repr(float(cfg.motion_tokenizer.optim.lr)))
        deadline = time.time() + 240
        while not (tmp / f"{other}.lr").exists() and time.time() < deadline:
            time.sleep(0.05)
        return {"val/epe": 1.0}

    motion_tokenizer.fit = fit
    paths = [f"paths.{k}={tmp / k}" for k in ("corpus", "clips", "tokens", "models", "metrics", "reports", "runs")]
    cfg = load_config(overrides=[*paths, "tracking.enabled=false"], params_file=None)
    sweep.run_sweep("motion_tokenizer", cfg, ["trials=1", "study=s", f"storage=sqlite:///{tmp}/optuna.db",
                                              f"out={tmp}/sweeps", "pruning=false"])
""")


@pytest.mark.slow
def test_two_worker_processes_on_one_storage_draw_distinct_first_params(tmp_path):
    optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path}/optuna.db")  # both workers join it
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_ENV}
    env["OMP_NUM_THREADS"] = "1"
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path), me, other, json.dumps(SPEC)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for me, other in (("a", "b"), ("b", "a"))]
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out
    first = {me: (tmp_path / f"{me}.lr").read_text() for me in "ab"}
    assert first["a"] != first["b"], first
    trials = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path}/optuna.db").trials
    assert sorted(t.user_attrs["optuna.worker"] for t in trials) == [0, 1]  # each claimed its own index
    assert not list((tmp_path / "sweeps" / "s" / "workers").iterdir())  # and gave it back


def test_a_worker_joining_while_another_runs_draws_other_params(tiny_cfg_factory, tmp_path, fake_stage, monkeypatch):
    """Worker B starts inside worker A's first trial (A holds worker index 0 and its trial is RUNNING)."""
    cfg = tiny_cfg_factory("tracking.enabled=false")
    first: dict[str, float] = {}

    def fit(trial_cfg, callbacks=None):
        lr = float(trial_cfg.motion_tokenizer.optim.lr)
        if not first:
            first["a"] = lr
            _sweep(cfg, tmp_path, "trials=1")  # worker B, same storage and study, same options
        else:
            first.setdefault("b", lr)
        return {"val/epe": lr}

    monkeypatch.setattr(motion_tokenizer, "fit", fit)
    _sweep(cfg, tmp_path, "trials=1")
    assert first["a"] != first["b"], first
    trials = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path}/optuna.db").trials
    assert sorted(t.user_attrs["optuna.worker"] for t in trials) == [0, 1]


def test_a_rerun_of_a_study_does_not_repeat_its_trials(tiny_cfg_factory, tmp_path, fake_stage):
    cfg = tiny_cfg_factory("tracking.enabled=false")
    _sweep(cfg, tmp_path, "trials=3")
    _sweep(cfg, tmp_path, "trials=3")
    assert len(set(fake_stage)) == 6, fake_stage


def test_worker_zero_of_a_fresh_study_samples_as_before_and_a_worker_reproduces(tiny_cfg_factory, tmp_path, fake_stage):
    cfg = tiny_cfg_factory("tracking.enabled=false")
    _sweep(cfg, tmp_path, "trials=2", storage="a.db")
    plain = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=int(cfg.seed)))
    plain.optimize(lambda t: t.suggest_float("motion_tokenizer.optim.lr", 1e-4, 1e-2, log=True), n_trials=2)
    assert fake_stage == [t.params["motion_tokenizer.optim.lr"] for t in plain.trials]
    _sweep(cfg, tmp_path, "trials=2", "worker=3", storage="b.db")
    _sweep(cfg, tmp_path, "trials=2", "worker=3", storage="c.db")
    assert fake_stage[2:4] == fake_stage[4:6] and fake_stage[2:4] != fake_stage[:2]


def test_a_live_workers_index_is_skipped_and_a_dead_ones_taken_over(tiny_cfg_factory, tmp_path, fake_stage):
    cfg = tiny_cfg_factory("tracking.enabled=false")
    workers = tmp_path / "sweeps" / "s" / "workers"
    workers.mkdir(parents=True)
    (workers / "0.worker").write_text(f"{socket.gethostname()} {os.getpid()}\n")  # alive: this test's process
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)  # its PID, now free
    (workers / "1.worker").write_text(f"{socket.gethostname()} {int(dead.stdout)}\n")
    _sweep(cfg, tmp_path, "trials=1")
    trial = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path}/optuna.db").trials[0]
    assert trial.user_attrs["optuna.worker"] == 1
    assert trial.user_attrs["optuna.sampler_seed"] == sweep.sampler_seed(int(cfg.seed), 1, 0)
    assert sorted(p.name for p in workers.iterdir()) == ["0.worker"]


def test_bad_worker_option_is_a_config_error(tiny_cfg_factory, tmp_path, fake_stage):
    with pytest.raises(sweep.ConfigError, match="worker"):
        _sweep(tiny_cfg_factory("tracking.enabled=false"), tmp_path, "trials=1", "worker=-2")


def test_a_pruned_trial_run_ends_killed_tagged_pruned_not_failed(tiny_cfg_factory, tmp_path, monkeypatch, fake_stage):
    import mlflow

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    seen: list[float] = []
    monkeypatch.setattr(motion_tokenizer, "fit", _fake_fit(seen, prune={1}))
    summary = _sweep(tiny_cfg_factory("tracking.experiment=pruned"), tmp_path, "trials=2")
    assert summary["pruned"] == 1 and summary["complete"] == 1
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("pruned").experiment_id])
    trials = {int(r.data.tags["optuna.trial"]): r for r in runs if "optuna.trial" in r.data.tags}
    assert (trials[0].info.status, trials[0].data.tags["optuna.state"]) == ("FINISHED", "COMPLETE")
    assert (trials[1].info.status, trials[1].data.tags["optuna.state"]) == ("KILLED", "PRUNED")
