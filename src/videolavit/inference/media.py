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


PREVIEW_SIDE = 128  # a preview's short side is scaled up to at least this many pixels (tiny clips are 16x24)


def preview_scale(frames: np.ndarray, min_side: int = PREVIEW_SIDE) -> int:
    """The integer factor that brings the frames' short side to at least ``min_side`` (1 for large frames)."""
    return max(1, -(-min_side // max(1, min(frames.shape[1], frames.shape[2]))))


def upscale(frames: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour ×``scale`` of uint8 [..., H, W, 3]: every generated pixel becomes a visible block."""
    return frames if scale == 1 else frames.repeat(scale, axis=-3).repeat(scale, axis=-2)


def frame_strip(frames: np.ndarray, scale: int, max_frames: int = 16, gap: int = 2) -> np.ndarray:
    """uint8 [T, H, W, 3] → one row of up to ``max_frames`` evenly spaced frames, upscaled, on a white background."""
    t = len(frames)
    picks = sorted({round(i * (t - 1) / max(1, min(t, max_frames) - 1)) for i in range(min(t, max_frames))})
    tiles = upscale(frames[picks], scale)
    h, w = tiles.shape[1:3]
    strip = np.full((h, len(picks) * (w + gap) - gap, 3), 255, np.uint8)
    for i, tile in enumerate(tiles):
        strip[:, i * (w + gap) : i * (w + gap) + w] = tile
    return strip


def write_previews(frames: np.ndarray, fps: float, stem: Path, scale: int | None = None) -> list[Path]:
    """``<stem>.preview.gif`` (nearest-neighbour upscaled) and ``<stem>.strip.png`` (frames side by side)."""
    from PIL import Image

    from videolavit.video.io import write_gif

    scale = preview_scale(frames) if scale is None else int(scale)
    gif = write_gif(stem.with_name(stem.name + ".preview.gif"), upscale(frames, scale), fps)
    png = stem.with_name(stem.name + ".strip.png")
    Image.fromarray(frame_strip(frames, scale)).save(png, optimize=True)
    return [gif, png]


def save_video(video: "GeneratedVideo", out: str | Path, gif: bool = True, previews: bool = True) -> list[Path]:
    """``out`` (H.264 in .mp4/.mov/.mkv; no suffix: .mp4) at the generated size and, with ``gif``, the same name .gif
    beside it; a ``.gif`` ``out`` writes the GIF only. ``previews``: also an upscaled GIF and a PNG strip to look at."""
    from videolavit.video.io import write_gif, write_video

    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in ("", ".gif", *VIDEO_SUFFIXES):
        raise ConfigError(f"cannot write a video to '{out}': use a {', '.join(VIDEO_SUFFIXES)} or .gif name")
    extra = write_previews(video.frames, video.fps, out.with_suffix("")) if previews else []
    if suffix == ".gif":
        return [write_gif(out, video.frames, video.fps), *extra]
    mp4 = out if suffix else out.with_suffix(".mp4")
    frames = video.frames
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2  # yuv420p needs even sides
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    written = [write_video(mp4, frames, video.fps)]
    if gif:
        written.append(write_gif(mp4.with_suffix(".gif"), video.frames, video.fps))
    return [*written, *extra]
