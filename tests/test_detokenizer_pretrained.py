"""Local pretrained weights: tiny diffusers models saved to disk, loaded through the same paths as real SD/SVD ones."""

from __future__ import annotations

import pytest
import torch

from videolavit.errors import MissingArtifactError
from videolavit.models.keyframe_detokenizer import KeyframeDetokenizer
from videolavit.models.video_detokenizer import TINY_UNET, VideoDetokenizer

MOTION_ENCODER = {"grid": [4, 4], "depth": 1}


def _tiny_vae_kl():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4, norm_num_groups=8, sample_size=16, scaling_factor=0.5,
    )


def _tiny_svd(folder, in_channels=8, block_out_channels=(32, 64)):
    """A tiny "SVD img2vid" folder: unet/ (8 input channels: noisy + image latents) and a temporal-decoder vae/."""
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel

    torch.manual_seed(1)
    unet = UNetSpatioTemporalConditionModel(
        **{**TINY_UNET, "block_out_channels": list(block_out_channels)}, in_channels=in_channels, out_channels=4
    )
    unet.save_pretrained(folder / "unet")
    vae = AutoencoderKLTemporalDecoder(
        block_out_channels=(32, 32), down_block_types=("DownEncoderBlock2D",) * 2, layers_per_block=1, latent_channels=4
    )
    vae.save_pretrained(folder / "vae")
    return unet


def test_keyframe_detokenizer_in_a_local_vae_latent_space_round_trips(tmp_path):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    _tiny_vae_kl().save_pretrained(tmp_path / "sd" / "vae")
    pretrained_unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        norm_num_groups=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64, attention_head_dim=8,
    )
    pretrained_unet.save_pretrained(tmp_path / "sd" / "unet")

    model = KeyframeDetokenizer(
        cond_dim=16, image_size=(16, 16), unet_dir=str(tmp_path / "sd"), vae_dir=str(tmp_path / "sd")
    )
    assert model.latent_size == (8, 8) and model.scaling_factor == 0.5
    torch.testing.assert_close(model.unet.conv_in.weight, pretrained_unet.conv_in.weight)

    images, cond = torch.rand(2, 3, 16, 16) * 2 - 1, torch.randn(2, 5, 16)
    model.training_loss(images, cond).backward()
    assert all(p.grad is None for p in model.vae.parameters())  # the VAE is frozen
    assert model.unet.conv_in.weight.grad is not None

    model.eval()
    sample = model.sample(cond, steps=3, guidance=2.0, generator=torch.Generator().manual_seed(0))
    assert sample.shape == (2, 16, 16, 3) and sample.dtype == torch.uint8

    model.save_pretrained(tmp_path / "keyframe")
    files = {p.name for p in (tmp_path / "keyframe").rglob("*") if p.is_file()}
    assert {"config.json", "projections.safetensors", "diffusion_pytorch_model.safetensors"} <= files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pkl", ".ckpt"))]  # never pickle
    loaded = KeyframeDetokenizer.from_pretrained(tmp_path / "keyframe").eval()
    again = loaded.sample(cond, steps=3, guidance=2.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sample, again)


def test_svd_weights_load_into_the_video_detokenizer_leaving_the_new_layers_fresh(tmp_path):
    svd = _tiny_svd(tmp_path / "svd")
    torch.manual_seed(0)
    model = VideoDetokenizer(
        frames=4, height=16, width=16, motion_encoder=MOTION_ENCODER, vae_dir=str(tmp_path / "svd"), sigma_data=1.0
    )
    assert model.unet.config.in_channels == 10  # 4 noisy + 4 keyframe latent + 2 motion
    fresh_attn2 = {n: p.clone() for n, p in model.unet.named_parameters() if ".attn2." in n}

    loaded, fresh = model.load_svd_weights(tmp_path / "svd")

    source = dict(svd.named_parameters())
    own = dict(model.unet.named_parameters())
    assert len(loaded) == len(own) - len(fresh_attn2)
    assert {n for n in fresh if n.startswith("unet.") and ".attn2." in n} == {f"unet.{n}" for n in fresh_attn2}
    assert "unet.conv_in.weight[:, 8:]" in fresh
    assert any(n.startswith("motion_encoder.") for n in fresh)
    torch.testing.assert_close(own["time_embedding.linear_1.weight"], source["time_embedding.linear_1.weight"])
    torch.testing.assert_close(own["conv_in.weight"][:, :8], source["conv_in.weight"])
    assert own["conv_in.weight"][:, 8:].abs().sum() == 0  # motion channels start silent: the U-Net starts as SVD
    for name, before in fresh_attn2.items():
        torch.testing.assert_close(own[name], before)  # cross-attention untouched by the SVD weights
        assert not torch.equal(own[name], source[name])

    model.eval()
    keyframe, motion = torch.rand(1, 3, 16, 16) * 2 - 1, torch.randn(1, 2, 4, 4, 4) * 0.1
    frames = model.sample(keyframe, motion, steps=2, max_guidance=2.0, generator=torch.Generator().manual_seed(0))
    assert frames.shape == (1, 4, 3, 16, 16)  # decoded by the temporal-decoder VAE

    model.save_pretrained(tmp_path / "video")
    loaded_model = VideoDetokenizer.from_pretrained(tmp_path / "video").eval()
    again = loaded_model.sample(keyframe, motion, steps=2, max_guidance=2.0, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(frames, again)


def test_svd_weights_of_another_layout_or_a_missing_folder_are_refused(tmp_path):
    _tiny_svd(tmp_path / "wide", block_out_channels=(64, 64))
    model = VideoDetokenizer(
        frames=4, height=16, width=16, motion_encoder=MOTION_ENCODER, vae_dir=str(tmp_path / "wide")
    )
    with pytest.raises(ValueError, match="SVD-shaped unet config"):
        model.load_svd_weights(tmp_path / "wide")
    with pytest.raises(MissingArtifactError, match="no SVD U-Net"):
        model.load_svd_weights(tmp_path / "nowhere")
    with pytest.raises(MissingArtifactError, match="no diffusers VAE"):
        KeyframeDetokenizer(cond_dim=16, image_size=(16, 16), vae_dir=str(tmp_path / "nowhere"))
