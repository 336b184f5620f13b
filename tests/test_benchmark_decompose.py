"""benchmarks/decompose.py: its official routes make the same clips as this pipeline from the same input, and the
as-published route's motion agrees with ours where the field is uniform (so the ratio compares like with like)."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from videolavit.video.io import write_video
from fixtures.synthetic_video import moving_square

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="the official route needs the ffmpeg CLI")
BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "decompose.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_decompose", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bench") / "square.mp4"
    write_video(path, moving_square(256, 160, 120, (3, -1)), 12)  # 10 s at 12 fps → 60 frames at 6 fps
    return path


def test_every_route_makes_the_same_clips(bench, video):
    cfg = bench.paper_config(1)
    ours = bench.run_ours(video, cfg)
    official = bench.run_official(video, cfg)
    lean = bench.run_official_lean(video, cfg)
    assert ours["clips"] == official["clips"] == lean["clips"] == 2
    assert ours["frames_6fps"] == official["frames_6fps"] == lean["frames_6fps"] == 60


def test_clip_starts_follow_the_contract(bench):
    cfg = bench.paper_config(1)
    # I-frames every 12 frames over 60 frames: clips at 0 and 24 (36 overlaps the clip at 24; 48 has no next I-frame)
    assert bench._clip_starts([0, 12, 24, 36, 48], 60, cfg.video) == [0, 24]
    assert bench._clip_starts([0, 12, 24, 36, 48], 47, cfg.video) == [0]  # 24 + 24 frames would pass the end
    assert bench._clip_starts([0, 13, 25, 37], 60, cfg.video) == [13]  # 0 → 13 is not a 12-frame GOP
    assert bench._clip_starts([0], 60, cfg.video) == []


def test_official_route_measures_the_motion_ours_does(bench, video, monkeypatch):
    """The as-published route's per-pixel map, 16×16 max-pooled, holds the square's known motion, and so does ours:
    (3, -1) px per source frame at 12 fps is (6, -2) px per 6-fps frame, normalized by the frame size and std / 10."""
    from videolavit.video import decompose_video

    cfg = bench.paper_config(1)
    captured = []
    original = bench._official_pool

    def spy(motion):
        captured.append(original(motion))
        return captured[-1]

    monkeypatch.setattr(bench, "_official_pool", spy)
    bench.run_official(video, cfg)
    pooled = captured[0].numpy()  # [24, 2, rows, cols], the official's normalized motion before its bicubic resize
    assert pooled.shape[-2:] == (10, 16)  # 160×256 source → 10×16 macroblocks
    assert np.abs(pooled).max() < 1000  # no -10000 "no vector" marker survives
    ours = decompose_video(video, cfg).clips[0].motion  # [2, 24, 20, 36]
    std_x, std_y = (float(s) / float(cfg.video.motion_rescale) for s in cfg.video.motion_std)
    expected = (6 / 256 / std_x, -2 / 160 / std_y)
    for axis in (0, 1):
        theirs = pooled[1:12, axis][np.abs(pooled[1:12, axis]) > 0.3]  # the square's blocks, P-frames 1-11
        mine = ours[axis, 1:12][np.abs(ours[axis, 1:12]) > 0.3]
        assert len(theirs) > 20 and len(mine) > 20
        assert np.median(theirs) == pytest.approx(expected[axis], rel=0.05)
        assert np.median(mine) == pytest.approx(expected[axis], rel=0.05)
