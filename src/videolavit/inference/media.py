"""Pixels in and out of generation: image files in, the generated video out as MP4 and/or GIF."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from videolavit.errors import ConfigError

if TYPE_CHECKING:
    from videolavit.inference.pipeline import GeneratedVideo

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv")


def rgb_image(image) -> np.ndarray:
    """``image`` checked to be uint8 RGB [H, W, 3], as a writable array."""
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"an image must be uint8 RGB [H, W, 3], got {array.dtype} {array.shape}")
    return array if array.flags.writeable else array.copy()  # torch warns on read-only arrays


def read_rgb(path: str | Path) -> np.ndarray:
    """An image file → uint8 RGB [H, W, 3]."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))  # a writable copy (torch warns on read-only arrays)
    except (OSError, UnidentifiedImageError) as exc:
        raise ConfigError(f"cannot read image '{path}': {exc}") from None


def save_video(video: "GeneratedVideo", out: str | Path, gif: bool = True) -> list[Path]:
    """``out`` (H.264 in .mp4/.mov/.mkv; no suffix: .mp4) and, with ``gif``, the same name .gif beside it; a ``.gif``
    ``out`` writes the GIF only."""
    from videolavit.video.io import write_gif, write_video

    out = Path(out)
    suffix = out.suffix.lower()
    if suffix == ".gif":
        return [write_gif(out, video.frames, video.fps)]
    if suffix not in ("", *VIDEO_SUFFIXES):
        raise ConfigError(f"cannot write a video to '{out}': use a {', '.join(VIDEO_SUFFIXES)} or .gif name")
    mp4 = out if suffix else out.with_suffix(".mp4")
    frames = video.frames
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2  # yuv420p needs even sides
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    written = [write_video(mp4, frames, video.fps)]
    if gif:
        written.append(write_gif(mp4.with_suffix(".gif"), video.frames, video.fps))
    return written
