"""Reading a source video: open it with clear errors, decode it as a stream, resample it to a fixed fps by timestamp."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Optional

import av

from videolavit.errors import (
    CorruptVideoError,
    EmptyVideoError,
    NoVideoStreamError,
    UnreadableVideoError,
    VideoNotFoundError,
)

# Errors PyAV/FFmpeg raise on bad data; anything else is a bug of ours and should surface as such.
DECODE_ERRORS = (av.error.FFmpegError, OSError, ValueError, EOFError)
# Give up on a stream after this many undecodable packets in a row (a damaged file, not a glitch).
MAX_CONSECUTIVE_BAD_PACKETS = 32
# Packets demuxed ahead of the decoder; more than any codec's reordering depth (H.264 allows 16).
LOOKAHEAD = 18
# video.fast_decode: FFmpeg decoder options (AVDiscard "all": no deblocking; flags2 "fast": non-bit-exact shortcuts).
FAST_DECODE = {"skip_loop_filter": "all", "flags2": "+fast"}
# Drop never-shown non-reference frames before decoding (exact: the output does not change; tests switch it off).
SKIP_UNSHOWN = True


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
    """Open a container and its first video stream; every failure is a VideoError naming the file."""
    path = check_file(path)
    try:
        container = av.open(str(path), mode="r", metadata_errors="ignore")
    except DECODE_ERRORS as exc:
        if _mp4_without_index(path):
            why = "an MP4 file without its index (moov box): truncated, or still being written"
            raise CorruptVideoError(path, why) from None
        raise UnreadableVideoError(path, f"not a readable video container ({_reason(exc)})") from None
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["no streams"]
        container.close()
        raise NoVideoStreamError(path, f"the container has no video stream (it holds: {', '.join(kinds)})")
    stream = container.streams.video[0]
    if stream.codec_context is None:
        container.close()
        raise UnreadableVideoError(path, f"no decoder for the video codec '{stream.codec_tag or 'unknown'}'")
    return container, stream


def iter_resampled(
    path: str | Path,
    fps: float,
    info: SourceInfo,
    max_source_frames: Optional[int] = None,
    threads: int = 1,
    opened: Optional[tuple] = None,
    fast: bool = False,
) -> Iterator[tuple[int, av.VideoFrame]]:
    """Yield ``(k, frame)`` for k = 0, 1, …: the latest source frame whose time ≤ k / fps (after the first frame).

    Resampling by timestamp keeps 1-frame and short videos and handles variable frame rate. Frames are streamed:
    at most the decoder's own buffers and one held frame are in memory. ``info`` is updated as decoding goes.
    ``opened`` is a ``(container, stream)`` pair from :func:`open_video` to reuse (it is closed at the end).
    ``fast`` skips the decoder's deblocking filter and allows its inexact shortcuts (``video.fast_decode``).
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
        rate = stream.average_rate or stream.guessed_rate
        info.fps = float(rate) if rate else 0.0
        info.declared_frames = int(stream.frames or 0)
        if stream.duration and stream.time_base:
            info.declared_duration = float(stream.duration * stream.time_base)
        frame_duration = Fraction(1, 1) / Fraction(rate) if rate else Fraction(1, 25)
        clock = _Clock(step, stream.time_base)

        k = 0
        start: Optional[int | Fraction] = None
        planner = _ShownFrames(clock)
        held: Optional[av.VideoFrame] = None
        held_time: int | Fraction = 0
        # max_source_frames caps the span: the first N frames at the declared rate (a time limit under VFR).
        limit = clock.ticks(max_source_frames * frame_duration) if max_source_frames is not None else None
        for frame in _decode_frames(container, stream, info, planner):
            time = clock.frame_time(frame, info.decoded_frames, frame_duration)
            info.decoded_frames += 1
            if start is None:
                start, planner.start = time, frame.pts
                info.size = (frame.width, frame.height)
            time -= start
            if limit is not None and time >= limit:
                info.stopped_early = True
                break
            if held is not None and time > held_time:
                while clock.instant(k) < time:  # every output instant before this frame shows the held one
                    yield k, held
                    k += 1
            if held is None or time >= held_time:
                held, held_time = frame, time
        if held is not None:
            end = held_time + clock.held_duration(held, frame_duration)
            end = min(end, limit) if limit is not None else end
            info.end_time = clock.seconds(end)
            while k == 0 or clock.instant(k) < end:
                yield k, held
                k += 1
        if not info.fps and info.decoded_frames > 1 and info.end_time > 0:
            info.fps = info.decoded_frames / info.end_time
    finally:
        container.close()


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
        k = max(0, -(-(pts - self.start) * per_pts // self.clock.per_instant))  # first output instant at or after it
        return self.clock.instant(k) < (min(later) - self.start) * per_pts


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
