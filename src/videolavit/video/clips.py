"""Video → clips of (keyframe, motion): the decomposition contract of Video-LaVIT, streamed with bounded memory."""

from __future__ import annotations

import logging
from collections import deque
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Optional

import av
from av.video.reformatter import VideoReformatter
import numpy as np
from PIL import Image

from videolavit.errors import (
    ConfigError,
    CorruptVideoError,
    MotionCodecError,
    NoValidClipError,
    VideoTooShortError,
)
from videolavit.video.motion import MACROBLOCK, MotionCodec, normalize_motion, resize_grid, video_section
from videolavit.video.source import (
    DECODE_ERRORS,
    Orientation,
    SourceInfo,
    iter_resampled,
    open_video,
    raise_undecodable,
)

log = logging.getLogger(__name__)
POLICIES = ("all", "every_other", "max")
# swscale's area filter: a proper box average when shrinking (bilinear when enlarging), 2-3× cheaper than bicubic.
SCALER = "AREA"


@dataclass
class Clip:
    """One clip: its keyframe (the I-frame it starts at) and the motion of its ``clip_frames`` frames."""

    index: int  # 0-based clip number in the video
    start_frame: int  # index of the first frame in the resampled (video.fps) frame sequence
    start_time: float  # seconds after the video's first frame
    keyframe: np.ndarray  # uint8 [S, S, 3]
    motion: np.ndarray  # float32 [2, T, h, w], normalized tokenizer input (x then y)
    frames: Optional[np.ndarray] = None  # uint8 [T, Hf, Wf, 3] with keep_frames=True


@dataclass
class Decomposition:
    """A decomposed video: its clips and what was learned about the source while decoding it."""

    path: str
    clips: list[Clip]
    num_frames: int  # resampled frames (at ``fps``)
    fps: float
    source_fps: float
    source_size: tuple[int, int]  # (width, height)
    iframe_indices: list[int] = field(default_factory=list)  # resampled indices the mpeg4 re-encode made I-frames
    truncated: bool = False  # part of the file did not decode; the clips come from the part that did


class _Frame(NamedTuple):
    index: int
    is_iframe: bool
    motion: Optional[np.ndarray]  # px/frame [2, rows, cols]
    source: Optional[av.VideoFrame]  # the source frame of an I-frame (a possible keyframe), converted only if used
    image: Optional[np.ndarray]  # uint8 [Hf, Wf, 3] with keep_frames


