"""Clip selection policies, timestamp resampling and streaming of the decomposition."""

from __future__ import annotations

import numpy as np
import pytest

import videolavit.video.source as source
from videolavit.config import load_config
from videolavit.video import ClipStream, decompose_video, iter_clips
from videolavit.video.io import write_video
from fixtures.synthetic_video import moving_square


def _tiny(*overrides):
    return load_config(profile="tiny", overrides=list(overrides), params_file=None)


@pytest.fixture(scope="module")
def long_video(tmp_path_factory):
    """16 s at 12 fps: 96 frames at 6 fps, I-frames at 0, 12, …, 84."""
    path = tmp_path_factory.mktemp("clips") / "long.mp4"
    return write_video(path, moving_square(96, 64, 192, (1, 1), size=32, period=48), fps=12)


@pytest.mark.parametrize(
    ("overrides", "starts"),
    [
        ((), [0, 24, 48, 72]),  # all: non-overlapping
        (("video.clip_policy=every_other",), [12, 36, 60]),  # official: valid starts 0, 12, …, 72, then [1::2]
        (("video.clip_policy=max", "video.max_clips=2"), [0, 72]),  # `all` thinned uniformly
        (("video.clip_policy=max", "video.max_clips=3"), [0, 24, 72]),  # np.linspace(0, 3, 3) floored, as official
        (("video.clip_policy=max", "video.max_clips=9"), [0, 24, 48, 72]),
        (("video.clip_policy=every_other", "video.max_clips=2"), [12, 60]),
    ],
)
def test_clip_policies(long_video, overrides, starts):
    cfg = _tiny("video.motion_height=4", "video.motion_width=6", *overrides)
    result = decompose_video(long_video, cfg)
    assert [clip.start_frame for clip in result.clips] == starts
    assert [clip.index for clip in result.clips] == list(range(len(starts)))
    assert [clip.start_time for clip in result.clips] == [s / 6 for s in starts]
    assert result.num_frames == 96 and result.iframe_indices == list(range(0, 96, 12))
    assert all(clip.motion.shape == (2, 24, 4, 6) for clip in result.clips)


@pytest.mark.parametrize(("seconds", "starts"), [(5, [0]), (6, [0]), (8, [12])])
def test_every_other_keeps_the_first_start_of_short_videos(tmp_path, seconds, starts):
    # Valid starts: 5 s → [0], 6 s → [0, 12], 8 s → [0, 12, 24]. The official sampler takes [0::2] of one or two.
    path = write_video(tmp_path / "v.mp4", moving_square(96, 64, 6 * seconds, (1, 1), size=32), fps=6)
    result = decompose_video(path, _tiny("video.clip_policy=every_other"))
    assert [clip.start_frame for clip in result.clips] == starts


def test_iter_clips_streams_the_same_clips(long_video):
    cfg = _tiny()
    stream = iter_clips(long_video, cfg)
    assert isinstance(stream, ClipStream)
    first = next(stream)
    assert first.start_frame == 0 and stream.num_frames < 96  # only part of the video was decoded so far
    rest = list(stream)
    whole = decompose_video(long_video, cfg)
    assert [c.start_frame for c in [first, *rest]] == [c.start_frame for c in whole.clips]
    for a, b in zip([first, *rest], whole.clips):
        np.testing.assert_array_equal(a.motion, b.motion)
        np.testing.assert_array_equal(a.keyframe, b.keyframe)
    assert stream.num_frames == 96 and stream.source_fps == 12.0 and stream.source_size == (96, 64)


@pytest.mark.parametrize(("source_fps", "frames", "expected"), [(30, 150, 30), (12, 60, 30), (6, 30, 30), (4, 20, 30)])
def test_resampling_by_timestamp(tmp_path, source_fps, frames, expected):
    path = write_video(tmp_path / "v.mp4", moving_square(96, 64, frames, (1, 0), size=32), fps=source_fps)
    result = decompose_video(path, _tiny())
    assert result.num_frames == expected and result.source_fps == pytest.approx(source_fps)
    if source_fps < 6:  # a held source frame repeats: the repeats have no motion
        repeats = [t for t in range(1, 24) if (t * source_fps) // 6 == ((t - 1) * source_fps) // 6]
        assert repeats and not result.clips[0].motion[:, repeats].any()


def test_skipping_unshown_frames_changes_nothing(tmp_path, monkeypatch):
    # libx264's default B-frames at 30 fps: most non-reference frames are never shown at 6 fps and are skipped.
    path = write_video(tmp_path / "b.mp4", moving_square(96, 64, 150, (3, -1), size=32), fps=30)
    fast = decompose_video(path, _tiny())
    monkeypatch.setattr(source, "SKIP_UNSHOWN", False)
    exact = decompose_video(path, _tiny())
    assert fast.num_frames == exact.num_frames and fast.iframe_indices == exact.iframe_indices
    for a, b in zip(fast.clips, exact.clips, strict=True):
        np.testing.assert_array_equal(a.motion, b.motion)
        np.testing.assert_array_equal(a.keyframe, b.keyframe)


def test_max_source_frames_stops_early(long_video):
    result = decompose_video(long_video, _tiny("video.max_source_frames=60"))
    assert result.num_frames == 30 and len(result.clips) == 1 and not result.truncated


def test_video_section_alone_is_accepted(long_video):
    cfg = _tiny()
    assert len(decompose_video(long_video, cfg.video).clips) == len(decompose_video(long_video, cfg).clips)


def test_fast_decode_skips_deblocking_and_stays_close_to_the_exact_decode(long_video):
    exact = decompose_video(long_video, _tiny("video.motion_height=4", "video.motion_width=6"))
    fast = decompose_video(long_video, _tiny("video.motion_height=4", "video.motion_width=6", "video.fast_decode=true"))
    assert [c.start_frame for c in fast.clips] == [c.start_frame for c in exact.clips]
    keyframes = [np.stack([c.keyframe for c in d.clips]).astype(np.float64) for d in (exact, fast)]
    assert not np.array_equal(*keyframes)  # the option reaches the H.264 decoder: no deblocking
    mse = ((keyframes[0] - keyframes[1]) ** 2).mean()
    assert 10 * np.log10(255**2 / mse) > 35  # far below what the MPEG-4 re-encode changes
    motion = [np.stack([c.motion for c in d.clips]) for d in (exact, fast)]
    assert np.abs(motion[0] - motion[1]).mean() < 0.05 * np.abs(motion[0]).mean()
