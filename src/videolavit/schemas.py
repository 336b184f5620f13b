"""Typed config sections of the training and inference stages (registered into the schema of ``config.py``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from videolavit.config import register_section


@dataclass
class OptimConfig:
    """AdamW + cosine schedule with linear warm-up (paper Table 8 style)."""

    lr: float = 1e-4
    betas: list = field(default_factory=lambda: [0.9, 0.99])
    eps: float = 1e-6
    weight_decay: float = 0.001
    warmup_steps: int = 5000
    grad_clip: float = 1.0


@dataclass
class TrainLoopConfig:
    """Steps, batches and checkpointing of one training stage."""

    max_steps: int = 100_000
    batch_size: int = 8
    val_every_n_steps: int = 1000
    val_batches: Optional[int] = None  # limit validation batches (None: all)
    log_every_n_steps: int = 10
    checkpoint_every_n_steps: int = 1000
    resume: str = "never"  # never | auto (continue from runs/<stage>/last.ckpt when it exists) | a path
    strategy: Optional[str] = None  # None: compute.strategy
    precision: Optional[str] = None  # None: compute.precision


@dataclass
class MotionTokenizerModelConfig:
    """Spatiotemporal transformer VQ-VAE over motion fields [B, 2, T, H, W] (paper §3.1, A.1)."""

    in_channels: int = 2
    frames: int = 24
    height: int = 20
    width: int = 36
    dim: int = 512
    depth: int = 12
    heads: int = 8
    mlp_ratio: float = 4.0
    downsample_after: list = field(default_factory=lambda: [3, 6, 9, 12])
    downsample_strides: list = field(default_factory=lambda: [[1, 2, 2], [2, 1, 1], [2, 1, 1], [2, 2, 2]])
    code_dim: int = 32
    codebook_size: int = 1024
    ema_decay: float = 0.995
    kmeans_init: bool = True
    dead_code_threshold: float = 2.0
    commitment_weight: float = 0.25


@dataclass
class MotionTokenizerStageConfig:
    model: MotionTokenizerModelConfig = field(default_factory=MotionTokenizerModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)


register_section("motion_tokenizer", MotionTokenizerStageConfig)
