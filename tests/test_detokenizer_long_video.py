"""Long videos: frame count without duplicated seams; the inter-clip noise constraint (paper Eq. 4, official code)."""

from __future__ import annotations

import functools

import pytest
import torch

from videolavit.errors import ConfigError
from videolavit.models.keyframe_detokenizer import KeyframeDetokenizer
from videolavit.inference.long_video import ddim_invert, forward_noise, generate_long_video
from videolavit.models.video_detokenizer import VideoDetokenizer

T = 4


@pytest.fixture(scope="module")
def detokenizers():
    """Untrained but seeded tiny detokenizers: whatever makes seams close must be the noise constraint."""
    torch.manual_seed(0)
    keyframe = KeyframeDetokenizer(cond_dim=16, image_size=(16, 16)).eval()
    video = VideoDetokenizer(frames=T, height=8, width=8, motion_encoder={"grid": [4, 4], "depth": 1}).eval()
    return keyframe, video


def _conditions(clips: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    conds = [torch.randn(1, 6, 16, generator=g) for _ in range(clips)]
    motions = [0.1 * torch.randn(1, 2, T, 4, 4, generator=g) for _ in range(clips)]
    return conds, motions


def test_n_clips_give_n_t_minus_seams_frames_and_drop_each_later_first_frame(detokenizers):
    keyframe, video = detokenizers
    clips = []

    def render(key, motion):
        clips.append(video.sample(key, motion, steps=2, max_guidance=2.0))
        return clips[-1]

    conds, motions = _conditions(3)
    out = generate_long_video(
        keyframe,
        render,
        conds,
        motions,
        video_size=(8, 8),
        keyframe_steps=10,
        generator=torch.Generator().manual_seed(0),
    )
    assert out.frames.shape == (1, 3 * T - 2, 3, 8, 8)
    assert len(out.keyframes) == 3 and out.keyframes[0].shape == (1, 3, 16, 16)
    torch.testing.assert_close(out.frames[:, T - 1], clips[0][:, -1])  # the seam frame comes from the earlier clip
    torch.testing.assert_close(out.frames[:, T], clips[1][:, 1])  # and the later clip's first frame is dropped
    single = generate_long_video(keyframe, video, conds[:1], motions[:1], keyframe_steps=4)
    assert single.frames.shape == (1, T, 3, 8, 8)  # a VideoDetokenizer is accepted directly, at its own size


def _seam_error(detokenizers, constraint: str) -> float:
    """MSE between each clip's last frame and the next clip's keyframe, at the keyframe size."""
    keyframe, video = detokenizers
    conds, motions = _conditions(3, seed=1)
    render = functools.partial(video.sample, steps=2, max_guidance=2.0)
    out = generate_long_video(
        keyframe, render, conds, motions, video_size=(8, 8), noise_constraint=constraint, inverse_rate=0.85,
        keyframe_steps=10, generator=torch.Generator().manual_seed(0),
    )
    errors = []
    for i in range(1, 3):
        last = torch.nn.functional.interpolate(out.frames[:, i * (T - 1)], size=(16, 16), mode="bicubic").clamp(-1, 1)
        errors.append((out.keyframes[i] - last).pow(2).mean().item())
    return max(errors)


@pytest.fixture(scope="module")
def independent_seam_error(detokenizers):
    """The baseline: same seeds and conditions, but fresh noise and the full schedule for every keyframe."""
    return _seam_error(detokenizers, "none")


@pytest.mark.parametrize("constraint", ["add_noise", "ddim_inversion"])
def test_noise_constraint_pulls_the_next_keyframe_to_the_previous_last_frame(
    detokenizers, independent_seam_error, constraint
):
    assert _seam_error(detokenizers, constraint) < 0.25 * independent_seam_error


def test_ddim_inversion_is_undone_by_ddim_sampling_unlike_forward_noising(detokenizers):
    keyframe, _ = detokenizers
    x0 = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    cond = torch.randn(2, 6, 16, generator=torch.Generator().manual_seed(3))
    steps, start = 20, 10  # invert half the schedule: ΔT = 10 steps

    inverted = ddim_invert(keyframe, x0, cond, steps, start)
    noised = forward_noise(keyframe, x0, steps, start, generator=torch.Generator().manual_seed(0))
    back_inverted = keyframe.sample(cond, steps, 1.0, latents=inverted, start_index=start, output_type="float")
    back_noised = keyframe.sample(cond, steps, 1.0, latents=noised, start_index=start, output_type="float")
    assert (back_inverted - x0).pow(2).mean() < 0.01 * x0.var()
    assert (back_noised - x0).pow(2).mean() > 10 * (back_inverted - x0).pow(2).mean()


def test_unknown_constraint_or_mismatched_clips_are_refused(detokenizers):
    keyframe, video = detokenizers
    conds, motions = _conditions(2)
    with pytest.raises(ConfigError, match="noise_constraint"):
        generate_long_video(keyframe, video, conds, motions, noise_constraint="sdedit")
    with pytest.raises(ValueError, match="one keyframe condition per motion field"):
        generate_long_video(keyframe, video, conds, motions[:1])
