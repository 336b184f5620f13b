"""The released video detokenizer, imported: one guided denoising step within 1e-4 of the official model's.

Goldens: tests/fixtures/goldens/make_video_detokenizer_golden.py ran the official 3D U-Net, motion condition encoder
and SVD's Euler scheduler (diffusers 0.25.1) on the same seeded tensors (tests/fixtures/README.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fixtures.goldens.make_motion_tokenizer_golden import fingerprint
from fixtures.released_weights import (
    NOISE_AUG_SEED, SVD_SCHEDULER, UNET_SMALL, VIDEO_ENCODER_SMALL, VIDEO_SMALL, video_detokenizer_state_small,
    video_inputs_small,
)
from videolavit.convert.release import import_release
from videolavit.models.video_detokenizer import VideoDetokenizer, karras_sigmas

GOLDEN = json.loads((Path(__file__).parent / "fixtures" / "goldens" / "video_detokenizer_small.json").read_text())
OPTIONS = dict(encoder_heads=VIDEO_ENCODER_SMALL["heads"], encoder_grid=VIDEO_ENCODER_SMALL["grid"],
               video_frames=VIDEO_SMALL["frames"], video_size=VIDEO_SMALL["latent"],
               motion_rescale=VIDEO_SMALL["motion_rescale"])


def _release(root: Path, state: dict | None = None) -> Path:
    folder = root / "release" / "video_detokenizer"
    (folder / "unet").mkdir(parents=True)
    (folder / "scheduler").mkdir()
    (folder / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNetSpatioTemporalConditionModel",
                                                             "_diffusers_version": "0.25.1", **UNET_SMALL}))
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps({"_class_name": "EulerDiscreteScheduler",
                                                                           **SVD_SCHEDULER}))
    torch.save(state if state is not None else video_detokenizer_state_small(),
               folder / "unet" / "diffusion_pytorch_model.bin")
    return root / "release"


def _imported(tmp_path) -> VideoDetokenizer:
    (result,) = [r for r in import_release(_release(tmp_path), tmp_path / "out", parts=["video_detokenizer"], **OPTIONS)
                 if r.part == "video_detokenizer"]
    assert result.status == "converted", result.detail
    return VideoDetokenizer.from_pretrained(result.output)


def _step(model: VideoDetokenizer, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(guided denoised sample, next Euler sample) at σ index ``index`` of the golden's 4-step schedule."""
    s, inputs = VIDEO_SMALL, video_inputs_small()
    sigmas = karras_sigmas(s["steps"], model.config["sigma_min"], model.config["sigma_max"])
    generator = torch.Generator().manual_seed(NOISE_AUG_SEED)
    with torch.no_grad():
        cond = model.conditions(inputs["keyframe"], inputs["motion"], s["frames"], generator)
        cond = model.guidance_conditions(cond, s["max_guidance"])
        x = inputs[f"noise_{index}"] * sigmas[index]
        denoised = model.guided_denoise(x, sigmas[index], cond, s["max_guidance"])
    return denoised, x + (sigmas[index + 1] - sigmas[index]) * (x - denoised) / sigmas[index]


def _error(ours: torch.Tensor, golden: dict) -> float:
    """Largest deviation from the golden's samples and per-frame means, relative to the golden's largest value."""
    assert list(ours.shape) == golden["shape"]
    sample = (ours.flatten()[:: golden["sample_stride"]] - torch.tensor(golden["sample"])).abs().max()
    means = (ours.mean(dim=(2, 3, 4)) - torch.tensor(golden["mean_per_frame"])).abs().max()
    return float(max(sample, means)) / golden["abs_max"]


def test_seeded_weights_and_inputs_are_the_goldens_ones():
    state, inputs = video_detokenizer_state_small(), video_inputs_small()
    assert fingerprint(state[k] for k in sorted(state)) == pytest.approx(GOLDEN["state_fingerprint"], rel=1e-9)
    assert fingerprint(inputs[k] for k in sorted(inputs)) == pytest.approx(GOLDEN["input_fingerprint"], rel=1e-9)


