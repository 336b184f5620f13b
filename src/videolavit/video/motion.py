"""MPEG-4 motion vectors: in-memory re-encode, macroblock motion fields, grid resize and normalization (no torch)."""

from __future__ import annotations

from fractions import Fraction
from typing import Any, Optional

import av
import numpy as np

from videolavit.errors import ConfigError

MACROBLOCK = 16  # MPEG-4 Part 2 motion vectors are per 16×16 macroblock (8×8 with 4MV, averaged here)
_I_FRAME = av.video.frame.PictureType.I
_NO_TYPE = av.video.frame.PictureType.NONE


class MotionCodec:
    """Re-encode frames with PyAV's ``mpeg4`` encoder and decode them back with their exported motion vectors.

    Packets go straight from the encoder into a decoder ``CodecContext``: no container, no temp file, so memory does
    not grow with the video. ``push(frame, k)`` returns ``(k, is_iframe, motion)`` for every frame the decoder
    finished, where ``motion`` is the forward motion in px/frame per macroblock, float32 [2, rows, cols] (x, y).
    With ``with_motion=False`` nothing is decoded and ``motion`` is None (the I-frame layout is all that is needed).
    """

    def __init__(self, width: int, height: int, fps: float, gop: int, bitrate: int, with_motion: bool = True):
        self.rows, self.cols = height // MACROBLOCK, width // MACROBLOCK
        self.encoder = av.CodecContext.create("mpeg4", "w")
        self.encoder.width, self.encoder.height = width, height
        self.encoder.pix_fmt = "yuv420p"
        rate = Fraction(fps).limit_denominator(1001)
        self.encoder.time_base = 1 / rate
        self.encoder.framerate = rate
        self.encoder.gop_size = gop
        self.encoder.max_b_frames = 0
        self.encoder.bit_rate = int(bitrate)
        self.encoder.thread_count = 1  # slices from threads would change the motion search: keep it deterministic
        self.encoder.open()
        self.decoder = None
        if with_motion:
            self.decoder = av.CodecContext.create("mpeg4", "r")
            # Vectors are parsed from the bitstream; the pixels are never looked at, so skip reconstructing them.
            self.decoder.options = {"flags2": "+export_mvs", "skip_idct": "all"}
            self.decoder.thread_count = 1

    def push(self, frame: Optional[av.VideoFrame], index: int = 0) -> list[tuple[int, bool, Optional[np.ndarray]]]:
        """Encode one yuv420p frame at the encode size (None flushes); return the frames that came out."""
        if frame is not None:
            frame.pts = index
            frame.time_base = self.encoder.time_base
            frame.pict_type = _NO_TYPE  # a source I-frame flag would otherwise force an I-frame and break the GOP
        out = []
        for packet in self.encoder.encode(frame):
            if self.decoder is None:
                out.append((int(packet.pts), bool(packet.is_keyframe), None))
                continue
            out.extend(self._decoded(self.decoder.decode(packet)))
        if frame is None and self.decoder is not None:
            out.extend(self._decoded(self.decoder.decode(None)))
        return out

    def _decoded(self, frames) -> list[tuple[int, bool, np.ndarray]]:
        out = []
        for decoded in frames:
            is_iframe = decoded.pict_type == _I_FRAME
            motion = np.zeros((2, self.rows, self.cols), dtype=np.float32)  # [2, rows, cols]
            side = None if is_iframe else decoded.side_data.get("MOTION_VECTORS")
            if side is not None:
                motion = macroblock_motion(side.to_ndarray(), self.rows, self.cols)
            out.append((int(decoded.pts), is_iframe, motion))
        return out


