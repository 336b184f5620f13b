"""Keyframe and video detokenizers: paper-size shapes on meta, tiny training, sampling, conditioning contracts."""

from __future__ import annotations

import pytest
import torch

from videolavit.errors import ConfigError
from videolavit.models.keyframe_detokenizer import KeyframeDetokenizer
from videolavit.models.video_detokenizer import (
    PAPER_MOTION_ENCODER,
    PAPER_UNET,
    VideoDetokenizer,
    spatiotemporal_unet_forward,
    warp_along_motion,
)

SDXL_UNET = {  # LaVIT's high-res keyframe decoder is an SDXL-shaped UNet2DConditionModel (paper.md §5)
    "block_out_channels": [320, 640, 1280],
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "layers_per_block": 2,
    "transformer_layers_per_block": [1, 2, 10],
    "attention_head_dim": [5, 10, 20],
    "cross_attention_dim": 2048,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
    "norm_num_groups": 32,
}


def _svd_vae():
    """SVD's AutoencoderKLTemporalDecoder layout (4 latent channels, ×8 down-sampling)."""
    from diffusers import AutoencoderKLTemporalDecoder

    return AutoencoderKLTemporalDecoder(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
    )


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_paper_video_unet_is_svd_shaped_with_motion_channels():
    with torch.device("meta"):
        model = VideoDetokenizer(
            frames=24, height=384, width=384, unet=PAPER_UNET, motion_encoder=PAPER_MOTION_ENCODER,
            sigma_data=1.0, sigma_max=700.0, vae=_svd_vae(),
        )
        features = model.motion_encoder(torch.zeros(1, 2, 24, 20, 36))
    config = model.unet.config
    assert config.in_channels == 10 and config.out_channels == 4  # 4 noisy + 4 keyframe latent + 2 motion
    assert list(config.block_out_channels) == [320, 640, 1280, 1280]
    assert list(config.num_attention_heads) == [5, 10, 10, 20]
    assert config.cross_attention_dim == 1024
    assert model.latent_size == (48, 48)
    assert 1.45e9 < _count(model.unet) < 1.60e9  # SVD img2vid's U-Net: ~1.52 B
    assert tuple(features.shape) == (1, 24, 256, 1024)  # 16×16 motion features per frame, at cross-attention width


def test_paper_keyframe_unet_takes_sdxl_micro_conditioning():
    with torch.device("meta"):
        vae_like = _svd_vae()
        model = KeyframeDetokenizer(cond_dim=1408, image_size=(1024, 1024), unet=SDXL_UNET, vae=vae_like)
    assert model.unet.config.in_channels == 4 and model.latent_size == (128, 128)
    assert model.cond_proj.out_features == 2048
    assert model.pool_proj.out_features == 1280  # 2816 − 6 time ids × 256
    assert 2.4e9 < _count(model.unet) < 2.7e9  # SDXL's U-Net: ~2.57 B


def test_per_frame_forward_matches_diffusers_when_every_frame_shares_the_context():
    torch.manual_seed(0)
    model = VideoDetokenizer(frames=3, height=8, width=8, motion_encoder={"grid": [4, 4], "depth": 1}).eval()
    B, T = 2, 3
    sample = torch.randn(B, T, 8, 8, 8)  # 3 noisy + 3 keyframe + 2 motion channels
    context = torch.randn(B, 5, 64)
    ids = torch.tensor([[6.0, 127.0, 0.02]] * B)
    c_noise = torch.tensor([0.3, -0.2])
    with torch.no_grad():
        reference = model.unet(sample, c_noise, context, ids).sample
        ours = spatiotemporal_unet_forward(model.unet, sample, c_noise, context.repeat_interleave(T, dim=0), ids)
        # and per-frame contexts really reach the frames: changing frame 2's context changes the output
        other = context.repeat_interleave(T, dim=0).clone()
        other[2] += 1.0
        changed = spatiotemporal_unet_forward(model.unet, sample, c_noise, other, ids)
    torch.testing.assert_close(ours, reference)
    assert not torch.allclose(changed[0], ours[0])