class ClipStream:
    """Iterator over a video's clips (single use). Metadata attributes are complete once iteration has finished.

    Streaming policies (``all``, ``every_other``) decode the video once; a cap on the number of clips (``max``, or
    ``every_other`` with ``max_clips``) needs the total count first, so the video is encoded twice: a first pass that
    only records the I-frame layout, then a second one that builds the chosen clips and stops after the last one.
    A truncated or damaged file yields the clips of its decodable part (``truncated`` is then True, with the decoder's
    reasons in ``source.errors``); it raises CorruptVideoError only when that part holds no clip. Frames are turned
    as a player shows them (``source.orientation``). A failure of the re-encode itself raises MotionCodecError (and
    running out of memory MemoryError): faults of the machine, which must not be counted against the video.
    """

    def __init__(self, path: str | Path, config: Any, keep_frames: bool = False):
        self.path = str(path)
        self.video = _checked_settings(config)
        self.keep_frames = keep_frames
        # Missing, empty, unreadable and audio-only files fail here, before any decoding; the first pass reuses it.
        self._opened: Optional[tuple] = open_video(path)
        self.fps = float(self.video.fps)
        self.num_frames = 0
        self.iframe_indices: list[int] = []
        self.source = SourceInfo(self.path)
        self._clips = self._run()

    def __iter__(self) -> "ClipStream":
        return self

    def __next__(self) -> Clip:
        return next(self._clips)

    @property
    def source_fps(self) -> float:
        return self.source.fps

    @property
    def source_size(self) -> tuple[int, int]:
        return self.source.size

    @property
    def truncated(self) -> bool:
        return self.source.truncated

    def _run(self) -> Iterator[Clip]:
        video = self.video
        cap = video.max_clips if video.clip_policy in ("max", "every_other") else None
        if cap is None:
            count = 0
            for count, (_, start, window) in enumerate(self._candidates(build=True), start=1):
                yield self._clip(count - 1, start, window)
            if count == 0:
                self._raise_no_clip()
            self._warn_if_truncated(count)
            return
        total = sum(1 for _ in self._candidates(build=False))
        if total == 0:
            self._raise_no_clip()
        chosen = set(np.linspace(0, total - 1, min(int(cap), total)).astype(int).tolist())  # floor, as the official
        first_pass = (self.num_frames, list(self.iframe_indices), self.source)
        emitted = 0
        with closing(self._candidates(build=True)) as candidates:
            for ordinal, start, window in candidates:
                if ordinal in chosen:
                    yield self._clip(emitted, start, window)
                    emitted += 1
                    if emitted == len(chosen):
                        break
        self.num_frames, self.iframe_indices, self.source = first_pass
        self._warn_if_truncated(emitted)

    def _candidates(self, build: bool) -> Iterator[tuple[int, int, list[_Frame]]]:
        """Yield (ordinal, start, frames) for each clip start the policy admits, in order, before any thinning."""
        video = self.video
        T, G = int(video.clip_frames), int(video.gop)
        width, height = int(video.encode_width), int(video.encode_height)
        self.source = SourceInfo(self.path)
        self.num_frames, self.iframe_indices = 0, []
        codec = MotionCodec(width, height, self.fps, G, int(video.bitrate), with_motion=build)
        window: deque[_Frame] = deque(maxlen=T)
        pending: dict[int, av.VideoFrame] = {}  # frames inside the codec, by resampled index
        ordinal, valid, last_taken = 0, 0, -T
        first_two: list[tuple[int, list[_Frame]]] = []
        resized: tuple[Optional[av.VideoFrame], Optional[av.VideoFrame]] = (None, None)
        scaler = VideoReformatter()  # one swscale context for the whole video (frame.reformat rebuilds it per call)
        frames = iter_resampled(
            self.path, self.fps, self.source, video.max_source_frames, threads=int(video.threads), opened=self._opened,
            fast=bool(video.fast_decode), max_frames_per_source_frame=video.max_frames_per_source_frame,
            max_span_seconds=video.max_span_seconds,
        )
        self._opened = None
        try:
            for k, source in _with_flush(frames):
                if source is not None:
                    if resized[0] is not source:  # a held frame repeats when upsampling: scale it once
                        upright = _scaled(source, width, height, "yuv420p", self.source.orientation, scaler)
                        resized = (source, upright)
                    pending[k] = source
                    self.num_frames = k + 1
                outputs = self._push(codec, resized[1] if source is not None else None, k)
                for index, is_iframe, motion in outputs:
                    window.append(self._frame(index, is_iframe, motion, pending.pop(index), build))
                    if is_iframe:
                        self.iframe_indices.append(index)
                    if len(window) < T or not _starts_clip(window, G):
                        continue
                    start = window[0].index
                    valid += 1
                    if video.clip_policy == "every_other":
                        # The official sampler keeps valid starts [1::2], but [0::2] when there are only 1 or 2:
                        # hold the first two until a third shows which case this is.
                        if valid <= 2:
                            first_two.append((start, list(window)))
                            continue
                        if valid == 3:
                            yield ordinal, *first_two[1]
                            ordinal += 1
                            first_two.clear()
                        if valid % 2 == 1:
                            continue
                    elif start < last_taken + T:  # all / max: clips do not overlap
                        continue
                    last_taken = start
                    yield ordinal, start, list(window)
                    ordinal += 1
            if first_two:  # every_other with only 1 or 2 valid starts: the first one
                yield ordinal, *first_two[0]
        except MemoryError:
            raise
        except DECODE_ERRORS as exc:  # converting a source frame failed: something in the file (its pixel format)
            why = f"converting source frame {self.num_frames} to the encode size failed: {exc}"
            raise CorruptVideoError(self.path, why) from None
        finally:
            frames.close()

    def _push(self, codec: MotionCodec, frame: Optional[av.VideoFrame], k: int) -> list:
        """One frame through the in-memory MPEG-4 round trip. It only ever sees frames made here (yuv420p at the
        encode size), so its failure (out of memory included) is the machine's, not the video's."""
        try:
            return codec.push(frame, k) if frame is not None else codec.push(None)
        except MemoryError:
            raise
        except DECODE_ERRORS as exc:
            raise MotionCodecError(
                f"{self.path}: the in-memory MPEG-4 re-encode failed at frame {k} ({type(exc).__name__}: {exc}); "
                "a fault of this machine or of the codec, not of the video"
            ) from exc

    def _frame(self, index: int, is_iframe: bool, motion, source: av.VideoFrame, build: bool) -> _Frame:
        image = None
        if build and self.keep_frames:
            w, h = int(self.video.frames_width), int(self.video.frames_height)
            image = _scaled(source, w, h, "rgb24", self.source.orientation).to_ndarray()
        return _Frame(index, is_iframe, motion, source if build and is_iframe else None, image)

    def _clip(self, index: int, start: int, window: list[_Frame]) -> Clip:
        video = self.video
        G = int(video.gop)
        motion = np.stack([f.motion for f in window], axis=1)  # [2, T, rows, cols] px/frame
        motion[:, 0] = 0.0  # the keyframe itself has no motion
        for j in range(G, motion.shape[1] - 1, G):
            if window[j].is_iframe:  # an I-frame inside the clip carries no vectors: interpolate its neighbours
                motion[:, j] = 0.5 * (motion[:, j - 1] + motion[:, j + 1])
        motion = resize_grid(motion, int(video.motion_height), int(video.motion_width))
        motion = normalize_motion(motion, video).astype(np.float32)  # [2, T, h, w]
        frames = np.stack([f.image for f in window]) if self.keep_frames else None  # [T, Hf, Wf, 3]
        size = int(video.keyframe_size)
        rgb = Image.fromarray(self.source.orientation.apply(window[0].source.to_ndarray(format="rgb24")))
        keyframe = np.asarray(rgb.resize((size, size), Image.BICUBIC))  # [S, S, 3], like the official 224×224 resize
        return Clip(index, start, start / self.fps, keyframe, motion, frames)

    def _raise_no_clip(self) -> None:
        raise_undecodable(self.source)
        T, G = int(self.video.clip_frames), int(self.video.gop)
        plural = "s" if self.num_frames != 1 else ""
        have = f"{self.num_frames} frame{plural} at {self.fps:g} fps ({self.num_frames / self.fps:.2f} s)"
        if self.source.truncated:
            why = "; ".join(self.source.errors[:2]) or f"decoded {self.source.decoded_frames} frames"
            raise CorruptVideoError(self.path, f"truncated or damaged ({why}): its decodable part, {have}, has no clip")
        if self.num_frames < T:
            raise VideoTooShortError(self.path, f"{have}; one clip needs {T} frames ({T / self.fps:.2f} s)")
        raise NoValidClipError(
            self.path,
            f"{have}, but no {T}-frame clip starts at an I-frame followed by the next one {G} frames later "
            f"(I-frames at {self.iframe_indices[:20]})",
        )

    def _warn_if_truncated(self, clips: int) -> None:
        if self.source.truncated:
            log.warning("%s: truncated or damaged (%s); kept %d clip(s) from its decodable part",
                        self.path, "; ".join(self.source.errors[:2]) or "fewer frames than declared", clips)


