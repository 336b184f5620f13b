"""Pixel conversions shared by training, generation and evaluation: uint8 ↔ float in [-1, 1], resized as the models see."""

from __future__ import annotations

from typing import Any

import numpy as np


def to_unit(image: np.ndarray, size: tuple[int, int], device="cpu") -> Any:
    """uint8 [H, W, 3] → float [1, 3, *size] in [-1, 1] (bicubic with antialias, as the tokenizers resize)."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float().div(127.5).sub(1)  # [1, 3, H, W]
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=tuple(size), mode="bicubic", align_corners=False, antialias=True)
    return x.clamp(-1, 1).to(device)


def frames_to_unit(frames, size: tuple[int, int]):
    """uint8 tensor [B, T, H, W, 3] → float [B, T, 3, *size] in [-1, 1] (bicubic with antialias, as ``to_unit``)."""
    import torch.nn.functional as F

    B, T = frames.shape[:2]
    x = frames.permute(0, 1, 4, 2, 3).flatten(0, 1).float().div(127.5).sub(1)  # [B·T, 3, H, W]
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=tuple(size), mode="bicubic", align_corners=False, antialias=True).clamp(-1, 1)
    return x.reshape(B, T, 3, *size)


def to_uint8(x) -> np.ndarray:
    """A float tensor in [-1, 1] → uint8 numpy array of the same layout."""
    import torch

    return ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
