"""The Lightning trainer every training stage uses, its checkpoint folder, and exact resume of the global RNG."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig

from videolavit import tracking
from videolavit.errors import ConfigError


def checkpoint_dir(cfg: DictConfig, stage: str) -> Path:
    """``runs/<stage>/checkpoints``; a separate detokenizer run (one model): ``runs/detokenizer/<model>/checkpoints``."""
    d = getattr(cfg, "detokenizer", None) if stage == "detokenizer" else None
    if d is not None and str(getattr(d, "runs", "joint")) == "separate" and len(d.models) == 1:
        return Path(cfg.paths.runs) / stage / str(d.models[0]) / "checkpoints"
    return Path(cfg.paths.runs) / stage / "checkpoints"


def resume_checkpoint(cfg: DictConfig, stage: str, resume: str) -> Optional[str]:
    """``never`` → None; ``auto`` → ``runs/<stage>/checkpoints/last.ckpt`` if present; else a path that must exist.
    Either is checked against its integrity record first (training/checkpoints.py)."""
    if resume in (None, "", "never", "false", False):
        return None
    from videolavit.training.checkpoints import verify_checkpoint

    if resume == "auto":
        last = checkpoint_dir(cfg, stage) / "last.ckpt"
        if not last.is_file():
            return None
        verify_checkpoint(last, cfg, stage)
        return str(last)
    if not Path(resume).is_file():
        raise ConfigError(f"{stage}.train.resume: checkpoint '{resume}' does not exist (use 'auto' or 'never')")
    verify_checkpoint(resume, cfg, stage)
    return str(resume)


def trainer_topology(cfg: DictConfig, stage: str, train_cfg: Any) -> dict:
    """``devices``, ``num_nodes``, ``accumulate_grad_batches`` and ``val_check_interval`` from the launcher's topology
    and the stage's global batch (training/topology.py)."""
    from videolavit.training.topology import detect, plan_batches

    plan = plan_batches(train_cfg, detect(cfg.compute), f"{stage}.train")
    return dict(
        devices=plan.topology.devices_setting,
        num_nodes=plan.topology.num_nodes,
        accumulate_grad_batches=plan.accumulate_grad_batches,
        # Lightning counts val_check_interval in batches; the config counts optimizer steps.
        val_check_interval=int(train_cfg.val_every_n_steps) * plan.accumulate_grad_batches,
    )


def enable_tf32(accelerator) -> bool:
    """On CUDA, fp32 matmuls and convolutions run on TF32 tensor cores (what bf16-mixed leaves in fp32: the loss, the
    VAE, norms); returns whether it did. CPU runs are left as they are."""
    import torch

    from videolavit.data.resumable import uses_cuda

    if not uses_cuda(accelerator):
        return False
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.set_float32_matmul_precision("high")
    return True


def progress_callbacks(stage: str, enable_progress_bar: Optional[bool] = None) -> list:
    """A step-counted bar on a terminal, periodic log lines otherwise (pipes, ``dvc repro | cat``, SLURM);
    ``enable_progress_bar=False``: neither."""
    from videolavit.training.callbacks import PipeProgress, step_progress_bar

    if enable_progress_bar is False:
        return []
    if enable_progress_bar or (os.environ.get("CI") is None and os.isatty(2)):
        return [step_progress_bar(stage)]
    return [PipeProgress(stage)]


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

    from videolavit.training.callbacks import PipeProgress
    from videolavit.training.checkpoints import make_checkpoint_callback

    ckpt = make_checkpoint_callback(cfg, stage, checkpoint_dir(cfg, stage), int(train_cfg.checkpoint_every_n_steps))
    loggers: list = []
    run = tracking.active()
    if run.enabled:
        loggers.append(tracking_logger(run))
    enable_tf32(cfg.compute.accelerator)
    progress = progress_callbacks(stage, enable_progress_bar)
    enable_progress_bar = bool(progress) and not isinstance(progress[0], PipeProgress)
    kwargs = dict(
        **trainer_topology(cfg, stage, train_cfg),
        accelerator=cfg.compute.accelerator,
        strategy=train_cfg.strategy or cfg.compute.strategy,
        precision=train_cfg.precision or cfg.compute.precision,
        max_steps=int(train_cfg.max_steps),
        max_epochs=-1,
        check_val_every_n_epoch=None,
        limit_val_batches=train_cfg.val_batches if train_cfg.val_batches is not None else 1.0,
        log_every_n_steps=int(train_cfg.log_every_n_steps),
        gradient_clip_val=float(getattr(getattr(cfg, stage).optim, "grad_clip", 0.0) or 0.0) or None,
        callbacks=[ckpt, *progress, *(callbacks or [])],
        logger=loggers or False,
        enable_progress_bar=enable_progress_bar,
        enable_model_summary=False,
        default_root_dir=str(Path(cfg.paths.runs) / stage),
        deterministic=False,
        num_sanity_val_steps=0,
    )
    kwargs.update(overrides)
    return L.Trainer(**kwargs)


