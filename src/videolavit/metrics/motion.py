"""Motion end-point error: how far predicted motion vectors land from the true ones."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


class MotionEPE(Metric):
    """Mean ‖pred − target‖₂ over all motion vectors; ``update(pred [B, 2, ...], target [B, 2, ...], mask=None)``.

    The result is in the inputs' units: pixels per frame for raw motion vectors, [-1, 1] units for normalized motion.
    ``mask`` [B, ...] (bool, the shape without the 2 axis) keeps only the vectors to count, e.g. real clips, not padding.
    """

    higher_is_better = False
    is_differentiable = False
    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("error_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("num_vectors", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> None:
        if pred.shape != target.shape:
            raise ValueError(f"motion shapes differ: pred {list(pred.shape)} vs target {list(target.shape)}")
        if pred.ndim < 2 or pred.shape[1] != 2:
            raise ValueError(f"motion must be [B, 2, ...] with (dx, dy) on axis 1, got {list(pred.shape)}")
        error = (pred.to(torch.float64) - target.to(torch.float64)).square().sum(dim=1).sqrt()  # [B, ...]
        if mask is not None:
            if mask.shape != error.shape:
                raise ValueError(f"mask must be {list(error.shape)} (motion shape without axis 1), got {list(mask.shape)}")
            error = error[mask.bool()]
        self.error_sum += error.sum()
        self.num_vectors += error.numel()

    def compute(self) -> Tensor:
        if int(self.num_vectors) == 0:
            raise ValueError("MotionEPE has no motion vectors: call update() first (or the mask dropped them all)")
        return self.error_sum / self.num_vectors