def _scaled(
    frame: av.VideoFrame, width: int, height: int, fmt: str, orientation: Orientation, scaler=None
) -> av.VideoFrame:
    """``frame`` at width × height in ``fmt``, turned as a player shows it: scaled first, so that the turn works on
    the small picture; yuv420p turns as yuv444p planes (no colour conversion)."""

    def reformat(w: int, h: int, to: str) -> av.VideoFrame:
        if scaler is not None:
            return scaler.reformat(frame, w, h, to, interpolation=SCALER)
        return frame.reformat(w, h, to, interpolation=SCALER)

    if orientation.upright:
        return reformat(width, height, fmt)
    w, h = (height, width) if orientation.swaps_axes else (width, height)
    if fmt == "rgb24":
        return av.VideoFrame.from_ndarray(orientation.apply(reformat(w, h, "rgb24").to_ndarray()), format="rgb24")
    planes = orientation.apply(reformat(w, h, "yuv444p").to_ndarray(), axes=(1, 2))  # [3, height, width]
    return av.VideoFrame.from_ndarray(planes, format="yuv444p").reformat(format=fmt)


def _with_flush(frames):
    yield from frames
    yield -1, None


def _starts_clip(window: deque, gop: int) -> bool:
    """The window's first frame is an I-frame whose next I-frame is exactly ``gop`` frames later."""
    return window[0].is_iframe and window[gop].is_iframe and not any(window[j].is_iframe for j in range(1, gop))


