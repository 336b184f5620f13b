"""How a stage runs: seeding, one MLflow run, metrics logged there and written to ``metrics/<stage>.json``.

Stage wiring every stage shares (corpus and report too, which must not load torch or Lightning), so it lives beside
``tracking`` rather than under ``stages/`` (no stage imports another) or ``training/`` (not every stage trains).
"""

from __future__ import annotations

import functools
import json
import math
import sys
from pathlib import Path
from typing import Callable

from omegaconf import DictConfig

from videolavit import tracking


def write_metrics(cfg: DictConfig, stage: str, metrics: dict[str, float]) -> Path:
    """``metrics/<stage>.json`` (for ``dvc metrics show``): keys as given, non-finite values as null."""
    path = Path(cfg.paths.metrics) / f"{stage}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    clean = {}
    for key, value in sorted(metrics.items()):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            clean[key] = float(value) if math.isfinite(float(value)) else None
        else:
            clean[key] = value
    path.write_text(json.dumps(clean, indent=2) + "\n")
    return path


def run_stage(cfg: DictConfig, stage: str, fn: Callable[[], dict]) -> dict[str, float]:
    """Seed, call ``fn()`` inside the stage's MLflow run (or the active one: a sweep trial), log and write its metrics."""
    seed_everything(int(cfg.seed))
    torch = sys.modules.get("torch")  # loaded by the stage's module when the stage uses it
    if cfg.compute.threads and torch is not None:
        torch.set_num_threads(int(cfg.compute.threads))
    if tracking.active().enabled:
        metrics = fn()
        tracking.active().log_metrics(_numeric(metrics))
    else:
        with tracking.start_run(cfg, stage) as mlrun:
            metrics = fn()
            mlrun.log_metrics(_numeric(metrics))
    write_metrics(cfg, stage, metrics)
    return metrics


def stage_entry(stage: str) -> Callable[[Callable[[DictConfig], dict]], Callable[[DictConfig], dict]]:
    """Wrap a stage's ``run(cfg)`` in :func:`run_stage`."""

    def decorate(fn: Callable[[DictConfig], dict]) -> Callable[[DictConfig], dict]:
        @functools.wraps(fn)
        def run(cfg: DictConfig) -> dict[str, float]:
            return run_stage(cfg, stage, lambda: fn(cfg))

        run.stage_name = stage  # type: ignore[attr-defined]
        return run

    return decorate


def _numeric(metrics: dict) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v)):
            out[k] = float(v)
    return out


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and, when it is loaded, torch's global generators. Every module that draws from torch
    imports it first; a stage that never does (corpus, decompose, report) is spared importing it (~2.5 s)."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(seed)
