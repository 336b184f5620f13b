"""How a clip sample's arrays become tar members and back: frames as a small in-memory video, motion as float16.

Members of one clip ``<key>``: ``.json`` (meta), ``.keyframe.npy`` (uint8, raw: the image index seeks to it),
``.motion.npy`` (float32, or float16 with ``motion_dtype=float16``) and the frames as one of

- ``.frames.npy``: raw uint8 [T, H, W, 3] (``frame_codec=npy``, the old format: 13.3 MB at 24×320×576);
- ``.frames.mkv``: FFV1 in Matroska, lossless (``frame_codec=ffv1``: decoded frames identical to the raw ones);
- ``.frames.mp4``: H.264 (x264, ``frame_crf``, 4:4:4 so colour keeps full resolution) in MP4 (``frame_codec=h264``).

:func:`decode_member` is the one decoder every reader goes through: frames come back as uint8 [T, H, W, 3] and
motion as float32, whatever was stored.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

FRAME_CODECS = ("npy", "ffv1", "h264")
MOTION_DTYPES = ("float32", "float16")
FRAME_EXT = {"npy": "npy", "ffv1": "mkv", "h264": "mp4"}
_CONTAINER = {"mkv": "matroska", "mp4": "mp4"}
# Textured 720p footage at 576×320 (benchmarks/data_scale.py clips): preset fast, CRF 18: 0.93 MB, 36.1 dB, 0.60 s a
# clip; veryfast, CRF 16: 1.01 MB, 35.6 dB, 0.19 s (the rest of a clip's decomposition costs ~0.25 s).
X264_PRESET = "veryfast"
X264_PIX_FMT = "yuv444p"  # full-resolution colour (any frame size, odd ones included)


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def check_codec(frame_codec: str, motion_dtype: str, crf: Any = 18) -> None:
    from videolavit.errors import ConfigError

    if frame_codec not in FRAME_CODECS:
        raise ConfigError(f"decompose.frame_codec='{frame_codec}' must be one of {', '.join(FRAME_CODECS)}")
    if motion_dtype not in MOTION_DTYPES:
        raise ConfigError(f"decompose.motion_dtype='{motion_dtype}' must be one of {', '.join(MOTION_DTYPES)}")
    if not 0 <= int(crf) <= 51:
        raise ConfigError(f"decompose.frame_crf={crf} must be within 0..51 (x264's constant-rate factor)")


def encode_frames(frames: np.ndarray, codec: str, crf: int = 18) -> tuple[str, bytes]:
    """uint8 [T, H, W, 3] → (member extension, bytes)."""
    if codec == "npy":
        return "npy", npy_bytes(frames)
    import av

    ext = FRAME_EXT[codec]
    t, h, w, _ = frames.shape
    buf = io.BytesIO()
    with av.open(buf, "w", format=_CONTAINER[ext]) as container:
        stream = container.add_stream("ffv1" if codec == "ffv1" else "libx264", rate=6)
        stream.width, stream.height = w, h
        if codec == "ffv1":
            stream.pix_fmt = "bgr0"  # FFV1's lossless RGB layout (its planar gbrp needs a newer bitstream version)
        else:
            # One GOP per clip, no B-frames to reorder, one thread: same bytes on every machine and run.
            stream.pix_fmt = X264_PIX_FMT
            stream.options = {"crf": str(int(crf)), "preset": X264_PRESET, "g": str(t), "bf": "0", "threads": "1"}
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")))
        container.mux(stream.encode())
    return ext, buf.getvalue()


def decode_frames(data: bytes, ext: str) -> np.ndarray:
    """Bytes of a ``.frames.<ext>`` member → uint8 [T, H, W, 3]."""
    if ext == "npy":
        return np.load(io.BytesIO(data), allow_pickle=False)
    import av

    with av.open(io.BytesIO(data), "r", format=_CONTAINER[ext]) as container:
        stream = container.streams.video[0]
        stream.thread_count = 1
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(stream)])


def encode_motion(motion: np.ndarray, dtype: str) -> bytes:
    return npy_bytes(motion.astype(np.float16) if dtype == "float16" else motion.astype(np.float32, copy=False))


def encode_clip(record: dict, frame_codec: str = "npy", motion_dtype: str = "float32", crf: int = 18) -> list:
    """A clip record ({"key", "keyframe", "motion", optional "frames", "meta"}) → [(member name, bytes)], in the order
    readers want them: meta and motion before the large frames."""
    import json

    key = record["key"]
    if "." in key:
        raise ValueError(f"clip key {key!r} must not contain '.' (WebDataset splits names at dots)")
    members = [(f"{key}.json", json.dumps(record.get("meta", {}), sort_keys=True).encode())]
    if record.get("keyframe") is not None:
        members.append((f"{key}.keyframe.npy", npy_bytes(record["keyframe"])))
    if record.get("motion") is not None:
        members.append((f"{key}.motion.npy", encode_motion(record["motion"], motion_dtype)))
    if record.get("frames") is not None:
        ext, data = encode_frames(record["frames"], frame_codec, crf)
        members.append((f"{key}.frames.{ext}", data))
    return members


def decode_member(field: str, ext: str, data: bytes) -> Any:
    """One member's bytes → its value (meta: dict; frames: uint8 [T, H, W, 3]; motion: float32; others as stored)."""
    if field == "meta":
        import json

        return json.loads(data)
    if field == "frames":
        return decode_frames(data, ext)
    array = np.load(io.BytesIO(data), allow_pickle=False)
    if field == "motion" and array.dtype != np.float32:
        array = array.astype(np.float32)
    return array
