"""Hostile but real inputs (issue 15): timestamp gaps, rotation, several video streams, raw H.264, machine faults."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from fractions import Fraction
from types import SimpleNamespace

import av
import numpy as np
import pytest
from PIL import Image, ImageFilter

from videolavit import errors
from videolavit.config import load_config
from videolavit.video import decompose_video, denormalize_motion, iter_clips, normalize_motion
from videolavit.video.io import write_video
from videolavit.video.motion import MotionCodec

MB = 16
SQUARE = 32


@pytest.fixture(scope="module")
def tiny():
    return load_config(profile="tiny", params_file=None)


def _tiny(*overrides):
    return load_config(profile="tiny", overrides=list(overrides), params_file=None)


def _texture(rng, height, width, high=180):
    noise = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(noise).filter(ImageFilter.GaussianBlur(1.5)), dtype=np.float32)
    return np.clip((smooth - smooth.mean()) * 4 + high / 2, 0, high).astype(np.uint8)


def _box(width, height, t, velocity):
    """The square at frame t: from (W/4, 5H/8) at ``velocity`` px/frame, wrapping round inside the picture."""
    x = ((width - SQUARE) // 4 + round(velocity[0] * t)) % (width - SQUARE + 1)
    y = ((height - SQUARE) * 5 // 8 + round(velocity[1] * t)) % (height - SQUARE + 1)
    return x, y, x + SQUARE, y + SQUARE


def _scene(width, height, n, velocity=(3, -2), seed=0):
    """Upright frames uint8 [H, W, 3]: a textured square moving by ``velocity`` px/frame, a white marker top-left."""
    rng = np.random.default_rng(seed)
    background, square = _texture(rng, height, width), _texture(rng, SQUARE, SQUARE, high=255)
    background[: height // 5, : width // 5] = 255
    for t in range(n):
        frame = background.copy()
        x0, y0, x1, y1 = _box(width, height, t, velocity)
        frame[y0:y1, x0:x1] = square
        yield frame


# --- timestamp gaps and the span cap ---------------------------------------------------------------------------------


def test_an_hour_long_timestamp_gap_is_a_quick_reject(tmp_path, tiny):
    times = [i / 12 for i in range(30)] + [3600 + i / 12 for i in range(30)]  # 2.5 s, a 1-hour gap, 2.5 s
    path = write_video(tmp_path / "gap.mp4", _scene(96, 64, 60, (1, 0)), fps=12, times=times)
    started, clips = time.perf_counter(), 0
    with pytest.raises(errors.VideoError) as info:
        for _ in iter_clips(path, tiny.video):
            clips += 1
            assert clips < 2, "the frame before the gap is being repeated across it (21600 copies at 6 fps)"
    assert type(info.value).__name__ == "TimestampGapError" and info.value.path == str(path)
    assert "video.max_frames_per_source_frame=300" in str(info.value)
    assert time.perf_counter() - started < 10

    # Bounded before anything is repeated: the resampler yields the 15 frames of the first 2.5 s, none of the gap.
    from videolavit.video.source import SourceInfo, iter_resampled

    yielded = 0
    with pytest.raises(errors.TimestampGapError):
        for _ in iter_resampled(path, 6.0, SourceInfo(str(path)), max_frames_per_source_frame=300):
            yielded += 1
            assert yielded < 100
    assert yielded == 15


def test_span_and_hold_caps_are_configurable(tmp_path):
    times = [i * 0.5 for i in range(100)]  # 2 fps for 50 s: each source frame fills 3 outputs at 6 fps
    path = write_video(tmp_path / "slow.mp4", _scene(96, 64, 100, (0.3, 0)), fps=2, times=times)
    assert len(decompose_video(path, _tiny().video).clips) == 12  # the defaults keep it: 300 outputs, 50 s
    with pytest.raises(errors.VideoError, match=r"video\.max_span_seconds=20") as info:
        decompose_video(path, _tiny("video.max_span_seconds=20").video)
    assert type(info.value).__name__ == "VideoTooLongError"
    with pytest.raises(errors.VideoError, match=r"repeated 3 times .*video\.max_frames_per_source_frame=2"):
        decompose_video(path, _tiny("video.max_frames_per_source_frame=2").video)
    # max_source_frames takes the start of a long video instead: it stops before the span cap is reached.
    start = decompose_video(path, _tiny("video.max_span_seconds=20", "video.max_source_frames=30").video)
    assert start.num_frames == 90 and len(start.clips) == 3 and not start.truncated
    unbounded = _tiny("video.max_span_seconds=null", "video.max_frames_per_source_frame=null").video
    assert len(decompose_video(path, unbounded).clips) == 12
    for bad in ("video.max_span_seconds=0", "video.max_frames_per_source_frame=0"):
        with pytest.raises(errors.ConfigError, match=bad.split("=")[0]):
            decompose_video(path, _tiny(bad).video)


@pytest.mark.parametrize("fps, every", [(6, 1), (12, 2)])
def test_millisecond_timestamps_resample_to_the_nearest_instant(tmp_path, fps, every):
    # Matroska rounds 1/6 s to 167 ms, just after the 166.7 ms instant: frame 1 must still be the frame shown there.
    from videolavit.video.source import SourceInfo, iter_resampled

    path = write_video(tmp_path / "ms.mkv", _scene(96, 64, 2 * fps, (1, 0)), fps=fps)
    with av.open(str(path)) as container:
        assert container.streams.video[0].time_base == Fraction(1, 1000)
        pts = [frame.pts for frame in container.decode(video=0)]
    shown = [frame.pts for _, frame in iter_resampled(path, 6.0, SourceInfo(str(path)))]
    assert shown == pts[::every]


# --- rotation ---------------------------------------------------------------------------------------------------------


def _coded(display: np.ndarray, turns: int, mirror: bool) -> np.ndarray:
    """The picture to store so that a player turning it ``turns`` × 90° counter-clockwise (then mirroring) shows
    ``display``."""
    return np.ascontiguousarray(np.rot90(display[:, ::-1] if mirror else display, -turns))


def _write_turned(path, frames, turns, mirror, how):
    with av.open(str(path), "w") as container:
        stream = None
        for frame in frames:
            coded = _coded(frame, turns, mirror)
            if stream is None:
                stream = container.add_stream("libx264", rate=6)
                stream.height, stream.width = coded.shape[:2]
                stream.pix_fmt = "yuv420p"
                if how == "matrix":
                    stream.set_display_rotation(90 * turns, hflip=mirror)
                else:  # the older `rotate` tag: clockwise degrees
                    stream.metadata["rotate"] = str((-90 * turns) % 360)
            for packet in stream.encode(av.VideoFrame.from_ndarray(coded, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.mark.parametrize(
    "turns, mirror, how",
    [(1, False, "matrix"), (3, False, "matrix"), (2, False, "matrix"), (0, True, "matrix"), (1, True, "matrix"),
     (3, False, "tag")],
)
def test_rotated_video_is_decomposed_as_a_player_shows_it(tmp_path, tiny, turns, mirror, how):
    width, height, velocity = int(tiny.video.encode_width), int(tiny.video.encode_height), (3, -2)
    suffix = ".mkv" if how == "tag" else ".mp4"  # the MP4 muxer drops the tag; Matroska keeps it
    path = _write_turned(tmp_path / f"turned{suffix}", _scene(width, height, 30, velocity), turns, mirror, how)
    (clip,) = decompose_video(path, tiny.video, keep_frames=True).clips

    key = clip.keyframe.astype(float)  # [64, 64, 3]: the white marker is top-left when upright
    assert key[:8, :8].mean() > 240, "keyframe not upright"
    assert max(key[:8, -8:].mean(), key[-8:, :8].mean(), key[-8:, -8:].mean()) < 200
    assert clip.frames[0, :3, :4].mean() > 240 and clip.frames[0, -3:, -4:].mean() < 200  # kept frames too

    motion = denormalize_motion(clip.motion, tiny.video)  # [2, 24, 8, 12] px/frame at the encode size
    inside = []
    for t in range(1, 24):
        x0, y0, x1, y1 = _box(width, height, t, velocity)
        for r in range(height // MB):
            for c in range(width // MB):
                if c * MB >= x0 and r * MB >= y0 and c * MB + MB <= x1 and r * MB + MB <= y1:
                    inside.append(motion[:, t, r, c])
    assert len(inside) >= 23
    np.testing.assert_allclose(np.median(np.stack(inside), axis=0), velocity, atol=0.5, err_msg="motion axes")


# --- stream choice, raw H.264 ---------------------------------------------------------------------------------------


def test_the_largest_video_stream_is_used_not_the_first(tmp_path, tiny):
    path = tmp_path / "two.mkv"
    with av.open(str(path), "w") as container:
        thumb = container.add_stream("libx264", rate=12)
        thumb.width, thumb.height, thumb.pix_fmt = 64, 48, "yuv420p"
        main = container.add_stream("libx264", rate=12)
        main.width, main.height, main.pix_fmt = 192, 128, "yuv420p"
        for frame in _scene(192, 128, 48, (2, 0)):
            for stream, image in ((thumb, np.full((48, 64, 3), 90, np.uint8)), (main, frame)):
                for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                    container.mux(packet)
        for stream in (thumb, main):
            for packet in stream.encode():
                container.mux(packet)
    stream = iter_clips(path, tiny.video)
    clips = list(stream)
    assert stream.source_size == (192, 128) and stream.source.stream_index == 1
    assert np.abs(denormalize_motion(clips[0].motion, tiny.video)).max() > 1  # the moving picture, not the still


def test_stream_ranking_skips_cover_art_then_prefers_area_then_default():
    from videolavit.video.source import best_video_stream

    def fake(index, w, h, disposition=0, bit_rate=0):
        return SimpleNamespace(index=index, disposition=disposition,
                               codec_context=SimpleNamespace(width=w, height=h, bit_rate=bit_rate))

    cover = fake(0, 1920, 1080, av.stream.Disposition.attached_pic)
    assert best_video_stream([cover, fake(1, 640, 360)]).index == 1
    assert best_video_stream([fake(0, 640, 360), fake(1, 1280, 720)]).index == 1
    assert best_video_stream([fake(0, 640, 360), fake(1, 640, 360, av.stream.Disposition.default)]).index == 1
    assert best_video_stream([fake(0, 640, 360, bit_rate=9), fake(1, 640, 360, bit_rate=1)]).index == 0
    assert best_video_stream([cover]).index == 0  # cover art alone is still a picture


def test_raw_h264_is_timed_at_its_own_rate_not_25_fps(tmp_path, tiny):
    path = write_video(tmp_path / "clip.h264", _scene(96, 64, 48, (1, 0)), fps=12)  # no container timestamps
    stream = iter_clips(path, tiny.video)
    clips = list(stream)
    assert stream.source_fps == 12 and stream.num_frames == 24 and len(clips) == 1


# --- faults of the machine, truncation in the stage stats -------------------------------------------------------------


def _failing_push(error):
    def push(self, frame, index=0):
        raise error

    return push


@pytest.mark.parametrize(
    "error", [av.error.MemoryError(12, "Cannot allocate memory"), av.error.OSError(5, "Input/output error")],
    ids=["ENOMEM", "EIO"],
)
def test_a_failing_re_encode_is_not_blamed_on_the_video(tmp_path, tiny, monkeypatch, error):
    path = write_video(tmp_path / "fine.mp4", _scene(96, 64, 48, (1, 0)), fps=12)
    monkeypatch.setattr(MotionCodec, "push", _failing_push(error))
    with pytest.raises(Exception) as info:
        decompose_video(path, tiny.video)
    assert not isinstance(info.value, errors.VideoError), f"blamed on the video: {info.value!r}"
    expected = MemoryError if isinstance(error, MemoryError) else errors.MotionCodecError
    assert isinstance(info.value, expected) and (expected is MemoryError or "not of the video" in str(info.value))

    from videolavit.data.clip_units import decompose_into
    from videolavit.data.shards import PartialTar

    job = {"id": "fine", "path": str(path), "split": "train", "caption": ""}
    tar = PartialTar(tmp_path / "unit.tar")
    with pytest.raises(errors.VideolavitError, match="out of memory|not of the video"):  # not a reject line
        decompose_into(job, tiny.video, tar, ("npy", "float32", 18))


def test_stage_counts_a_kept_truncated_video_and_rejects_a_timestamp_gap(tiny_cfg_factory, tmp_path):
    corpus = tmp_path / "corpus"
    (corpus / "videos").mkdir(parents=True)
    write_video(corpus / "videos" / "whole.mp4", _scene(96, 64, 60, (1, 0)), fps=12)
    full = write_video(tmp_path / "full.mp4", _scene(96, 64, 120, (0.5, 0)), fps=12, options={"movflags": "faststart"})
    data = full.read_bytes()
    (corpus / "videos" / "cut.mp4").write_bytes(data[: len(data) * 3 // 4])  # ~7.5 of 10 s: one clip survives
    times = [i / 12 for i in range(30)] + [3600 + i / 12 for i in range(30)]
    write_video(corpus / "videos" / "gap.mp4", _scene(96, 64, 60, (1, 0)), fps=12, times=times)
    with open(corpus / "train.jsonl", "w") as f:
        for name in ("whole", "cut", "gap"):
            row = {"id": name, "path": f"videos/{name}.mp4", "kind": "video", "caption": "a square moves"}
            f.write(json.dumps({**row, "qa": [], "attributes": {}, "clips": []}) + "\n")
    for split in ("val", "test"):
        (corpus / f"{split}.jsonl").write_text("")
    from videolavit.stages.decompose import run

    metrics = run(tiny_cfg_factory("tracking.enabled=false", "decompose.workers=1", "decompose.max_reject_ratio=0.5"))
    stats = json.loads((tmp_path / "clips" / "stats.json").read_text())
    (reject,) = [json.loads(line) for line in (tmp_path / "clips" / "rejects.jsonl").read_text().splitlines()]
    assert reject["id"] == "gap" and reject["error"] == "TimestampGapError"
    assert "video.max_frames_per_source_frame" in reject["message"]
    assert metrics["rejects"] == 1 and metrics["clips"] == 2
    assert stats["truncated"] == ["cut"] and metrics["videos_truncated"] == 1


# --- the codec level reads only the config it is given ----------------------------------------------------------------


def test_no_default_profile_is_loaded(tmp_path, tiny):
    from videolavit.video import draw_motion, show_motion
    from videolavit.video.motion import video_section

    field = np.zeros((2, 8, 12), np.float32)
    for call in (
        lambda: normalize_motion(field),
        lambda: denormalize_motion(field),
        lambda: decompose_video(tmp_path / "x.mp4"),
        lambda: iter_clips(tmp_path / "x.mp4"),
        lambda: draw_motion(np.zeros((8, 8, 3), np.uint8), field),
        lambda: show_motion(tmp_path / "x.mp4", tmp_path / "m.png"),
    ):
        with pytest.raises(TypeError):
            call()
    with pytest.raises(errors.ConfigError, match="cfg.video"):
        video_section(None)
    np.testing.assert_allclose(normalize_motion(field + 1, tiny.video), normalize_motion(field + 1, tiny))

    code = "import sys, videolavit.video; print(sorted(m for m in ('torch', 'videolavit.config') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
