"""Reading a source video: open it with clear errors, decode it as a stream, resample it to a fixed fps by timestamp."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Optional

import av
import numpy as np

from videolavit.errors import (
    CorruptVideoError,
    EmptyVideoError,
    NoVideoStreamError,
    TimestampGapError,
    UnreadableVideoError,
    VideoNotFoundError,
    VideoTooLongError,
)

# Errors PyAV/FFmpeg raise on bad data; anything else is a bug of ours and should surface as such. Out of memory
# (av.error.MemoryError is an FFmpegError too) is this machine's fault, never the file's: each handler re-raises it.
DECODE_ERRORS = (av.error.FFmpegError, OSError, ValueError, EOFError)
# Give up on a stream after this many undecodable packets in a row (a damaged file, not a glitch).
MAX_CONSECUTIVE_BAD_PACKETS = 32
# Packets demuxed ahead of the decoder; more than any codec's reordering depth (H.264 allows 16).
LOOKAHEAD = 18
# video.fast_decode: FFmpeg decoder options (AVDiscard "all": no deblocking; flags2 "fast": non-bit-exact shortcuts).
FAST_DECODE = {"skip_loop_filter": "all", "flags2": "+fast"}
# Drop never-shown non-reference frames before decoding (exact: the output does not change; tests switch it off).
SKIP_UNSHOWN = True
# Frame rate of a stream that has neither timestamps, a container rate nor a codec (VUI) rate: FFmpeg's own default.
FALLBACK_FPS = 25


@dataclass(frozen=True)
class Orientation:
    """How a player turns the decoded picture for display: ``turns`` quarter turns counter-clockwise, then a mirror
    (left-right) when ``mirror``; together the eight EXIF orientations."""

    turns: int = 0  # 0..3
    mirror: bool = False

    @property
    def upright(self) -> bool:
        return self.turns == 0 and not self.mirror

    @property
    def swaps_axes(self) -> bool:
        return self.turns % 2 == 1

    @property
    def degrees(self) -> int:
        return 90 * self.turns

    def apply(self, image: np.ndarray, axes: tuple[int, int] = (0, 1)) -> np.ndarray:
        """Coded picture → as displayed; ``axes`` are its (rows, columns): [H, W, C] by default, (1, 2) for planes."""
        out = np.rot90(image, self.turns, axes=axes)
        return np.ascontiguousarray(np.flip(out, axis=axes[1]) if self.mirror else out)


UPRIGHT = Orientation()


@dataclass
class SourceInfo:
    """What the decoder learned about a source video; filled in while frames stream through."""

    path: str
    fps: float = 0.0  # the stream's declared average rate, else measured from timestamps
    size: tuple[int, int] = (0, 0)  # (width, height) of the first decoded frame
    declared_frames: int = 0  # from the container header (0: unknown)
    declared_duration: Optional[float] = None  # seconds, from the video stream header
    packets: int = 0  # video packets read (source frames, whether decoded or skipped as never shown)
    decoded_frames: int = 0
    bad_packets: int = 0
    end_time: float = 0.0  # seconds after the first frame where the last decoded frame stops showing
    stopped_early: bool = False  # max_source_frames was reached
    orientation: Orientation = UPRIGHT  # what a player does to the decoded picture (display matrix / rotate tag)
    stream_index: int = -1  # the video stream chosen among the container's (see open_video)
    errors: list[str] = field(default_factory=list)

    @property
    def truncated(self) -> bool:
        """True when part of the video could not be decoded (damaged packets, or a file cut short)."""
        if self.stopped_early:
            return False
        if self.errors:
            return True
        if self.declared_frames > 0 and self.packets < 0.95 * self.declared_frames - 2:
            return True
        if self.declared_duration and self.end_time < 0.9 * self.declared_duration - 1.0:
            return True
        return False


def check_file(path: str | Path) -> Path:
    """The path, after the checks that need no decoder: it exists, is a file, and is not empty."""
    path = Path(path)
    if not path.exists():
        raise VideoNotFoundError(path, "no such file")
    if not path.is_file():
        raise UnreadableVideoError(path, "not a regular file (a directory?)")
    if path.stat().st_size == 0:
        raise EmptyVideoError(path, "the file is empty (0 bytes)")
    return path


def open_video(path: str | Path) -> tuple[av.container.InputContainer, av.video.stream.VideoStream]:
    """Open a container and its main video stream (:func:`best_video_stream`); every failure is a VideoError."""
    path = check_file(path)
    try:
        container = av.open(str(path), mode="r", metadata_errors="ignore")
    except MemoryError:
        raise
    except DECODE_ERRORS as exc:
        if _mp4_without_index(path):
            why = "an MP4 file without its index (moov box): truncated, or still being written"
            raise CorruptVideoError(path, why) from None
        raise UnreadableVideoError(path, f"not a readable video container ({_reason(exc)})") from None
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["no streams"]
        container.close()
        raise NoVideoStreamError(path, f"the container has no video stream (it holds: {', '.join(kinds)})")
    stream = best_video_stream(container.streams.video)
    if stream.codec_context is None:
        container.close()
        raise UnreadableVideoError(path, f"no decoder for the video codec '{stream.codec_tag or 'unknown'}'")
    return container, stream


def best_video_stream(streams) -> av.video.stream.VideoStream:
    """The stream a player would show, as FFmpeg picks it: decodable before not, a moving picture before cover art
    (an attached picture), then the largest frame area, the default disposition, the highest bit rate, the first."""

    def rank(stream) -> tuple:
        context = stream.codec_context
        cover = bool(stream.disposition & av.stream.Disposition.attached_pic)
        default = bool(stream.disposition & av.stream.Disposition.default)
        area = (context.width * context.height) if context is not None else 0
        return (context is not None, not cover, area, default, int(context.bit_rate or 0) if context else 0)

    return max(streams, key=rank)  # max keeps the first of equals


def stream_orientation(stream, frame: av.VideoFrame) -> Orientation:
    """The display matrix a decoded frame carries (FFmpeg copies the container's onto each frame), else the stream's
    ``rotate`` tag (clockwise degrees, as older FFmpeg wrote it), rounded to whole quarter turns."""
    for side in frame.side_data:
        if getattr(side.type, "name", "") == "DISPLAYMATRIX":
            m = np.frombuffer(bytes(side), dtype=np.int32).astype(np.int64)  # 3×3, 16.16 fixed point, row major
            a, b, c, d = (int(v) for v in (m[0], m[1], m[3], m[4]))
            # The matrix is R(θ) with its first column negated when mirrored: θ counter-clockwise = atan2(-b, d).
            turns = round(math.degrees(math.atan2(-b, d)) / 90) % 4
            return Orientation(turns, a * d - b * c < 0)
    tags = {str(k).lower(): v for k, v in (stream.metadata or {}).items()}
    try:
        clockwise = float(tags.get("rotate", 0) or 0)
    except ValueError:
        return UPRIGHT  # an unreadable tag: show the picture as coded, as players do
    return Orientation(round(-clockwise / 90) % 4, False)


def iter_resampled(
    path: str | Path,
    fps: float,
    info: SourceInfo,
    max_source_frames: Optional[int] = None,
    threads: int = 1,
    opened: Optional[tuple] = None,
    fast: bool = False,
    max_frames_per_source_frame: Optional[int] = None,
    max_span_seconds: Optional[float] = None,
) -> Iterator[tuple[int, av.VideoFrame]]:
    """Yield ``(k, frame)`` for k = 0, 1, …: the latest source frame whose time ≤ k / fps (after the first frame).

    Resampling by timestamp keeps 1-frame and short videos and handles variable frame rate. Frames are streamed:
    at most the decoder's own buffers and one held frame are in memory. ``info`` is updated as decoding goes.
    ``opened`` is a ``(container, stream)`` pair from :func:`open_video` to reuse (it is closed at the end).
    ``fast`` skips the decoder's deblocking filter and allows its inexact shortcuts (``video.fast_decode``).
    A source frame that would fill more than ``max_frames_per_source_frame`` outputs (a timestamp gap) raises
    TimestampGapError, a frame later than ``max_span_seconds`` VideoTooLongError, before any of it is yielded.
    """
    step = Fraction(fps).limit_denominator(1_000_000)
    if step <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    container, stream = opened or open_video(path)
    try:
        if threads != 1:  # frame threading: 0 means one thread per core
            stream.thread_type = "AUTO"
        stream.thread_count = max(0, int(threads))
        if fast:  # read when the decoder opens, at the first packet
            stream.codec_context.options = {**stream.codec_context.options, **FAST_DECODE}
        info.stream_index = stream.index
        rate = stream.average_rate or stream.guessed_rate
        info.fps = float(rate) if rate else 0.0
        info.declared_frames = int(stream.frames or 0)
        if stream.duration and stream.time_base:
            info.declared_duration = float(stream.duration * stream.time_base)
        clock = _Clock(step, stream.time_base)
        caps = _Caps(path, clock, fps, max_frames_per_source_frame, max_span_seconds)

        k = 0
        start: Optional[int | Fraction] = None
        planner = _ShownFrames(clock)
        held: Optional[av.VideoFrame] = None
        held_time: int | Fraction = 0
        frame_duration = Fraction(1, FALLBACK_FPS)
        limit = None
        for frame in _decode_frames(container, stream, info, planner):
            if start is None:
                rate = _untimed_rate(stream, frame) or rate
                info.fps = float(rate) if rate else info.fps
                frame_duration = 1 / Fraction(rate) if rate else frame_duration
                # max_source_frames caps the span: the first N frames at the declared rate (a time limit under VFR).
                if max_source_frames is not None:
                    limit = clock.ticks(max_source_frames * frame_duration) - clock.slack
            time = clock.frame_time(frame, info.decoded_frames, frame_duration)
            info.decoded_frames += 1
            if start is None:
                start, planner.start = time, frame.pts
                info.size = (frame.width, frame.height)
                info.orientation = stream_orientation(stream, frame)
            time -= start + clock.slack  # see _Clock.slack
            if limit is not None and time >= limit:
                info.stopped_early = True
                break
            if held is not None and time > held_time:
                caps.check(k, held_time, time)
                while clock.instant(k) < time:  # every output instant before this frame shows the held one
                    yield k, held
                    k += 1
            if held is None or time >= held_time:
                held, held_time = frame, time
        if held is not None:
            end = held_time + clock.held_duration(held, frame_duration)
            end = min(end, limit) if limit is not None else end
            caps.check(k, held_time, end)
            info.end_time = clock.seconds(end + clock.slack)
            while k == 0 or clock.instant(k) < end:
                yield k, held
                k += 1
        if not info.fps and info.decoded_frames > 1 and info.end_time > 0:
            info.fps = info.decoded_frames / info.end_time
    finally:
        container.close()


def _untimed_rate(stream, frame: av.VideoFrame) -> Optional[Fraction]:
    """The codec's own rate (H.264/HEVC VUI timing) for a stream whose frames carry no timestamps (a raw elementary
    stream), where the container's rate is only the demuxer's default; None otherwise."""
    if frame.pts is not None and frame.time_base:
        return None
    vui = stream.codec_context.framerate
    return Fraction(vui) if vui and vui > 0 else None


class _Caps:
    """The resampler's bounds: one source frame fills at most ``per_frame`` outputs, and no frame is later than
    ``span`` seconds; past either the video is rejected before anything of it is repeated."""

    def __init__(self, path, clock: "_Clock", fps: float, per_frame: Optional[int], span: Optional[float]):
        self.path, self.clock, self.fps, self.per_frame, self.span = path, clock, fps, per_frame, span
        self.span_ticks = clock.ticks(Fraction(span)) if span is not None else None

    def check(self, k: int, held_time, until) -> None:
        """The frame held from ``held_time`` is shown at output instants k… before ``until`` (ticks)."""
        clock = self.clock
        if self.span_ticks is not None and until > self.span_ticks:
            raise VideoTooLongError(
                self.path,
                f"it runs past {self.span:g} s (a frame until {clock.seconds(until):.1f} s after the first), over "
                f"video.max_span_seconds={self.span:g}: raise it, or take only the start with video.max_source_frames",
            )
        if self.per_frame is None:
            return
        repeats = max(1, -(-until // clock.per_instant)) - k  # instants before `until` not yet yielded
        if repeats > self.per_frame:
            raise TimestampGapError(
                self.path,
                f"the frame at {clock.seconds(held_time):.2f} s would be repeated {repeats} times at {self.fps:g} fps "
                f"(shown for {clock.seconds(until - held_time):.1f} s: a gap in its timestamps), over "
                f"video.max_frames_per_source_frame={self.per_frame}",
            )


class _ShownFrames:
    """Tells, before a packet is decoded, whether its frame will be held at some output instant start + k / fps.

    Frames that will not be shown and that no other frame references (H.264/HEVC non-reference frames, MPEG B-frames)
    need not be decoded at all: at 30 → 6 fps that skips a large share of the source decoding, exactly. Times are
    the resampler's integer ticks (:class:`_Clock`), so the per-packet test is a few integer operations.
    """

    def __init__(self, clock: "_Clock"):
        self.clock = clock
        self.start: Optional[int] = None  # pts of the first decoded frame (set by the resampler)
        self.recent: deque[int] = deque(maxlen=2 * LOOKAHEAD)

    def shown(self, pts: Optional[int], upcoming: list[Optional[int]]) -> bool:
        per_pts = self.clock.per_pts  # ticks per pts unit; 0 without a time base
        if pts is None or not per_pts:
            return True
        later = [t for t in (*self.recent, *upcoming) if t is not None and t > pts]
        self.recent.append(pts)
        if not SKIP_UNSHOWN or self.start is None or not later:
            return True  # no skipping yet, or its successor is unknown (the last frames): keep it
        slack = self.clock.slack  # the resampler's times are earlier by this (see _Clock.slack)
        k = max(0, -(-((pts - self.start) * per_pts - slack) // self.clock.per_instant))  # first instant at/after it
        return self.clock.instant(k) < (min(later) - self.start) * per_pts - slack


def _decode_frames(container, stream, info: SourceInfo, planner: _ShownFrames) -> Iterator[av.VideoFrame]:
    """Decode packet by packet: one damaged packet is skipped instead of ending the video, and frames that will never
    be shown are dropped before decoding when the codec allows it (non-reference frames)."""
    context = stream.codec_context
    bad_in_a_row = 0
    packets = container.demux(stream)
    ahead: deque = deque()  # a few demuxed packets: their timestamps tell each frame's display-order successor
    exhausted = False
    skipping = False
    while True:
        while not exhausted and len(ahead) < LOOKAHEAD:
            try:
                ahead.append(next(packets))
            except StopIteration:
                exhausted = True
            except MemoryError:
                raise
            except DECODE_ERRORS as exc:
                info.errors.append(f"demux: {_reason(exc)}")
                exhausted = True
        if not ahead:
            break
        packet = ahead.popleft()
        if packet.size:
            info.packets += 1
            shown = planner.shown(packet.pts, [p.pts for p in ahead])
            if shown == skipping:  # only touch the context when the decision changes
                skipping = not shown
                context.skip_frame = "NONREF" if skipping else "DEFAULT"
        try:
            frames = packet.decode()
        except MemoryError:
            raise
        except DECODE_ERRORS as exc:
            info.bad_packets += 1
            bad_in_a_row += 1
            if bad_in_a_row == 1 or bad_in_a_row >= MAX_CONSECUTIVE_BAD_PACKETS:
                info.errors.append(f"decode: {_reason(exc)}")
            if bad_in_a_row >= MAX_CONSECUTIVE_BAD_PACKETS:
                break
            continue
        bad_in_a_row = 0
        yield from frames
    if skipping:
        context.skip_frame = "DEFAULT"
    try:  # drain the decoder, in case the demuxer ended without its flush packet
        yield from context.decode(None)
    except av.error.EOFError:
        pass  # already drained by the demuxer's final empty packet
    except MemoryError:
        raise
    except DECODE_ERRORS as exc:
        info.errors.append(f"flush: {_reason(exc)}")


def _mp4_without_index(path: Path) -> bool:
    """True for an MP4/MOV whose top-level boxes end (or break off) before any ``moov`` box: a cut-off file."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8 or head[4:8] != b"ftyp":
            return False
        offset = 0
        while offset + 8 <= size:
            f.seek(offset)
            header = f.read(16)
            box_size, kind = int.from_bytes(header[:4], "big"), header[4:8]
            if kind == b"moov":
                return False
            if box_size == 1 and len(header) == 16:  # 64-bit size follows the type
                box_size = int.from_bytes(header[8:16], "big")
            if box_size < 8:
                break  # 0 means "to the end of the file"; smaller is garbage
            offset += box_size
        return True


