"""What every stage shares: the entry decorator (MLflow run + metrics file), seeding, the Lightning trainer, the
AdamW + cosine recipe and exact resume of the global RNG (Lightning callbacks: ``stages/callbacks.py``)."""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from omegaconf import DictConfig

from videolavit import tracking
from videolavit.errors import ConfigError


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


def stage_entry(stage: str) -> Callable[[Callable[[DictConfig], dict]], Callable[[DictConfig], dict]]:
    """Wrap a stage's ``run(cfg)``: one MLflow run, metrics logged there and written to ``metrics/<stage>.json``.

    If a run is already active (a sweep trial), the stage logs into it instead of opening another.
    """

    def decorate(fn: Callable[[DictConfig], dict]) -> Callable[[DictConfig], dict]:
        @functools.wraps(fn)
        def run(cfg: DictConfig) -> dict[str, float]:
            seed_everything(int(cfg.seed))
            torch = sys.modules.get("torch")  # loaded by the stage's module when the stage uses it
            if cfg.compute.threads and torch is not None:
                torch.set_num_threads(int(cfg.compute.threads))
            if tracking.active().enabled:
                metrics = fn(cfg)
                tracking.active().log_metrics(_numeric(metrics))
            else:
                with tracking.start_run(cfg, stage) as mlrun:
                    metrics = fn(cfg)
                    mlrun.log_metrics(_numeric(metrics))
            write_metrics(cfg, stage, metrics)
            return metrics

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


# --------------------------------------------------------------------------------------------------------------------
# Lightning

_EXTRA_CALLBACKS: list = []


@contextlib.contextmanager
def extra_callbacks(callbacks: list) -> Iterator[None]:
    """Callbacks every trainer made inside this block gets too (a sweep's pruning callback)."""
    _EXTRA_CALLBACKS.extend(callbacks)
    try:
        yield
    finally:
        for cb in callbacks:
            _EXTRA_CALLBACKS.remove(cb)


def checkpoint_dir(cfg: DictConfig, stage: str) -> Path:
    return Path(cfg.paths.runs) / stage / "checkpoints"


def resume_checkpoint(cfg: DictConfig, stage: str, resume: str) -> Optional[str]:
    """``never`` → None; ``auto`` → ``runs/<stage>/checkpoints/last.ckpt`` if present; else a path that must exist."""
    if resume in (None, "", "never", "false", False):
        return None
    if resume == "auto":
        last = checkpoint_dir(cfg, stage) / "last.ckpt"
        return str(last) if last.is_file() else None
    if not Path(resume).is_file():
        raise ConfigError(f"{stage}.train.resume: checkpoint '{resume}' does not exist (use 'auto' or 'never')")
    return str(resume)


def make_trainer(
    cfg: DictConfig,
    stage: str,
    train_cfg: Any,
    callbacks: Optional[list] = None,
    enable_progress_bar: Optional[bool] = None,
    **overrides: Any,
):
    """A Lightning Trainer wired to the active MLflow run and to ``runs/<stage>/checkpoints`` (``last.ckpt``)."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    ckpt = ModelCheckpoint(
        dirpath=str(checkpoint_dir(cfg, stage)),
        filename="step{step}",
        save_last=True,
        save_top_k=0,
        every_n_train_steps=int(train_cfg.checkpoint_every_n_steps),
        save_on_train_epoch_end=False,
    )
    loggers: list = []
    run = tracking.active()
    if run.enabled:
        from lightning.pytorch.loggers import MLFlowLogger

        loggers.append(MLFlowLogger(tracking_uri=run.uri, run_id=run.run_id, experiment_name=cfg.tracking.experiment))
    if enable_progress_bar is None:
        enable_progress_bar = os.environ.get("CI") is None and os.isatty(2)
    kwargs = dict(
        accelerator=cfg.compute.accelerator,
        devices=cfg.compute.devices,
        num_nodes=cfg.compute.num_nodes,
        strategy=train_cfg.strategy or cfg.compute.strategy,
        precision=train_cfg.precision or cfg.compute.precision,
        max_steps=int(train_cfg.max_steps),
        accumulate_grad_batches=int(getattr(train_cfg, "accumulate_grad_batches", 1) or 1),
        max_epochs=-1,
        # Lightning counts val_check_interval in batches; the config counts optimizer steps.
        val_check_interval=int(train_cfg.val_every_n_steps) * int(getattr(train_cfg, "accumulate_grad_batches", 1) or 1),
        check_val_every_n_epoch=None,
        limit_val_batches=train_cfg.val_batches if train_cfg.val_batches is not None else 1.0,
        log_every_n_steps=int(train_cfg.log_every_n_steps),
        gradient_clip_val=float(getattr(getattr(cfg, stage).optim, "grad_clip", 0.0) or 0.0) or None,
        callbacks=[ckpt, *(callbacks or []), *_EXTRA_CALLBACKS],
        logger=loggers or False,
        enable_progress_bar=enable_progress_bar,
        enable_model_summary=False,
        default_root_dir=str(Path(cfg.paths.runs) / stage),
        deterministic=False,
        num_sanity_val_steps=0,
    )
    kwargs.update(overrides)
    return L.Trainer(**kwargs)


def cosine_with_warmup(optimizer, warmup_steps: int, total_steps: int, min_ratio: float = 0.0):
    """LambdaLR: linear warm-up to the peak LR, then cosine decay to ``min_ratio`` × peak at ``total_steps``."""
    import torch

    def factor(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def decay_groups(named_parameters, weight_decay: float, no_decay: tuple[str, ...] = (), **extra: Any) -> list[dict]:
    """AdamW parameter groups: matrices decay; 1-D parameters and names ending in ``no_decay`` (position tables,
    learned queries) do not. ``extra`` (e.g. ``lr``) goes into both groups."""
    decay, rest = [], []
    for name, param in named_parameters:
        (decay if param.ndim >= 2 and not name.endswith(tuple(no_decay)) else rest).append(param)
    return [
        {"params": decay, "weight_decay": float(weight_decay), **extra},
        {"params": rest, "weight_decay": 0.0, **extra},
    ]


def adamw_with_cosine(groups: list[dict], optim: Any, max_steps: int) -> dict:
    """Lightning's ``configure_optimizers`` answer: AdamW over ``groups`` at ``optim``'s lr, betas and eps, stepped per
    batch by :func:`cosine_with_warmup` (``warmup_steps``; ``min_lr_ratio`` where the section has one)."""
    import torch

    optimizer = torch.optim.AdamW(
        groups, lr=float(optim["lr"]), betas=tuple(float(b) for b in optim["betas"]), eps=float(optim["eps"])
    )
    min_ratio = float(optim.get("min_lr_ratio") or 0.0)
    scheduler = cosine_with_warmup(optimizer, int(optim["warmup_steps"]), int(max_steps), min_ratio)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class ResumableRNG:
    """LightningModule mixin: checkpoints carry the global torch RNG (and CUDA's), restored before the first batch
    after a resume, so that noise, dropout and dead-code restarts draw what an uninterrupted run would have drawn.
    List it before ``L.LightningModule``; an override of ``on_save_checkpoint`` calls ``super()``."""

    _rng_to_restore: Optional[dict] = None

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        import torch

        checkpoint["rng_state"] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            checkpoint["rng_state"]["cuda"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._rng_to_restore = checkpoint.get("rng_state")

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        import torch

        if self._rng_to_restore is not None:
            torch.set_rng_state(self._rng_to_restore["torch"])
            if "cuda" in self._rng_to_restore and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(self._rng_to_restore["cuda"])
            self._rng_to_restore = None

