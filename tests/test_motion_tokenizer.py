"""MotionTokenizer: paper-size layout on the meta device, shapes, token counts, save/load round trip, clear errors."""

from __future__ import annotations

import json

import pytest
import torch

from videolavit.config import load_config, section_kwargs
from videolavit.errors import ConfigError, MissingArtifactError
from videolavit.models.blocks import count_parameters
from videolavit.models.motion_tokenizer import MotionTokenizer

SMALL = dict(
    frames=8, height=4, width=6, dim=16, depth=2, heads=2, downsample_after=[1, 2],
    downsample_strides=[[2, 2, 2], [2, 1, 1]], code_dim=8, codebook_size=32,
)


def small_model(**overrides) -> MotionTokenizer:
    torch.manual_seed(0)
    return MotionTokenizer(**{**SMALL, **overrides})


def motion_batch(batch: int = 3) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(batch, 2, 8, 4, 6)  # [B, 2, T, H, W]


def paper_parameter_count(d: int = 512, code_dim: int = 32, depth: int = 12, t: int = 24, h: int = 20, w: int = 36) -> int:
    """Parameters of the official layout, counted by hand (attention 4d²+4d, MLP 8d²+5d, 3 LayerNorms, Conv3d 27d²+d)."""
    block = 2 * (4 * d * d + 4 * d) + (8 * d * d + 5 * d) + 3 * 2 * d
    convs = 8 * (27 * d * d + d)  # 4 down-sampling + 4 up-sampling
    encoder = 3 * d + h * w * d + t * d + 2 * d + (d * d + d) + (d * code_dim + code_dim)
    decoder = (code_dim * d + d) + 2 * d + (d * d + d) + (d * 2 + 2)
    return 2 * depth * block + convs + encoder + decoder


def test_paper_profile_tokenizer_matches_the_paper():
    cfg = load_config(profile="paper", params_file=None)
    with torch.device("meta"):
        model = MotionTokenizer(**section_kwargs(cfg.motion_tokenizer.model))
    assert (model.frames, model.height, model.width) == (24, 20, 36)
    assert model.token_grid == (3, 5, 9)
    assert model.tokens_per_clip == 135
    assert tuple(model.quantizer.codebook.shape) == (1024, 32)
    assert len(model.encoder_blocks) == len(model.decoder_blocks) == 12
    assert model.encoder_blocks[0].spatial_attention.qkv.in_features == 512
    assert model.encoder_blocks[0].spatial_attention.heads == 8
    assert model.encoder_blocks[0].mlp[0].out_features == 2048  # MLP ratio 4
    assert count_parameters(model) == paper_parameter_count()
    assert 150e6 < count_parameters(model) < 170e6


def test_tiny_profile_token_count():
    cfg = load_config(profile="tiny", params_file=None)
    model = MotionTokenizer(**section_kwargs(cfg.motion_tokenizer.model))
    assert model.token_grid == (6, 4, 6)
    assert model.tokens_per_clip == 144


def test_forward_encode_decode_shapes():
    model = small_model()
    motion = motion_batch()
    out = model(motion)
    assert out["reconstruction"].shape == motion.shape
    assert model.token_grid == (2, 2, 3) and model.tokens_per_clip == 12
    assert out["codes"].shape == (3, 12) and out["codes"].dtype == torch.long
    assert out["vq_loss"].ndim == 0
    model.eval()
    codes = model.encode(motion)
    assert codes.shape == (3, 12) and codes.dtype == torch.long
    assert 0 <= int(codes.min()) and int(codes.max()) < 32
    assert torch.equal(codes, model(motion)["codes"])  # eval forward and encode agree
    assert model.decode(codes).shape == motion.shape
    assert torch.allclose(model.decode(codes), model(motion)["reconstruction"], atol=1e-5)


def test_reconstruction_gradient_reaches_the_encoder():
    model = small_model()
    motion = motion_batch()
    out = model(motion)
    (torch.nn.functional.mse_loss(out["reconstruction"], motion) + out["vq_loss"]).backward()
    assert model.in_proj.weight.grad is not None and model.in_proj.weight.grad.abs().sum() > 0
    assert model.spatial_pos.grad.abs().sum() > 0


def test_save_load_round_trip_gives_identical_codes(tmp_path):
    model = small_model()
    motion = motion_batch()
    model.train()
    model(motion)  # k-means init and an EMA update, so the saved codebook is not the random one
    model.eval()
    codes = model.encode(motion)
    model.save_pretrained(tmp_path / "mt")
    assert json.loads((tmp_path / "mt" / "config.json").read_text())["codebook_size"] == 32
    loaded = MotionTokenizer.from_pretrained(tmp_path / "mt")
    assert not loaded.training
    assert torch.equal(loaded.encode(motion), codes)
    assert torch.equal(loaded.decode(codes), model.decode(codes))


def test_from_pretrained_missing_names_the_path(tmp_path):
    with pytest.raises(MissingArtifactError, match="config.json"):
        MotionTokenizer.from_pretrained(tmp_path / "nowhere")


def test_wrong_motion_shape_is_a_clear_error():
    model = small_model()
    with pytest.raises(ValueError, match=r"\[B, 2, 8, 4, 6\]"):
        model(torch.zeros(1, 2, 8, 5, 6))
    with pytest.raises(ValueError, match="shape"):
        model.encode(torch.zeros(2, 8, 4, 6))


def test_decode_rejects_wrong_token_count_and_out_of_range_codes():
    model = small_model().eval()
    with pytest.raises(ValueError, match="12"):
        model.decode(torch.zeros(1, 11, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 32\)"):
        model.decode(torch.full((1, 12), 32, dtype=torch.long))


def test_layout_that_cannot_downsample_the_input_is_a_config_error():
    with pytest.raises(ConfigError, match="not divisible"):
        MotionTokenizer(**{**SMALL, "height": 5})
    with pytest.raises(ConfigError, match="downsample_strides"):
        MotionTokenizer(**{**SMALL, "downsample_after": [1]})
    with pytest.raises(ConfigError, match="heads"):
        MotionTokenizer(**{**SMALL, "heads": 3})
    with pytest.raises(ConfigError, match="attention"):
        MotionTokenizer(**{**SMALL, "attention": "axial"})


def test_stem_downsampling_before_the_first_block():
    model = small_model(downsample_after=[0, 2])
    assert model.token_grid == (2, 2, 3)
    assert model(motion_batch())["reconstruction"].shape == (3, 2, 8, 4, 6)


def test_joint_attention_has_one_attention_per_block():
    factorized, joint = small_model(), small_model(attention="joint")
    out = joint(motion_batch())
    assert out["reconstruction"].shape == (3, 2, 8, 4, 6)
    d = SMALL["dim"]
    one_attention_and_norm = 4 * d * d + 4 * d + 2 * d
    assert count_parameters(factorized) - count_parameters(joint) == 2 * SMALL["depth"] * one_attention_and_norm