def _fit(model, batch, steps, lr):
    """Mean loss over 3 fixed noise draws before and after ``steps`` AdamW steps on one batch."""

    def evaluate():
        model.eval()
        value = (
            sum(model.training_loss(*batch, generator=torch.Generator().manual_seed(s)).item() for s in range(3)) / 3
        )
        model.train()
        return value

    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=lr)
    before = evaluate()
    for _ in range(steps):
        loss = model.training_loss(*batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return before, evaluate()


def test_keyframe_detokenizer_loss_falls_on_a_fixed_batch():
    torch.manual_seed(0)
    model = KeyframeDetokenizer(cond_dim=16, image_size=(8, 8), cond_dropout=0.0)
    images, cond = torch.rand(4, 3, 8, 8) * 2 - 1, torch.randn(4, 6, 16)
    before, after = _fit(model, (images, cond), steps=50, lr=2e-3)
    assert after < 0.6 * before


def test_video_detokenizer_loss_falls_on_a_fixed_batch():
    torch.manual_seed(0)
    model = VideoDetokenizer(frames=4, height=8, width=8, motion_encoder={"grid": [4, 4], "depth": 1}, cond_dropout=0.0)
    frames, motion = torch.rand(1, 4, 3, 8, 8) * 2 - 1, torch.randn(1, 2, 4, 4, 4) * 0.1
    before, after = _fit(model, (frames, frames[:, 0], motion), steps=30, lr=3e-3)
    assert after < 0.7 * before


def test_full_condition_dropout_makes_the_keyframe_loss_ignore_the_condition():
    torch.manual_seed(0)
    model = KeyframeDetokenizer(cond_dim=16, image_size=(8, 8), cond_dropout=1.0).train()
    images = torch.rand(2, 3, 8, 8) * 2 - 1
    loss = lambda cond: model.training_loss(images, cond, generator=torch.Generator().manual_seed(0)).item()  # noqa: E731
    a, b = torch.randn(2, 6, 16), torch.randn(2, 6, 16)
    assert loss(a) == loss(b)
    model.eval()  # no dropout outside training: the condition matters
    assert loss(a) != loss(b)


def test_keyframe_sampling_gives_uint8_images_and_is_seeded():
    torch.manual_seed(0)
    model = KeyframeDetokenizer(cond_dim=16, image_size=(8, 12)).eval()
    cond = torch.randn(2, 6, 16)
    images = model.sample(cond, steps=4, guidance=3.0, generator=torch.Generator().manual_seed(0))
    again = model.sample(cond, steps=4, guidance=3.0, generator=torch.Generator().manual_seed(0))
    assert images.shape == (2, 8, 12, 3) and images.dtype == torch.uint8
    assert torch.equal(images, again)
    floats = model.sample(cond, steps=4, guidance=1.0, output_type="float")
    assert floats.shape == (2, 3, 8, 12) and floats.min() >= -1 and floats.max() <= 1


def test_video_sampling_shapes_and_init_noise():
    torch.manual_seed(0)
    model = VideoDetokenizer(frames=4, height=8, width=8, motion_encoder={"grid": [4, 4], "depth": 1}).eval()
    keyframe, motion = torch.rand(1, 3, 8, 8) * 2 - 1, torch.randn(1, 2, 3, 4, 4) * 0.1  # 3 ≤ 4 frames
    noise = torch.randn(1, 3, 3, 8, 8)
    a = model.sample(
        keyframe, motion, steps=3, max_guidance=3.0, init_noise=noise, generator=torch.Generator().manual_seed(1)
    )
    b = model.sample(
        keyframe, motion, steps=3, max_guidance=3.0, init_noise=noise, generator=torch.Generator().manual_seed(1)
    )
    assert a.shape == (1, 3, 3, 8, 8) and a.min() >= -1 and a.max() <= 1
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="init_noise"):
        model.sample(keyframe, motion, steps=3, init_noise=torch.randn(1, 4, 3, 8, 8))


def test_bad_inputs_name_the_problem():
    model = VideoDetokenizer(frames=4, height=8, width=8, motion_encoder={"grid": [4, 4], "depth": 1})
    frames = torch.zeros(1, 4, 3, 8, 8)
    with pytest.raises(ValueError, match="motion must be"):
        model.training_loss(frames, frames[:, 0], torch.zeros(1, 2, 5, 4, 4))  # 5 motion frames for a 4-frame clip
    with pytest.raises(ValueError, match="keyframe must be"):
        model.training_loss(frames, torch.zeros(1, 3, 16, 16), torch.zeros(1, 2, 4, 4, 4))
    with pytest.raises(ValueError, match="at most 4"):
        model.training_loss(torch.zeros(1, 6, 3, 8, 8), frames[:, 0], torch.zeros(1, 2, 6, 4, 4))
    keyframe = KeyframeDetokenizer(cond_dim=16, image_size=(8, 8))
    with pytest.raises(ValueError, match="cond must be"):
        keyframe.training_loss(torch.zeros(1, 3, 8, 8), torch.zeros(1, 6, 32))
    with pytest.raises(ValueError, match="uint8"):
        keyframe.training_loss(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), torch.zeros(1, 6, 16))


