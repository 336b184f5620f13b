"""Writing videos with PyAV (no torch here): the synthetic corpus, tests and generated samples all use this."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Iterable, Optional, Sequence

import av
import numpy as np

# Muxer-level flags a caller may pass among the encoder options (they mean nothing to the encoder).
_MUXER_OPTIONS = ("movflags", "brand", "frag_duration", "min_frag_duration")


def write_video(
    path: str | Path,
    frames: Iterable[np.ndarray],
    fps: float,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    bitrate: Optional[int] = None,
    options: Optional[dict] = None,
    times: Optional[Sequence[float]] = None,
) -> Path:
    """Encode RGB frames (each uint8 [H, W, 3], same size) to ``path``; H.264 by default. Returns the path.

    ``options`` go to the encoder, except muxer flags (``movflags``, e.g. ``faststart``), which go to the container.
    ``times`` (seconds, increasing) gives each frame its own timestamp: a variable-frame-rate video.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rate = Fraction(fps).limit_denominator(1001)
    options = {k: str(v) for k, v in (options or {}).items()}
    container_options = {k: options.pop(k) for k in list(options) if k in _MUXER_OPTIONS}
    time_base = Fraction(1, 90_000) if times is not None else None
    with av.open(str(path), mode="w", container_options=container_options) as container:
        stream = None
        for index, frame in enumerate(frames):
            frame = np.ascontiguousarray(frame, dtype=np.uint8)
            if stream is None:
                stream = container.add_stream(codec, rate=rate)
                stream.height, stream.width = frame.shape[:2]
                stream.pix_fmt = pix_fmt
                if time_base is not None:
                    stream.codec_context.time_base = time_base
                    stream.time_base = time_base
                if bitrate:
                    stream.bit_rate = int(bitrate)
                if options:
                    stream.options = options
            video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
            if time_base is not None:
                video_frame.pts = round(float(times[index]) / time_base)
                video_frame.time_base = time_base
            for packet in stream.encode(video_frame):
                container.mux(packet)
        if stream is None:
            raise ValueError(f"write_video({path}): no frames given")
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_gif(path: str | Path, frames: np.ndarray, fps: float) -> Path:
    """uint8 [T, H, W, 3] → an animated GIF that loops."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(np.ascontiguousarray(f)) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=max(1, round(1000 / fps)), loop=0)
    return path
