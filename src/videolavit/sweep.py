"""Optuna studies over a stage's hyperparameters, one MLflow run per trial.

``videolavit sweep motion_tokenizer trials=8 mode=single`` minimizes ``val/epe`` with pruning at each validation;
``mode=multi`` minimizes (``val/epe``, ``tokens_per_clip``) and draws the Pareto front. The search space, objectives and
the per-trial step budget come from ``conf/sweep/<stage>.yaml``. Storage is a SQLite file by default
(``storage=sqlite:///optuna.db``); pass any Optuna storage URL (an RDB, or ``journal:PATH`` for a shared file) so that
several processes or machines work on one study: each runs ``videolavit sweep ... study=NAME storage=URL``.

Workers of one study draw differently: each seeds its sampler with ``seed + 1000003 × worker + 7919 × trials`` (the
trials already in the study when it starts), so worker 0 of a fresh study samples as a single process always did, a
second worker or a rerun of the same study never repeats it, and a given (seed, worker, start) reproduces. ``worker``
is the ``worker=i`` option, else ``SLURM_ARRAY_TASK_ID`` / ``SLURM_PROCID``, else the lowest index free among the
workers running in ``<out>/<study>/workers/`` (one file per live worker, on one machine or a shared filesystem).
A pruned trial's MLflow run ends KILLED (stopped before its budget, on purpose; FINISHED would let readers of
finished runs take a half-trained trial for a trained one, FAILED would say it broke) with ``optuna.state=PRUNED``;
every trial run carries ``optuna.state`` (COMPLETE, PRUNED, FAIL).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import os
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig

from videolavit import tracking
from videolavit.config import apply_overrides, parse_overrides
from videolavit.errors import ConfigError
from videolavit.runner import run_stage
from videolavit.sweep_spec import load_sweep_spec

SWEEP_OPTIONS = {
    "trials": 8,
    "mode": "single",  # single | multi
    "storage": "sqlite:///optuna.db",
    "study": None,  # default: <stage>-<mode>
    "pruning": True,
    "out": "sweeps",
    "worker": None,  # this process's index among the study's workers (seeds its sampler); None: launcher or claimed
}
WORKER_ENV = ("SLURM_ARRAY_TASK_ID", "SLURM_PROCID")


def _sample(trial, space: dict) -> dict[str, Any]:
    """Config overrides for one trial. Categorical choices may be lists (e.g. a down-sampling grid), chosen by name."""
    values: dict[str, Any] = {}
    for key, dist in space.items():
        kind = dist["type"]
        if kind == "categorical":
            choices = dist["choices"]
            if isinstance(choices, dict):  # named structured choices: the trial records the name
                name = trial.suggest_categorical(key, list(choices))
                if dist.get("expand"):  # the choice is itself a set of config overrides
                    values.update(choices[name])
                else:
                    values[key] = choices[name]
            else:
                values[key] = trial.suggest_categorical(key, choices)
        elif kind == "int":
            values[key] = trial.suggest_int(key, dist["low"], dist["high"], log=dist.get("log", False))
        elif kind == "float":
            values[key] = trial.suggest_float(key, dist["low"], dist["high"], log=dist.get("log", False))
        else:
            raise ConfigError(f"sweep space '{key}': unknown type '{kind}' (categorical, int, float)")
    return values


def _overrides(values: dict[str, Any]) -> list[str]:
    return [f"{k}={json.dumps(v)}" for k, v in values.items()]


def run_sweep(stage: str, base_cfg: DictConfig, options: Sequence[str] = ()) -> dict:
    """Run (or join) a study; returns the best parameters (single) or the Pareto front (multi)."""
    import optuna

    opts = {**SWEEP_OPTIONS, **parse_overrides(options)}
    unknown = set(opts) - set(SWEEP_OPTIONS)
    if unknown:
        raise ConfigError(f"unknown sweep option(s) {sorted(unknown)}. Valid: {', '.join(SWEEP_OPTIONS)}")
    if opts["mode"] not in ("single", "multi"):
        raise ConfigError(f"sweep mode must be 'single' or 'multi', got {opts['mode']!r}")
    spec = load_sweep_spec(stage)
    multi = opts["mode"] == "multi"
    objectives = list(spec["objectives"]) if multi else [spec["objective"]]
    study_name = opts["study"] or f"{stage}-{opts['mode']}"
    out = Path(opts["out"]) / study_name
    out.mkdir(parents=True, exist_ok=True)

    pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0) if opts["pruning"] and not multi else None
    with _worker_index(opts["worker"], out / "workers") as worker:
        existing = _trials_so_far(study_name, opts["storage"])
        seed = sampler_seed(int(base_cfg.seed), worker, existing)
        study = optuna.create_study(
            study_name=study_name,
            storage=opts["storage"],
            load_if_exists=True,
            directions=["minimize"] * len(objectives),
            sampler=optuna.samplers.TPESampler(seed=seed) if not multi else optuna.samplers.NSGAIISampler(seed=seed),
            pruner=pruner,
        )
        return _optimize(study, stage, base_cfg, opts, spec, objectives, multi, out, pruner,
                         {"optuna.worker": worker, "optuna.sampler_seed": seed})


def _optimize(study, stage, base_cfg, opts, spec, objectives, multi, out, pruner, worker_tags) -> dict:
    import optuna

    from videolavit.training.callbacks import PruningCallback

    study_name = study.study_name
    stage_module = importlib.import_module(f"videolavit.stages.{stage}")
    base_overrides = [f"{k}={json.dumps(v)}" for k, v in (spec.get("fixed") or {}).items()]

    def objective(trial):
        for key, value in worker_tags.items():  # which worker drew it, with which seed (optuna.worker, ...)
            trial.set_user_attr(key, value)
        values = _sample(trial, spec["space"])
        trial_dir = out / f"trial_{trial.number:04d}"
        cfg = _trial_config(base_cfg, base_overrides + _overrides(values), trial_dir, study_name, trial.number)
        callbacks = [] if multi or pruner is None else [PruningCallback(trial, objectives[0])]
        tags = {"optuna.study": study_name, "optuna.trial": trial.number, "optuna.mode": opts["mode"], **worker_tags}
        pruned = None
        with tracking.start_run(cfg, stage, tags=tags, nested=True) as run:  # a child of the study's run
            run.log_params({f"trial.{k}": v for k, v in values.items()})
            try:
                metrics = run_stage(cfg, stage, lambda: stage_module.fit(cfg, callbacks=callbacks))
                results = _objective_values(trial.number, metrics, objectives)
            except optuna.TrialPruned as exc:  # the run ends normally, then KILLED below; the study gets it as PRUNED
                pruned = exc
            except BaseException:
                _tag_state(run, "FAIL")
                raise
            _tag_state(run, "PRUNED" if pruned else "COMPLETE")
        if pruned is not None:
            if run.enabled:
                from mlflow.entities import RunStatus

                run.client().set_terminated(run.run_id, RunStatus.to_string(RunStatus.KILLED))
            raise pruned
        return results if multi else results[0]

    parent_cfg = apply_overrides(base_cfg, [f"tracking.run_name={study_name}"], "sweep")
    parent_tags = {"optuna.study": study_name, "optuna.mode": opts["mode"], "videolavit.sweep_of": stage}
    with tracking.start_run(parent_cfg, "sweep", tags=parent_tags) as parent:  # one parent run, trials nested
        study.optimize(objective, n_trials=int(opts["trials"]), catch=(RuntimeError,))
        summary = _summarize(study, spec, objectives, multi, out)
        best = summary.get("best") or {}
        parent.log_metrics({k: v for k, v in best.items() if k in objectives})
        parent.log_artifact(out / "best.yaml", "sweep")
    return summary


def _objective_values(number: int, metrics: dict, objectives: list[str]) -> list[float]:
    results = []
    for name in objectives:
        if name not in metrics or metrics[name] is None or not math.isfinite(float(metrics[name])):
            raise RuntimeError(f"trial {number}: the stage returned no finite '{name}'")
        results.append(float(metrics[name]))
    return results


def _tag_state(run, state: str) -> None:
    if run.enabled:
        run.client().set_tag(run.run_id, "optuna.state", state)


def sampler_seed(seed: int, worker: int, existing_trials: int) -> int:
    """The sampler seed of one worker joining a study that already holds ``existing_trials`` trials."""
    return (seed + 1_000_003 * worker + 7919 * existing_trials) % 2**32


def _trials_so_far(study_name: str, storage: str) -> int:
    import optuna

    try:
        return len(optuna.load_study(study_name=study_name, storage=storage).trials)
    except KeyError:  # a new study
        return 0


@contextlib.contextmanager
def _worker_index(given: int | None, folder: Path) -> Iterator[int]:
    """This worker's index: ``given``, else the launcher's task id, else the lowest one no live worker holds in
    ``folder`` (a file per worker: host and PID; a dead one's file on this host is taken over). Released at exit."""
    launcher = [int(os.environ[k]) for k in WORKER_ENV if os.environ.get(k, "").isdigit()]
    if given is not None or launcher:
        value = given if given is not None else launcher[0]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"sweep option worker must be an integer >= 0, got {value!r}")
        yield value
        return
    folder.mkdir(parents=True, exist_ok=True)
    index = 0
    while True:
        path = folder / f"{index}.worker"
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            if _holder_is_dead(path):
                path.unlink(missing_ok=True)
                continue  # retry the same index (another worker may win it: then the next one)
            index += 1
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{socket.gethostname()} {os.getpid()}\n")
        break
    try:
        yield index
    finally:
        path.unlink(missing_ok=True)