def test_imported_detokenizer_takes_the_official_denoising_step(tmp_path):
    model = _imported(tmp_path)
    assert model.config["temporal_context"] == "per_pixel" and model.config["motion_input"] == "official"
    sigmas = karras_sigmas(VIDEO_SMALL["steps"], model.config["sigma_min"], model.config["sigma_max"])
    assert sigmas.tolist() == pytest.approx(GOLDEN["sigmas"], rel=1e-6)  # SVD's Karras σs, from the release's config
    for index in (0, 2):
        denoised, following = _step(model, index)
        golden = GOLDEN["steps"][str(index)]
        assert _error(denoised, golden["denoised"]) < 1e-4
        assert _error(following, golden["next"]) < 1e-4
    inputs = video_inputs_small()
    coarse = inputs["motion"][..., ::2, ::2]  # motion at a coarser grid than the latents: resized bicubically
    frames = model.sample(inputs["keyframe"], coarse, steps=2, generator=torch.Generator().manual_seed(0))
    assert frames.shape == (2, VIDEO_SMALL["frames"], 3, *VIDEO_SMALL["latent"]) and frames.abs().max() <= 1


@pytest.mark.parametrize("switch", [{"temporal_context": "broadcast"}, {"motion_input": "ours"}])
def test_each_official_variant_matters(tmp_path, switch):
    """Our own paths (the tiny recipe's) on the same weights miss the official step: the switches carry the parity."""
    model = _imported(tmp_path)
    unet = type(model.unet).from_config(model.unet.config)  # a fresh copy: the import swapped its forward per pixel
    unet.load_state_dict(model.unet.state_dict())
    other = VideoDetokenizer(**{**model.config, **switch}, unet_model=unet, vae=None)
    other.motion_encoder.load_state_dict(model.motion_encoder.state_dict())
    denoised, _ = _step(other.eval(), 2)
    assert _error(denoised, GOLDEN["steps"]["2"]["denoised"]) > 1e-2


def test_an_incomplete_unet_leaves_the_encoder_converted_and_says_why(tmp_path):
    state = video_detokenizer_state_small()
    state.pop("conv_in.weight")
    (result,) = [r for r in import_release(_release(tmp_path, state), tmp_path / "out", **OPTIONS)
                 if r.part == "video_detokenizer"]
    assert result.status == "partial"
    assert "1 missing, e.g. ['conv_in.weight']" in result.detail
    assert Path(result.output).name == "motion_condition_encoder"


def test_the_per_pixel_grid_indices_are_the_officials_at_the_paper_sizes():
    """The official temporal context resizes the 16×16 grid with scale_factor=(h/16, w/16), ours with size=(h, w): the
    same nearest indices at every level of the paper's 40×72 latents (and of 1024² / 576×1024 ones)."""
    import torch.nn.functional as F

    from videolavit.models.temporal_context import per_pixel_time_context

    grid = torch.randn(2 * 3, 256, 4)  # B·T grid tokens
    for h, w in [(40, 72), (20, 36), (10, 18), (5, 9), (128, 128), (64, 64), (72, 128), (9, 16), (8, 12), (4, 6)]:
        official = F.interpolate(grid.reshape(6, 16, 16, 4).permute(0, 3, 1, 2), scale_factor=(h / 16, w / 16),
                                 mode="nearest")
        official = official.reshape(2, 3, 4, h * w).permute(0, 3, 1, 2).reshape(2 * h * w, 3, 4)
        assert torch.equal(per_pixel_time_context(grid, 3, (16, 16), (h, w)), official), (h, w)


def test_a_unet_config_with_keys_of_another_diffusers_version_still_builds():
    """A release's unet/config.json may carry keys this diffusers does not know (its from_pretrained ignores them)."""
    from videolavit.convert.video_detokenizer import build_unet, split_unet

    config = {**UNET_SMALL, "a_key_of_another_diffusers_version": 1}
    unet = build_unet(split_unet(video_detokenizer_state_small()), config, "release")
    assert list(unet.config.block_out_channels) == UNET_SMALL["block_out_channels"]
    assert not any(p.is_meta for p in unet.parameters())
