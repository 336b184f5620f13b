"""How a stage runs: seeding, one MLflow run, metrics logged there and written to ``metrics/<stage>.json``.

Stage wiring every stage shares (corpus and report too, which must not load torch or Lightning), so it lives beside
``tracking`` rather than under ``stages/`` (no stage imports another) or ``training/`` (not every stage trains).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import socket
import sys
import time
from pathlib import Path
from typing import Callable

from omegaconf import DictConfig

from videolavit import tracking


# Third-party messages that say nothing about this run (each measured in `dvc repro 2>&1 | cat` of the tiny profile):
# Lightning's hardware/tips banner, deprecations inside libraries, and library progress bars when not on a terminal.
NOISY_WARNINGS = (
    r".*isinstance\(treespec, LeafSpec\).*",  # lightning's _pytree on torch >= 2.10
    r"You have overridden `on_after_batch_transfer`.*",  # the detokenizer moves batches itself, on purpose
    r".*`past_key_values` is deprecated.*",  # transformers 5 renamed it `cache`; 4.x (supported) knows only this name
    r".*does not have many workers.*",  # workers are a config choice (data.num_workers), 0 on the tiny profile
    r".*The number of training batches .* is smaller than the logging interval.*",
)


def quiet_third_party(terminal: bool | None = None) -> None:
    """Filter the known noisy third-party warnings and INFO loggers at their source; off a terminal, also the
    Hugging Face progress bars (``Loading weights``, ``Writing model shards``), which a log file gets as one long line."""
    import logging
    import warnings

    for pattern in NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    # The loggers rank_zero_info writes to (GPU/TPU banner, tips, "limit_val_batches was configured"): the children,
    # since importing lightning resets its top logger to INFO.
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                 "mlflow.store.db.utils", "mlflow.tracking.fluent", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # transformers' warning_once twin of the deprecation above (printed via its own logger)
    logging.getLogger("transformers.utils.generic").addFilter(lambda r: "past_key_values" not in r.getMessage())
    if terminal is None:
        terminal = sys.stderr.isatty()
    if not terminal:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TQDM_DISABLE", "1")


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
    """Seed, call ``fn()`` inside the stage's MLflow run (or the active one: a sweep trial), log and write its metrics,
    all under the stage's output lock (:func:`output_lock`)."""
    with output_lock(cfg, stage):
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


def lock_path(cfg: DictConfig, stage: str) -> Path:
    """``<paths.runs>/.locks/<stage>.lock`` (one per decompose shard: shards write disjoint outputs)."""
    name = stage
    shard = str(cfg.get("decompose", {}).get("shard", "0/1")) if stage == "decompose" else "0/1"
    if shard != "0/1":
        name += "-shard" + shard.replace("/", "of")
    return Path(cfg.paths.runs) / ".locks" / f"{name}.lock"


def _launcher_rank() -> int:
    # Lightning's DDP children, torchrun and srun start the stage once per process; only the first one locks.
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        value = os.environ.get(key, "0")
        if value.isdigit() and int(value) != 0:
            return int(value)
    return 0


@contextlib.contextmanager
def output_lock(cfg: DictConfig, stage: str):
    """Hold an exclusive lock on :func:`lock_path` while the stage runs: a second run of the same stage (an orphan
    left by a killed ``dvc repro`` and a new one) fails fast with StageBusyError naming the holder's PID. The kernel
    drops the lock with the process, so a killed run never leaves it stale."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        fcntl = None
    if fcntl is None or _launcher_rank() != 0:
        yield
        return
    from videolavit.errors import StageBusyError

    path = lock_path(cfg, stage)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "a process that wrote no PID yet"
        handle.close()
        raise StageBusyError(
            f"{stage}: another run of this stage is writing its outputs ({holder}; lock {path}). Wait for it to "
            f"finish or stop it (kill <pid>): the lock is released when that process exits"
        ) from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"PID {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


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
