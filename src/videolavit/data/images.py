"""Image files and keyframes → uint8 RGB squares, resized as the visual tokenizer expects (torch only, no Lightning:
the tokenize stage uses this without paying for the training stack)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch


def resize_images(images: Any, size: int) -> np.ndarray:
    """uint8 RGB [H, W, 3] or [N, H, W, 3] → uint8 [..., size, size, 3]: bicubic with antialias, the resize of
    ``models.visual_tokenizer.preprocess_images`` (the official processor squashes straight to size×size)."""
    array = np.asarray(images)
    if array.dtype != np.uint8 or array.ndim not in (3, 4) or array.shape[-1] != 3:
        raise ValueError(f"expected uint8 RGB images [H, W, 3] or [N, H, W, 3], got {array.dtype} {array.shape}")
    if array.shape[-3:-1] == (size, size):
        return array
    # np.array copies: arrays from PIL are read-only, which torch.from_numpy warns about
    x = torch.from_numpy(np.array(array)).reshape(-1, *array.shape[-3:]).permute(0, 3, 1, 2).float()
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    out = x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()  # [N, size, size, 3]
    return out.reshape(*array.shape[:-3], size, size, 3)


def read_image(path: str | Path, size: int) -> np.ndarray:
    """An image file → uint8 RGB [size, size, 3]; an unreadable file is a CorpusError naming it."""
    from PIL import Image

    from videolavit.errors import CorpusError

    try:
        with Image.open(path) as image:
            array = np.array(image.convert("RGB"))  # a writable copy
    except (OSError, ValueError) as exc:
        raise CorpusError(f"cannot read image '{path}': {exc}") from None
    return resize_images(array, size)
