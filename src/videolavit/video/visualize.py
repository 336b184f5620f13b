"""``show_motion``: a clip's motion field as arrows over its keyframe (PNG) or over its frames (animated GIF);
``draw_motion``: the same arrows over any image, for motion that did not come from a file (decoded, generated)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf
from PIL import Image, ImageDraw

from videolavit.errors import ConfigError, VideoError
from videolavit.video.clips import Clip, iter_clips
from videolavit.video.motion import denormalize_motion, video_section

FORMATS = (".png", ".gif")
MIN_DISPLAY_WIDTH = 480  # tiny encode sizes (192 px) are too small to read arrows on
MIN_ARROW_PX = 0.25  # px/frame below this is codec noise or a still block: no arrow


def show_motion(video_path: str | Path, out_path: str | Path, config: Any, clip: int = 0, frame: int = 1) -> Path:
    """Draw clip ``clip``'s motion: frame ``frame`` over the keyframe for a .png, every frame for a .gif."""
    out_path = Path(out_path)
    suffix = out_path.suffix.lower()
    if suffix not in FORMATS:
        raise ConfigError(f"cannot write motion to '{out_path}': unknown extension '{suffix}' (use .png or .gif)")
    video = _display_settings(config)
    T = int(video.clip_frames)
    if suffix == ".png" and not 0 <= frame < T:
        raise ConfigError(f"frame {frame} is outside the clip: a clip has frames 0..{T - 1}")
    if clip < 0:
        raise ConfigError(f"clip {clip} must be 0 or more")

    chosen = _nth_clip(video_path, video, clip, keep_frames=suffix == ".gif")
    size = (int(video.frames_width), int(video.frames_height))
    motion = denormalize_motion(chosen.motion, video)  # [2, T, h, w] px/frame at the encode size
    gain = _arrow_gain(motion, size, int(video.encode_width))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".png":
        image = Image.fromarray(chosen.keyframe).resize(size, Image.BICUBIC)
        _draw_arrows(image, motion[:, frame], gain, video, f"clip {chosen.index} frame {frame}")
        image.save(out_path)
    else:
        images = []
        for t in range(T):
            image = Image.fromarray(chosen.frames[t])
            _draw_arrows(image, motion[:, t], gain, video, f"clip {chosen.index} frame {t}")
            images.append(image.quantize(colors=255, method=Image.Quantize.FASTOCTREE))  # median cut is 50× slower
        duration = int(round(1000 / float(video.fps)))
        images[0].save(out_path, save_all=True, append_images=images[1:], duration=duration, loop=0)
    return out_path


def draw_motion(
    image: np.ndarray, field: np.ndarray, config: Any, title: str = "", normalized: bool = True
) -> Image.Image:
    """Arrows of one motion frame over an image, as ``show_motion`` draws them.

    ``image`` uint8 ``[H, W, 3]`` (shown at least MIN_DISPLAY_WIDTH wide, at the encode aspect); ``field`` ``[2, h, w]``
    one frame of a clip's motion, normalized as the clips store it (``normalized=False``: already px/frame at the
    encode size). Returns a PIL image.
    """
    field = np.asarray(field, dtype=np.float32)
    if field.ndim != 3 or field.shape[0] != 2:
        raise ConfigError(f"draw_motion needs one motion frame [2, h, w], got shape {list(field.shape)}")
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ConfigError(f"draw_motion needs a uint8 [H, W, 3] image, got {image.dtype} {list(image.shape)}")
    video = _display_settings(config)
    px = denormalize_motion(field[:, None], video)[:, 0] if normalized else field
    size = (int(video.frames_width), int(video.frames_height))
    canvas = Image.fromarray(image).resize(size, Image.BICUBIC)
    _draw_arrows(canvas, px, _arrow_gain(px[:, None], size, int(video.encode_width)), video, title)
    return canvas


def _display_settings(config: Any) -> Any:
    """The video section with the kept frames at the encode aspect, at least MIN_DISPLAY_WIDTH wide."""
    video = OmegaConf.create(OmegaConf.to_container(video_section(config), resolve=True))
    zoom = max(1.0, MIN_DISPLAY_WIDTH / int(video.encode_width))
    video.frames_width = int(round(int(video.encode_width) * zoom))
    video.frames_height = int(round(int(video.encode_height) * zoom))
    return video


def _nth_clip(path: str | Path, video: Any, n: int, keep_frames: bool) -> Clip:
    count = 0
    for count, item in enumerate(iter_clips(path, video, keep_frames=keep_frames), start=1):
        if item.index == n:
            return item
    raise VideoError(path, f"clip {n} does not exist: the video has {count} clip{'s' if count != 1 else ''}")


def _arrow_gain(motion: np.ndarray, size: tuple[int, int], encode_width: int) -> float:
    """How much longer than true scale arrows are drawn: the clip's largest vector spans about 1.5 grid cells."""
    h, w = motion.shape[-2:]
    cell = min(size[0] / w, size[1] / h)
    largest = float(np.sqrt((motion**2).sum(axis=0)).max())  # px/frame at the encode size
    zoom = size[0] / encode_width
    return max(1.0, 1.5 * cell / (largest * zoom)) if largest > 0 else 1.0


def _draw_arrows(image: Image.Image, field: np.ndarray, gain: float, video: Any, title: str) -> None:
    """Arrows from each grid cell's centre along its motion ([2, h, w] px/frame), with a legend of the scale."""
    draw = ImageDraw.Draw(image)
    h, w = field.shape[-2:]
    zx, zy = image.width / int(video.encode_width), image.height / int(video.encode_height)
    for r in range(h):
        for c in range(w):
            dx, dy = float(field[0, r, c]), float(field[1, r, c])
            if math.hypot(dx, dy) < MIN_ARROW_PX:
                continue
            x0, y0 = (c + 0.5) * image.width / w, (r + 0.5) * image.height / h
            _arrow(draw, (x0, y0), (x0 + dx * zx * gain, y0 + dy * zy * gain))
    legend = f"{title}  arrows x{gain:.1f} (px/frame at {video.encode_width}x{video.encode_height})"
    draw.rectangle((0, 0, image.width, 14), fill=(0, 0, 0))
    draw.text((3, 1), legend, fill=(255, 255, 255))


def _arrow(draw: ImageDraw.ImageDraw, start: tuple[float, float], end: tuple[float, float]) -> None:
    length = math.hypot(end[0] - start[0], end[1] - start[1])
    if length < 1:
        draw.point(start, fill=(255, 230, 0))
        return
    angle = math.atan2(end[1] - start[1], end[0] - start[0])
    head = min(6.0, 0.4 * length)
    left = (end[0] - head * math.cos(angle - 0.5), end[1] - head * math.sin(angle - 0.5))
    right = (end[0] - head * math.cos(angle + 0.5), end[1] - head * math.sin(angle + 0.5))
    draw.line((start, end), fill=(0, 0, 0), width=3)  # dark outline keeps the arrow visible on bright texture
    draw.line((start, end), fill=(255, 230, 0), width=1)
    draw.polygon((end, left, right), fill=(255, 230, 0), outline=(0, 0, 0))
