"""Errors a user can act on. Each names the thing that is wrong and, where it helps, what would be right."""

from __future__ import annotations

import os
from pathlib import Path


class VideolavitError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(VideolavitError):
    """A configuration key or value is wrong (unknown key, bad type, missing local path)."""


class VideoError(VideolavitError):
    """A video could not be decomposed. ``path`` names the file; the message says what is wrong with it."""

    def __init__(self, path, message: str):
        self.path = str(path)
        self.reason = message
        super().__init__(f"{self.path}: {message}")


class VideoNotFoundError(VideoError):
    """The file does not exist."""


class EmptyVideoError(VideoError):
    """The file is empty (zero bytes)."""


class UnreadableVideoError(VideoError):
    """No demuxer or decoder could open the file (not a video, or the header is broken)."""


class NoVideoStreamError(VideoError):
    """The container opens but holds no video stream (for example audio only)."""


class CorruptVideoError(VideoError):
    """Decoding failed part way (truncated file, broken packets)."""


class VideoTooShortError(VideoError):
    """The video decodes but yields fewer frames than one clip needs."""


class NoValidClipError(VideoError):
    """The video is long enough but no clip start passes the I-frame check (for example scene cuts everywhere)."""


class TimestampGapError(VideoError):
    """One source frame would be repeated past ``video.max_frames_per_source_frame`` (a gap in its timestamps)."""


class VideoTooLongError(VideoError):
    """The video runs past ``video.max_span_seconds`` (a long video, or timestamps that jump far ahead)."""


class MotionCodecError(VideolavitError):
    """The in-memory MPEG-4 re-encode failed on frames this package made: a fault of the machine, not of the video."""


class CorpusError(VideolavitError):
    """A corpus manifest or an imported dataset file is malformed."""


class MissingArtifactError(VideolavitError):
    """A stage needs the output of an earlier stage (or a pretrained local path) that is not there."""


class UnsafeCheckpointError(VideolavitError):
    """A weights file holds more than tensors (a pickle that would run code): refused unread, naming the file."""


def require_path(path: str | os.PathLike, what: str, hint: str) -> Path:
    """The path, or a MissingArtifactError naming what is missing and how to make it."""
    p = Path(path)
    if not p.exists():
        raise MissingArtifactError(f"{what} not found at '{p}'. {hint}")
    return p


class ReleaseFormatError(VideolavitError):
    """A file of the released Video-LaVIT weights is not what the converter can read safely (names the file)."""


class StageInterrupted(VideolavitError):
    """A signal stopped the stage (SIGTERM: preemption, ``docker stop``); the CLI exits ``128 + signum``."""

    def __init__(self, signum: int, message: str):
        self.signum = int(signum)
        self.exit_code = 128 + self.signum
        super().__init__(message)


class StageBusyError(VideolavitError):
    """Another process holds this stage's output lock (a second run of the same stage would write the same outputs)."""
