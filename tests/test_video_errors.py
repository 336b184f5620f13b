"""Bad input ends in a clear VideoError naming the file; awkward but valid input (odd sizes, VFR) decomposes."""

from __future__ import annotations

import av
import numpy as np
import pytest

from videolavit.config import load_config
from videolavit.errors import (
    ConfigError,
    CorruptVideoError,
    EmptyVideoError,
    NoVideoStreamError,
    UnreadableVideoError,
    VideoError,
    VideoNotFoundError,
    VideoTooShortError,
)
from videolavit.video import decompose_video, iter_clips
from videolavit.video.io import write_video
from fixtures.synthetic_video import moving_square


@pytest.fixture(scope="module")
def tiny():
    return load_config(profile="tiny", params_file=None)


def _square(n, width=96, height=64):
    return moving_square(width, height, n, (2, 1), size=32)


def _fails(path, error, tiny, match=None):
    with pytest.raises(error, match=match) as info:
        decompose_video(path, tiny)
    assert path.name in str(info.value) and isinstance(info.value, VideoError)
    assert info.value.path == str(path)
    return info.value


def test_missing_file(tmp_path, tiny):
    _fails(tmp_path / "missing.mp4", VideoNotFoundError, tiny, "no such file")
    with pytest.raises(VideoNotFoundError):  # iter_clips checks eagerly, before the first clip is asked for
        iter_clips(tmp_path / "missing.mp4", tiny)


def test_zero_byte_file(tmp_path, tiny):
    path = tmp_path / "empty.mp4"
    path.write_bytes(b"")
    _fails(path, EmptyVideoError, tiny, "empty")


def test_text_renamed_mp4(tmp_path, tiny):
    path = tmp_path / "notes.mp4"
    path.write_text("these are meeting notes, not a video\n" * 50)
    _fails(path, UnreadableVideoError, tiny, "not a readable video")


def test_directory(tmp_path, tiny):
    (tmp_path / "clip.mp4").mkdir()
    _fails(tmp_path / "clip.mp4", UnreadableVideoError, tiny, "not a regular file")


def test_truncated_mp4_with_index_at_the_end(tmp_path, tiny):
    data = write_video(tmp_path / "full.mp4", _square(120), fps=12).read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])  # the moov box at the end is gone
    _fails(cut, CorruptVideoError, tiny, "truncated")


@pytest.fixture(scope="module")
def faststart_bytes(tmp_path_factory):
    path = tmp_path_factory.mktemp("fs") / "fast.mp4"
    write_video(path, _square(120), fps=12, options={"movflags": "faststart"})
    data = path.read_bytes()
    assert data.find(b"moov") < data.find(b"mdat")  # the index really is at the front
    return data


def test_truncated_faststart_mp4_without_a_whole_clip(tmp_path, tiny, faststart_bytes):
    cut = tmp_path / "cut_fast.mp4"
    cut.write_bytes(faststart_bytes[: len(faststart_bytes) // 5])
    _fails(cut, CorruptVideoError, tiny, "truncated")


def test_truncated_faststart_mp4_keeps_the_clips_it_still_holds(tmp_path, tiny, faststart_bytes):
    cut = tmp_path / "cut_fast.mp4"
    cut.write_bytes(faststart_bytes[: len(faststart_bytes) * 3 // 4])  # ~7.5 s of 10 s left: one whole clip
    result = decompose_video(cut, tiny)
    assert result.truncated
    assert len(result.clips) == 1 and result.clips[0].motion.shape == (2, 24, 8, 12)


def test_audio_only_file(tmp_path, tiny):
    path = tmp_path / "speech.m4a"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        for i in range(10):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    error = _fails(path, NoVideoStreamError, tiny, "no video stream")
    assert "audio" in str(error)


def test_single_frame_video(tmp_path, tiny):
    path = write_video(tmp_path / "still.mp4", _square(1), fps=12)
    _fails(path, VideoTooShortError, tiny, "1 frame at 6 fps")


def test_video_shorter_than_one_clip(tmp_path, tiny):
    path = write_video(tmp_path / "short.mp4", _square(30), fps=12)  # 2.5 s: 15 frames at 6 fps
    _fails(path, VideoTooShortError, tiny, "15 frames at 6 fps .* needs 24")


def test_odd_frame_size_works(tmp_path, tiny):
    path = write_video(tmp_path / "odd.mp4", moving_square(97, 55, 60, (2, 1), size=32), fps=12, pix_fmt="yuv444p")
    result = decompose_video(path, tiny)
    assert result.source_size == (97, 55) and result.num_frames == 30
    assert result.clips[0].motion.shape == (2, 24, 8, 12) and result.clips[0].keyframe.shape == (64, 64, 3)


def test_variable_frame_rate_works(tmp_path, tiny):
    rng = np.random.default_rng(0)
    times = np.concatenate([[0.0], np.cumsum(rng.uniform(0.03, 0.15, 99))])  # 10–33 fps, jittering
    path = write_video(tmp_path / "vfr.mp4", _square(100), fps=12, times=times)
    result = decompose_video(path, tiny)
    # Resampling by timestamp: one frame per 1/6 s over the video's span, whatever the source spacing.
    assert int(times[-1] * 6) + 1 <= result.num_frames <= int(times[-1] * 6) + 2
    assert len(result.clips) == result.num_frames // 24
    assert all(np.isfinite(clip.motion).all() for clip in result.clips)


def test_bad_video_settings_are_config_errors(tmp_path, tiny):
    path = write_video(tmp_path / "ok.mp4", _square(24), fps=6)
    with pytest.raises(ConfigError, match="multiple of 16"):
        decompose_video(path, load_config(profile="tiny", overrides=["video.encode_width=100"], params_file=None))
    with pytest.raises(ConfigError, match="clip_policy"):
        decompose_video(path, load_config(profile="tiny", overrides=["video.clip_policy=some"], params_file=None))