def tracking_logger(run: "tracking.Run"):
    """A Lightning logger that logs through the stage's run (in this process or its MLflow helper process), as
    Lightning's MLFlowLogger would (same metric names and steps), without importing MLflow here."""
    import re

    from lightning.pytorch.loggers.logger import Logger
    from lightning.pytorch.utilities import rank_zero_only

    class TrackingLogger(Logger):
        @property
        def name(self) -> str:
            return str(run.experiment_id)

        @property
        def version(self) -> str:
            return str(run.run_id)

        @rank_zero_only
        def log_hyperparams(self, params, *args, **kwargs) -> None:  # the whole config is already the run's params
            pass

        @rank_zero_only
        def log_metrics(self, metrics, step: Optional[int] = None) -> None:
            # MLflow allows only '_', '/', '.', '-' and ' ' besides letters and digits (MLFlowLogger's rule)
            clean = {re.sub("[^a-zA-Z0-9_/. -]+", "", k): v for k, v in metrics.items() if not isinstance(v, str)}
            run.log_metrics(clean, step=step)

    return TrackingLogger()


class TrainLoss:
    """LightningModule mixin: the last training losses kept as detached tensors on the training device (a training
    step calls ``remember_train_loss``); they are read as floats once, after fit, so no step waits for the GPU."""

    _train_losses: Optional[dict] = None

    def remember_train_loss(self, loss: Any, **parts: Any) -> None:
        kept = dict(self._train_losses or {})
        kept.update({"loss": loss.detach(), **{k: v.detach() for k, v in parts.items()}})
        self._train_losses = kept

    @property
    def last_train_loss(self) -> float:
        return float(self._train_losses["loss"]) if self._train_losses else float("nan")

    @property
    def last_losses(self) -> dict[str, float]:
        """``train/<name>``: the last value of each remembered loss."""
        return {f"train/{k}": float(v) for k, v in (self._train_losses or {}).items()}


class ResumableRNG:
    """LightningModule mixin: per-rank RNG streams (σ, noise, Gumbel, dropout, dead-code restarts) that resume exactly.

    With > 1 rank each rank reseeds its global torch (and CUDA) generator at its first batch to ``seed + rank × 1000003``
    (one process: the stream is left as it is), checkpoints carry every rank's state (gathered; rank 0 writes them) and
    a resumed rank restores its own. List it before ``L.LightningModule``; overrides of these hooks call ``super()``."""

    _rng_to_restore: Optional[dict] = None
    _rng_ready: bool = False

    @staticmethod
    def _rank_world() -> tuple[int, int]:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    @staticmethod
    def _local_rng_state() -> dict:
        import torch

        state = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state()
        return state

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        import torch.distributed as dist

        # Lightning dumps the checkpoint on every rank and rank 0 writes it: gather each rank's stream into it.
        rank, world = self._rank_world()
        mine = self._local_rng_state()
        states = [mine]
        if world > 1:
            states = [None] * world
            dist.all_gather_object(states, {k: v.cpu() for k, v in mine.items()})
        checkpoint["rng_state"] = {**mine, "per_rank": states, "world_size": world}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._rng_to_restore = checkpoint.get("rng_state")

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        import torch

        rank, world = self._rank_world()
        saved = self._rng_to_restore
        if saved is not None:
            per_rank = saved.get("per_rank")
            if per_rank is not None and len(per_rank) == world:
                saved = per_rank[rank]
            elif world > 1:  # an old or differently sized checkpoint: rank 0's stream would repeat on every rank
                saved = None
            if saved is not None:
                torch.set_rng_state(saved["torch"])
                if "cuda" in saved and torch.cuda.is_available():
                    torch.cuda.set_rng_state(saved["cuda"])
                self._rng_ready = True
            self._rng_to_restore = None
        if not self._rng_ready:
            if world > 1:
                torch.manual_seed((torch.initial_seed() + rank * 1_000_003) % 2**63)
            self._rng_ready = True