class _Clock:
    """Exact times as integer ticks (seconds × the time base's denominator × the output rate's numerator), so that
    the per-frame work is integer arithmetic rather than ``Fraction`` arithmetic. Times a frame without timestamps
    needs (its index at the declared rate) stay exact as Fractions of a tick."""

    def __init__(self, step: Fraction, time_base: Optional[Fraction]):
        self.time_base = Fraction(time_base) if time_base else None
        base = self.time_base.denominator if self.time_base else 1
        self.scale = base * step.numerator  # ticks per second
        self.per_instant = base * step.denominator  # ticks between output instants (1 / fps seconds)
        self.per_pts = self.time_base.numerator * step.numerator if self.time_base else 0
        # Half a timestamp unit, taken off every frame time: a container that rounds times to its unit (Matroska and
        # WebM: 1 ms) puts frame 1 of a 6 fps video at 167 ms, just after the output instant 166.7 ms, which would
        # otherwise show frame 0 twice and skip frame 1 (FFmpeg's fps filter rounds to the nearest instant too).
        self.slack = self.per_pts // 2

    def ticks(self, seconds: Fraction) -> int | Fraction:
        return seconds * self.scale

    def seconds(self, ticks: int | Fraction) -> float:
        return float(Fraction(ticks) / self.scale)

    def instant(self, k: int) -> int:
        """Output instant k (k / fps seconds after the first frame)."""
        return k * self.per_instant

    def _pts_ticks(self, value: int, time_base: Optional[Fraction]) -> int | Fraction:
        if time_base == self.time_base:
            return value * self.per_pts
        return self.ticks(value * Fraction(time_base))

    def frame_time(self, frame: av.VideoFrame, index: int, frame_duration: Fraction) -> int | Fraction:
        if frame.pts is not None and frame.time_base:
            return self._pts_ticks(frame.pts, frame.time_base)
        return self.ticks(index * frame_duration)  # no timestamps: assume the declared constant rate

    def held_duration(self, frame: av.VideoFrame, default: Fraction) -> int | Fraction:
        duration = getattr(frame, "duration", None)
        if duration and frame.time_base:
            return self._pts_ticks(duration, frame.time_base)
        return self.ticks(default)


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return text.strip().rstrip(".")


def raise_undecodable(info: SourceInfo) -> None:
    """Raise CorruptVideoError when not a single frame decoded; the message carries the decoder's reason."""
    if info.decoded_frames == 0:
        why = "; ".join(info.errors[:2]) or "the video stream holds no decodable frame"
        raise CorruptVideoError(info.path, f"no frame could be decoded ({why})")
