"""The AdamW + linear warm-up + cosine recipe every trained model uses, and its weight-decay parameter groups."""

from __future__ import annotations

import math
from typing import Any


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
