"""Optuna studies over a stage's hyperparameters, one MLflow run per trial.

``videolavit sweep motion_tokenizer trials=8 mode=single`` minimizes ``val/epe`` with pruning at each validation;
``mode=multi`` minimizes (``val/epe``, ``tokens_per_clip``) and draws the Pareto front. The search space, objectives and
the per-trial step budget come from ``conf/sweep/<stage>.yaml``. Storage is a SQLite file by default
(``storage=sqlite:///optuna.db``); pass any Optuna storage URL (an RDB, or ``journal:PATH`` for a shared file) so that
several processes or machines work on one study: each runs ``videolavit sweep ... study=NAME storage=URL``.
"""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path
from typing import Any, Sequence

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
}


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

    from videolavit.training.callbacks import PruningCallback

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
    stage_module = importlib.import_module(f"videolavit.stages.{stage}")
    base_overrides = [f"{k}={json.dumps(v)}" for k, v in (spec.get("fixed") or {}).items()]

    pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0) if opts["pruning"] and not multi else None
    study = optuna.create_study(
        study_name=study_name,
        storage=opts["storage"],
        load_if_exists=True,
        directions=["minimize"] * len(objectives),
        sampler=optuna.samplers.TPESampler(seed=int(base_cfg.seed)) if not multi else optuna.samplers.NSGAIISampler(seed=int(base_cfg.seed)),
        pruner=pruner,
    )

    def objective(trial):
        values = _sample(trial, spec["space"])
        trial_dir = out / f"trial_{trial.number:04d}"
        cfg = _trial_config(base_cfg, base_overrides + _overrides(values), trial_dir, study_name, trial.number)
        callbacks = [] if multi or pruner is None else [PruningCallback(trial, objectives[0])]
        tags = {"optuna.study": study_name, "optuna.trial": trial.number, "optuna.mode": opts["mode"]}
        with tracking.start_run(cfg, stage, tags=tags, nested=True) as run:  # a child of the study's run
            run.log_params({f"trial.{k}": v for k, v in values.items()})
            metrics = run_stage(cfg, stage, lambda: stage_module.fit(cfg, callbacks=callbacks))
        results = []
        for name in objectives:
            if name not in metrics or metrics[name] is None or not math.isfinite(float(metrics[name])):
                raise RuntimeError(f"trial {trial.number}: the stage returned no finite '{name}'")
            results.append(float(metrics[name]))
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