def macroblock_motion(vectors: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Forward motion in px/frame per macroblock, float32 [2, rows, cols], from FFmpeg's exported vectors.

    FFmpeg stores src = dst + motion / motion_scale, so the content moved by -motion / motion_scale since the past
    reference (source < 0). A vector lands in the macroblock holding its block's centre (dst_x, dst_y); intra blocks
    export no vector and stay zero.
    """
    vectors = vectors[vectors["source"] < 0]
    motion = np.zeros((2, rows * cols), dtype=np.float32)
    if len(vectors) == 0:
        return motion.reshape(2, rows, cols)
    col = np.clip(vectors["dst_x"].astype(np.int64) // MACROBLOCK, 0, cols - 1)
    row = np.clip(vectors["dst_y"].astype(np.int64) // MACROBLOCK, 0, rows - 1)
    cell = row * cols + col
    scale = np.maximum(vectors["motion_scale"].astype(np.float64), 1.0)
    count = np.bincount(cell, minlength=rows * cols)
    hit = count > 0
    for axis, name in enumerate(("motion_x", "motion_y")):
        total = np.bincount(cell, weights=-vectors[name] / scale, minlength=rows * cols)
        motion[axis, hit] = total[hit] / count[hit]
    return motion.reshape(2, rows, cols)


def cubic_resize_matrix(in_size: int, out_size: int, a: float = -0.75) -> np.ndarray:
    """[out, in] weights of 1-D bicubic resampling exactly as torch's ``interpolate(mode="bicubic")`` (no antialias)."""
    weights = np.zeros((out_size, in_size), dtype=np.float64)
    scale = in_size / out_size
    for i in range(out_size):
        x = (i + 0.5) * scale - 0.5
        x0 = int(np.floor(x))
        t = x - x0
        taps = (
            ((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a,
            ((a + 2) * t - (a + 3)) * t * t + 1,
            ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1,
            ((a * (2 - t) - 5 * a) * (2 - t) + 8 * a) * (2 - t) - 4 * a,
        )
        for offset, w in zip((-1, 0, 1, 2), taps):
            weights[i, min(max(x0 + offset, 0), in_size - 1)] += w
    return weights


def resize_grid(motion: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bicubic resize of the last two axes ([..., rows, cols] → [..., height, width]); identity when equal."""
    rows, cols = motion.shape[-2:]
    if (rows, cols) == (height, width):
        return motion
    out = cubic_resize_matrix(rows, height) @ motion.astype(np.float64) @ cubic_resize_matrix(cols, width).T
    return out.astype(motion.dtype, copy=False)


def video_section(config: Any) -> Any:
    """The ``video`` section of a full config, or the argument itself when it already is that section.

    The codec level reads only what it is given: there is no default profile to fall back on."""
    if config is None:
        raise ConfigError("the video functions need the `video` config section (cfg.video), got None")
    section = getattr(config, "video", None)  # DictConfig raises AttributeError for a missing key
    return config if section is None else section


def _scale(config: Any) -> np.ndarray:
    video = video_section(config)
    std_x, std_y = (float(s) for s in video.motion_std)
    rescale = float(video.motion_rescale)
    return np.array([rescale / (video.encode_width * std_x), rescale / (video.encode_height * std_y)])


def _apply(motion: Any, factors: np.ndarray, axis: int) -> Any:
    if motion.shape[axis] != 2:
        raise ValueError(f"motion must have 2 channels (x, y) on axis {axis}, got shape {tuple(motion.shape)}")
    shape = [1] * motion.ndim
    shape[axis] = 2
    if hasattr(motion, "new_tensor"):  # a torch tensor: keep its dtype and device without importing torch here
        return motion * motion.new_tensor(factors).reshape(shape)
    motion = np.asarray(motion)
    dtype = motion.dtype if np.issubdtype(motion.dtype, np.floating) else np.float32
    return (motion * factors.reshape(shape)).astype(dtype, copy=False)


def normalize_motion(mv_px: Any, config: Any, axis: int = 0) -> Any:
    """px/frame at the encode size (x, y on ``axis``) → tokenizer input: ÷ encode width/height ÷ std × rescale."""
    return _apply(mv_px, _scale(config), axis)


def denormalize_motion(motion: Any, config: Any, axis: int = 0) -> Any:
    """The inverse of :func:`normalize_motion`: tokenizer-scale motion → px/frame at the encode size."""
    return _apply(motion, 1.0 / _scale(config), axis)