def test_keyframe_skip_starts_from_the_static_clip_and_learns_the_change():
    torch.manual_seed(0)
    kwargs = {"frames": 4, "height": 8, "width": 8, "motion_encoder": {"grid": [4, 4], "depth": 1}}
    model = VideoDetokenizer(**kwargs, keyframe_skip=True, cond_dropout=0.0).eval()
    keyframe, motion = torch.rand(2, 3, 8, 8) * 2 - 1, torch.randn(2, 2, 4, 4, 4) * 0.1
    static = keyframe[:, None].expand(2, 4, 3, 8, 8)
    out = model.sample(keyframe, motion, steps=2, max_guidance=1.0, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, static, atol=0.05, rtol=0)  # a fresh model adds ~nothing: D(x) = c_skip·x
    plain = VideoDetokenizer(**kwargs).eval()
    assert (plain.sample(keyframe, motion, steps=2, max_guidance=1.0) - static).abs().mean() > 0.1
    # the diffused variable is the clip minus its keyframe: a static clip is a zero target, close to a fresh model's
    losses = [m.training_loss(static, keyframe, motion, generator=torch.Generator().manual_seed(0)) for m in (model, plain)]
    assert losses[0].item() < 0.25 * losses[1].item()
    assert model.config["keyframe_skip"] and not plain.config["keyframe_skip"]


def _square(height: int, width: int, top: int, left: int, size: int = 4) -> torch.Tensor:
    image = -torch.ones(1, 3, height, width)
    image[..., top : top + size, left : left + size] = 1.0
    return image


def test_warp_along_motion_moves_content_by_the_field():
    keyframe = _square(16, 24, top=6, left=4)
    # 1 px/frame to the right and 0.5 px/frame down at this size, in normalized units (std 0.5, rescale 2)
    std, rescale = (0.5, 0.5), 2.0
    motion = torch.zeros(1, 2, 5, 4, 6)
    motion[:, 0] = (1 / 24) / std[0] * rescale
    motion[:, 1] = (0.5 / 16) / std[1] * rescale
    frames = warp_along_motion(keyframe, motion, std, rescale)  # [1, 5, 3, 16, 24]
    assert frames.shape == (1, 5, 3, 16, 24)
    torch.testing.assert_close(frames[:, 0], keyframe)
    for t in (2, 4):  # whole-pixel shifts: exactly the square moved by (t, t/2)
        torch.testing.assert_close(frames[:, t], _square(16, 24, top=6 + t // 2, left=4 + t), atol=1e-5, rtol=0)
    still = warp_along_motion(keyframe, torch.zeros_like(motion), std, rescale)
    torch.testing.assert_close(still, keyframe[:, None].expand_as(still))
    with pytest.raises(ValueError, match="motion must be"):
        warp_along_motion(keyframe, motion[:, :1], std, rescale)


def test_motion_warp_starts_from_the_motion_compensated_clip(tmp_path):
    torch.manual_seed(0)
    kwargs = {"frames": 4, "height": 8, "width": 8, "motion_encoder": {"grid": [4, 4], "depth": 1}}
    units = {"motion_std": [0.1, 0.1], "motion_rescale": 10.0}
    model = VideoDetokenizer(**kwargs, keyframe_skip=True, motion_warp=True, **units, cond_dropout=0.0).eval()
    keyframe, motion = torch.rand(2, 3, 8, 8) * 2 - 1, torch.randn(2, 2, 4, 4, 4) * 10  # ~1 px/frame
    warped = warp_along_motion(keyframe, motion, **units)
    static = keyframe[:, None].expand_as(warped)
    assert (warped - static).abs().mean() > 0.1  # the field moves the content
    out = model.sample(keyframe, motion, steps=2, max_guidance=1.0, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, warped.clamp(-1, 1), atol=0.05, rtol=0)  # a fresh model renders the warp
    model.save_pretrained(tmp_path / "video")
    loaded = VideoDetokenizer.from_pretrained(tmp_path / "video")
    assert loaded.config["motion_warp"] and loaded.config["motion_std"] == [0.1, 0.1]
    with pytest.raises(ConfigError, match="needs keyframe_skip"):
        VideoDetokenizer(**kwargs, motion_warp=True)
    with pytest.raises(ConfigError, match="give motion_std and motion_rescale"):
        VideoDetokenizer(**kwargs, keyframe_skip=True, motion_warp=True)


def test_a_motion_encoder_file_of_another_layout_is_a_clear_error(tmp_path):
    from safetensors.torch import load_file, save_file

    from videolavit.errors import MissingArtifactError

    model = VideoDetokenizer(frames=4, height=8, width=8, motion_encoder={"grid": [4, 4], "depth": 1})
    model.save_pretrained(tmp_path / "video")
    path = tmp_path / "video" / "motion_encoder.safetensors"
    state = {k.replace(".spatial_attention.", ".spatial_attn."): v for k, v in load_file(path).items()}
    save_file(state, path)  # the names of another block layout
    with pytest.raises(MissingArtifactError, match="motion_encoder.safetensors does not match"):
        VideoDetokenizer.from_pretrained(tmp_path / "video")