def _checked_settings(config: Any) -> Any:
    video = video_section(config)
    problems = []
    for key in ("encode_width", "encode_height"):
        value = int(getattr(video, key))
        if value <= 0 or value % MACROBLOCK:
            problems.append(f"video.{key}={value} must be a positive multiple of {MACROBLOCK} (whole macroblocks)")
    if not float(video.fps) > 0:
        problems.append(f"video.fps={video.fps} must be positive")
    if not 0 < int(video.gop) < int(video.clip_frames):
        problems.append(f"video.gop={video.gop} must be positive and below video.clip_frames={video.clip_frames}")
    if video.clip_policy not in POLICIES:
        problems.append(f"video.clip_policy='{video.clip_policy}' must be one of {', '.join(POLICIES)}")
    if video.max_clips is not None and int(video.max_clips) < 1:
        problems.append(f"video.max_clips={video.max_clips} must be at least 1 (or null)")
    for key in ("motion_height", "motion_width", "keyframe_size", "frames_height", "frames_width"):
        if int(getattr(video, key)) <= 0:
            problems.append(f"video.{key}={getattr(video, key)} must be positive")
    if len(video.motion_std) != 2:
        problems.append(f"video.motion_std must hold 2 values (x, y), got {list(video.motion_std)}")
    cap = video.max_frames_per_source_frame
    if cap is not None and int(cap) < 1:
        problems.append(f"video.max_frames_per_source_frame={cap} must be at least 1 (or null: no cap)")
    span = video.max_span_seconds
    if span is not None and not float(span) > 0:
        problems.append(f"video.max_span_seconds={span} must be positive (or null: no cap)")
    if problems:
        raise ConfigError("; ".join(problems))
    return video


def iter_clips(path: str | Path, config: Any, keep_frames: bool = False) -> ClipStream:
    """The clips of one video, one by one with bounded memory (``config``: the ``video`` section, or a full config).

    Once iterated, the stream's ``truncated`` (and ``source.errors``) tell whether part of the file was lost."""
    return ClipStream(path, config, keep_frames)


def decompose_video(path: str | Path, config: Any, keep_frames: bool = False) -> Decomposition:
    """Decompose a video into keyframe + motion clips (see :class:`ClipStream` for the policies and errors)."""
    stream = ClipStream(path, config, keep_frames)
    clips = list(stream)
    return Decomposition(
        path=stream.path,
        clips=clips,
        num_frames=stream.num_frames,
        fps=stream.fps,
        source_fps=stream.source_fps,
        source_size=stream.source_size,
        iframe_indices=list(stream.iframe_indices),
        truncated=stream.truncated,
    )