def _holder_is_dead(path: Path) -> bool:
    try:
        host, pid = path.read_text().split()
    except (OSError, ValueError):
        return False  # being written, or not ours to judge
    if host != socket.gethostname():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def best_overrides(spec: dict, params: dict) -> dict[str, Any]:
    """A trial's Optuna params (grid names included) → the config overrides it ran with (the sweep's fixed budget
    left out), as ``videolavit <stage> --overrides best.yaml`` applies them."""
    import optuna

    return _sample(optuna.trial.FixedTrial(params), spec["space"])


def _trial_config(base_cfg: DictConfig, overrides: list[str], trial_dir: Path, study: str, number: int) -> DictConfig:
    """The base config with the trial's values; models, checkpoints and metrics go to the trial's own directory."""
    paths = [f"paths.models={trial_dir / 'models'}", f"paths.runs={trial_dir / 'runs'}", f"paths.metrics={trial_dir / 'metrics'}"]
    return apply_overrides(base_cfg, [*overrides, *paths, f"tracking.run_name={study}-trial{number}"], "sweep trial")


def _summarize(study, spec: dict, objectives: list[str], multi: bool, out: Path) -> dict:
    import optuna

    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    summary: dict[str, Any] = {
        "study": study.study_name,
        "objectives": objectives,
        "trials": len(study.trials),
        "complete": len(done),
        "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials),
    }
    if not done:
        summary["best"] = None
    elif multi:
        front = study.best_trials
        summary["pareto_front"] = [{"trial": t.number, "values": dict(zip(objectives, t.values)), "params": t.params} for t in front]
        from videolavit.report.pareto import pareto_plot

        summary["pareto_plot"] = str(pareto_plot(done, front, objectives, out / "pareto.png"))
    else:
        best = study.best_trial
        summary["best"] = {"trial": best.number, objectives[0]: best.value, "params": best.params}
        summary["overrides"] = best_overrides(spec, best.params)
    best_path = out / "best.yaml"
    best_path.write_text(yaml.safe_dump(summary, sort_keys=False))
    summary["best_file"] = str(best_path)
    return summary
