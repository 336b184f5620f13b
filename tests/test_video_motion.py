"""Motion correctness of the decomposition: known square motion comes back with the right value, sign and layout."""

from __future__ import annotations

import numpy as np
import pytest

from videolavit.config import load_config
from videolavit.video import decompose_video, denormalize_motion, normalize_motion
from videolavit.video.io import write_video
from videolavit.video.motion import resize_grid
from fixtures.synthetic_video import moving_square, square_box

MB = 16


@pytest.fixture(scope="module")
def tiny():
    return load_config(profile="tiny", params_file=None)


def _macroblocks(rows: int, cols: int):
    for r in range(rows):
        for c in range(cols):
            yield r, c, (c * MB, r * MB, c * MB + MB, r * MB + MB)


def _inside(block, box) -> bool:
    return block[0] >= box[0] and block[1] >= box[1] and block[2] <= box[2] and block[3] <= box[3]


def _far(block, box, margin=MB) -> bool:
    left, top, right, bottom = box
    x0, y0, x1, y1 = block
    return x1 <= left - margin or x0 >= right + margin or y1 <= top - margin or y0 >= bottom + margin


@pytest.mark.parametrize("velocity", [(3, -2), (-4, 1), (0, 3), (-2, -3)])
def test_square_motion_is_recovered_in_px_per_frame(tmp_path, tiny, velocity):
    width, height = tiny.video.encode_width, tiny.video.encode_height
    # Written at 6 fps and at the encode size, so px/frame in the source is px/frame in the decomposition.
    path = write_video(tmp_path / "square.mp4", moving_square(width, height, 48, velocity), fps=6)
    result = decompose_video(path, tiny)
    assert [clip.start_frame for clip in result.clips] == [0, 24]
    rows, cols = height // MB, width // MB
    covered = still = 0
    for clip in result.clips:
        motion = denormalize_motion(clip.motion, tiny)  # [2, 24, rows, cols] px/frame
        for t in range(1, 24):
            now = square_box(width, height, clip.start_frame + t, velocity)
            before = square_box(width, height, clip.start_frame + t - 1, velocity)
            for r, c, block in _macroblocks(rows, cols):
                if _inside(block, now):
                    where = f"clip frame {t}, macroblock {r},{c}"
                    np.testing.assert_allclose(motion[:, t, r, c], velocity, atol=0.5, err_msg=where)
                    covered += 1
                elif _far(block, now) and _far(block, before):
                    assert np.abs(motion[:, t, r, c]).max() < 0.5, f"static background moved at frame {t}, mb {r},{c}"
                    still += 1
    assert covered >= 2 * 23 * 4 and still > covered


def test_iframes_are_zero_and_the_second_is_interpolated(tmp_path, tiny):
    width, height = tiny.video.encode_width, tiny.video.encode_height
    path = write_video(tmp_path / "square.mp4", moving_square(width, height, 60, (2, 1)), fps=6)
    result = decompose_video(path, tiny)
    assert result.num_frames == 60
    assert result.iframe_indices == [0, 12, 24, 36, 48]
    for clip in result.clips:
        assert clip.start_frame in result.iframe_indices and clip.start_frame + 12 in result.iframe_indices
        assert not clip.motion[:, 0].any()
        assert np.abs(clip.motion[:, 11]).max() > 0
        expected = (clip.motion[:, 11] + clip.motion[:, 13]) / 2
        np.testing.assert_allclose(clip.motion[:, 12], expected, rtol=1e-6, atol=1e-6)


def test_normalization_follows_the_official_constants(tiny):
    px = np.array([3.0, -2.0], dtype=np.float32).reshape(2, 1)
    expected = [3 / 192 / 0.0993703 * 10, -2 / 128 / 0.1130276 * 10]  # ÷ encode size ÷ std × 10
    np.testing.assert_allclose(normalize_motion(px, tiny)[:, 0], expected, rtol=1e-5)
    field = np.random.default_rng(0).normal(size=(2, 24, 8, 12)).astype(np.float32)
    np.testing.assert_allclose(denormalize_motion(normalize_motion(field, tiny), tiny), field, rtol=1e-5, atol=1e-6)
    batched = np.stack([field, field])  # [B, 2, T, h, w]
    np.testing.assert_allclose(normalize_motion(batched, tiny, axis=1)[1], normalize_motion(field, tiny), rtol=1e-6)
    with pytest.raises(ValueError, match="2 channels"):
        normalize_motion(field[:1], tiny)


def test_normalization_keeps_torch_tensors(tiny):
    torch = pytest.importorskip("torch")
    field = torch.randn(2, 24, 8, 12, dtype=torch.float64)
    out = normalize_motion(field, tiny)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64
    torch.testing.assert_close(denormalize_motion(out, tiny), field)


@pytest.mark.parametrize("size", [(20, 36), (10, 18), (45, 80), (8, 12)])
def test_grid_resize_is_torch_bicubic(size):
    torch = pytest.importorskip("torch")
    field = np.random.default_rng(1).normal(size=(2, 3, 20, 36)).astype(np.float32)
    expected = torch.nn.functional.interpolate(torch.from_numpy(field), size=size, mode="bicubic", align_corners=False)
    np.testing.assert_allclose(resize_grid(field, *size), expected.numpy(), rtol=1e-4, atol=1e-5)


def test_paper_profile_shapes(tmp_path):
    paper = load_config(profile="paper", params_file=None)
    path = write_video(tmp_path / "paper.mp4", moving_square(576, 320, 26, (4, -2), size=96), fps=6)
    result = decompose_video(path, paper)
    (clip,) = result.clips
    assert clip.motion.shape == (2, 24, 20, 36) and clip.motion.dtype == np.float32
    assert clip.keyframe.shape == (224, 224, 3) and clip.keyframe.dtype == np.uint8
    assert np.abs(clip.motion[:, 1:]).max() > 0


def test_keep_frames_returns_the_resampled_clip_frames(tmp_path, tiny):
    width, height = tiny.video.encode_width, tiny.video.encode_height
    path = write_video(tmp_path / "square.mp4", moving_square(width, height, 30, (4, 0)), fps=6)
    (clip,) = decompose_video(path, tiny, keep_frames=True).clips
    assert clip.frames.shape == (24, tiny.video.frames_height, tiny.video.frames_width, 3)
    assert clip.frames.dtype == np.uint8
    assert np.abs(clip.frames[0].astype(int) - clip.frames[23].astype(int)).mean() > 5  # the square moved
    (plain,) = decompose_video(path, tiny).clips
    assert plain.frames is None
    np.testing.assert_array_equal(plain.motion, clip.motion)
