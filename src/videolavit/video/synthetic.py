"""Synthetic test videos with known motion: a textured square sliding over a textured background (numpy + PIL)."""

from __future__ import annotations

from typing import Iterator

import numpy as np
from PIL import Image, ImageFilter


def texture(rng: np.random.Generator, height: int, width: int, blur: float = 1.5) -> np.ndarray:
    """Smooth, high-contrast colour noise, uint8 [H, W, 3].

    Pure white noise defeats the encoder's predictive motion search (no gradient to follow); a slight blur keeps
    the texture unambiguous while letting the search converge, like real footage does.
    """
    noise = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(noise).filter(ImageFilter.GaussianBlur(blur)), dtype=np.float32)
    return np.clip((smooth - smooth.mean()) * 4 + 128, 0, 255).astype(np.uint8)


def moving_square(
    width: int,
    height: int,
    num_frames: int,
    velocity: tuple[float, float],
    size: int = 48,
    seed: int = 0,
    period: int = 24,
) -> Iterator[np.ndarray]:
    """Frames uint8 [H, W, 3]: a ``size``-px textured square moving by ``velocity`` = (dx, dy) px/frame.

    The square restarts every ``period`` frames so it stays in view; it is centred at the middle frame of each period.
    """
    rng = np.random.default_rng(seed)
    background = texture(rng, height, width)
    square = texture(rng, size, size)
    for i in range(num_frames):
        x, y, _, _ = square_box(width, height, i, velocity, size, period)
        frame = background.copy()
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + size, width), min(y + size, height)
        if x1 > x0 and y1 > y0:
            frame[y0:y1, x0:x1] = square[y0 - y : y1 - y, x0 - x : x1 - x]
        yield frame


def square_box(width: int, height: int, frame: int, velocity: tuple[float, float], size: int = 48, period: int = 24):
    """(x, y, x + size, y + size) of the square in ``frame`` of :func:`moving_square` (may leave the image)."""
    dx, dy = velocity
    step = frame % period - period // 2
    x = (width - size) // 2 + int(round(dx * step))
    y = (height - size) // 2 + int(round(dy * step))
    return x, y, x + size, y + size
