"""Video PSNR / SSIM over frames, thin wrappers over torchmetrics (which needs no torchvision for these).

Layout ``[B, T, C, H, W]``; uint8 in [0, 255] or float in [0, 1] (both compared at data_range 1 after uint8 / 255).
Each frame gets its own PSNR / SSIM; the result is the mean over frames and videos. Identical frames give PSNR inf.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

__all__ = [
    "PeakSignalNoiseRatio",
    "StructuralSimilarityIndexMeasure",
    "VideoPSNR",
    "VideoSSIM",
    "frame_psnr",
    "frame_ssim",
    "video_psnr",
    "video_ssim",
]

SSIM_KERNEL = 11  # torchmetrics' default Gaussian window; frames must be at least this large


def _frames(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """``[B, T, C, H, W]`` pair → float ``[B*T, C, H, W]`` in [0, 1]."""
    if pred.shape != target.shape:
        raise ValueError(f"video shapes differ: pred {list(pred.shape)} vs target {list(target.shape)}")
    if pred.ndim != 5 or pred.shape[2] not in (1, 3):
        raise ValueError(f"videos must be [B, T, C, H, W] with C 1 or 3, got {list(pred.shape)}")
    if pred.dtype != target.dtype:
        raise ValueError(f"pred is {pred.dtype} but target is {target.dtype}: compare uint8 with uint8, [0, 1] floats with floats")
    out = []
    for name, video in (("pred", pred), ("target", target)):
        if video.dtype == torch.uint8:
            video = video.float() / 255
        elif video.is_floating_point():
            low, high = float(video.min()), float(video.max())
            if low < -1e-3 or high > 1 + 1e-3:
                raise ValueError(f"{name} floats must be in [0, 1], got [{low:.3f}, {high:.3f}] (is it in [-1, 1]?)")
        else:
            raise ValueError(f"{name} must be uint8 or float, got {video.dtype}")
        out.append(video.flatten(0, 1))
    return out[0], out[1]


def frame_psnr(pred: Tensor, target: Tensor) -> Tensor:
    """Per-frame PSNR in dB, ``[B*T]``."""
    p, t = _frames(pred, target)
    return peak_signal_noise_ratio(p, t, data_range=1.0, reduction="none", dim=(1, 2, 3))


def frame_ssim(pred: Tensor, target: Tensor) -> Tensor:
    """Per-frame SSIM, ``[B*T]`` (Gaussian window 11, σ 1.5)."""
    p, t = _frames(pred, target)
    if min(p.shape[-2:]) < SSIM_KERNEL:
        raise ValueError(f"SSIM needs frames of at least {SSIM_KERNEL}x{SSIM_KERNEL}, got {p.shape[-2]}x{p.shape[-1]}")
    return structural_similarity_index_measure(p, t, data_range=1.0, reduction="none")


def video_psnr(pred: Tensor, target: Tensor) -> Tensor:
    """Mean per-frame PSNR (dB) of ``[B, T, C, H, W]`` videos."""
    return frame_psnr(pred, target).mean()


def video_ssim(pred: Tensor, target: Tensor) -> Tensor:
    """Mean per-frame SSIM of ``[B, T, C, H, W]`` videos."""
    return frame_ssim(pred, target).mean()


class _FrameMean(Metric):
    is_differentiable = False
    full_state_update = False
    higher_is_better = True

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("value_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("num_frames", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def _per_frame(self, pred: Tensor, target: Tensor) -> Tensor:
        raise NotImplementedError

    def update(self, pred: Tensor, target: Tensor) -> None:
        values = self._per_frame(pred, target).to(torch.float64)
        self.value_sum += values.sum()
        self.num_frames += values.numel()

    def compute(self) -> Tensor:
        if int(self.num_frames) == 0:
            raise ValueError(f"{type(self).__name__} has no frames: call update() first")
        return self.value_sum / self.num_frames


class VideoPSNR(_FrameMean):
    """Mean per-frame PSNR (dB) accumulated over batches of ``[B, T, C, H, W]`` videos."""

    def _per_frame(self, pred: Tensor, target: Tensor) -> Tensor:
        return frame_psnr(pred, target)


class VideoSSIM(_FrameMean):
    """Mean per-frame SSIM accumulated over batches of ``[B, T, C, H, W]`` videos."""

    def _per_frame(self, pred: Tensor, target: Tensor) -> Tensor:
        return frame_ssim(pred, target)
