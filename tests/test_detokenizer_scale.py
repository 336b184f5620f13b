"""Detokenizers that fit (issue 18 item 4): per-pixel temporal context as the official forward, gradient checkpointing."""

from __future__ import annotations

import pytest
import torch

from videolavit.models.temporal_context import per_pixel_time_context


def test_each_pixel_reads_the_motion_features_at_its_position():
    B, T, gh, gw, D = 2, 3, 4, 6, 5
    feats = torch.randn(B, T, gh * gw, D)
    ctx = per_pixel_time_context(feats.flatten(0, 1), T, (gh, gw), (8, 12))  # nearest ×2
    assert ctx.shape == (B * 8 * 12, T, D)
    ctx = ctx.reshape(B, 8, 12, T, D)
    grid = feats.reshape(B, T, gh, gw, D)
    for y, x in [(0, 0), (3, 5), (7, 11)]:
        assert torch.equal(ctx[:, y, x], grid[:, :, y // 2, x // 2])  # the T features of the grid cell under the pixel
    with pytest.raises(ValueError, match="4x6 motion grid"):
        per_pixel_time_context(torch.randn(B * T, 7, D), T, (gh, gw), (8, 12))


def _loss_and_grads(**kwargs):
    from videolavit.models.video_detokenizer import VideoDetokenizer

    torch.manual_seed(0)
    model = VideoDetokenizer(frames=3, height=16, width=24, motion_encoder={"grid": [4, 6], "dim": 32}, **kwargs)
    model.train()
    frames = torch.rand(2, 3, 3, 16, 24) * 2 - 1
    motion = torch.randn(2, 2, 3, 4, 6)
    loss = model.training_loss(frames, frames[:, 0], motion, generator=torch.Generator().manual_seed(1))
    loss.backward()
    return model, loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_per_pixel_context_reaches_the_temporal_attention_and_checkpointing_keeps_values():
    model, loss, grads = _loss_and_grads(temporal_context="per_pixel")
    seen = []
    from diffusers.models.attention import TemporalBasicTransformerBlock

    hooks = [
        m.attn2.register_forward_hook(lambda mod, args, kw, out: seen.append(kw["encoder_hidden_states"].shape), with_kwargs=True)
        for m in model.unet.modules() if isinstance(m, TemporalBasicTransformerBlock) and m.attn2 is not None
    ]
    with torch.no_grad():
        model.eval()
        model.sample(torch.zeros(1, 3, 16, 24), torch.randn(1, 2, 3, 4, 6), steps=1, max_guidance=1.0)
    for h in hooks:
        h.remove()
    assert seen and all(s[1] == 3 for s in seen), f"temporal context lengths {seen} (want T = 3 per pixel)"
    # the temporal cross-attention's weights learn from the motion features
    assert any(".temporal_transformer_blocks." in n and ".attn2.to_k" in n and g.abs().sum() > 0 for n, g in grads.items())
    _, loss_ckpt, grads_ckpt = _loss_and_grads(temporal_context="per_pixel", gradient_checkpointing=True)
    assert torch.allclose(loss, loss_ckpt)
    for n, g in grads.items():
        assert torch.allclose(g, grads_ckpt[n], atol=1e-6), n


def test_paper_defaults_and_tiny_profile_choice():
    from videolavit.config import load_config
    from videolavit.stages.detokenizer import keyframe_kwargs, video_kwargs

    paper, tiny = load_config(profile="paper"), load_config(profile="tiny")
    assert video_kwargs(paper)["temporal_context"] == "per_pixel"
    assert video_kwargs(paper)["gradient_checkpointing"] is True
    assert keyframe_kwargs(paper, 32)["gradient_checkpointing"] is True
    assert video_kwargs(tiny)["temporal_context"] == "broadcast"  # the path its recorded metrics came from
    with pytest.raises(Exception, match="temporal_context"):
        _loss_and_grads(temporal_context="sideways")
