"""Per-pixel temporal context for the video U-Net's spatio-temporal transformers (the official Video-LaVIT forward).

diffusers' ``TransformerSpatioTemporalModel`` gives every pixel's temporal cross-attention frame 0's whole context
([B·h·w, L, D], materialised: 15 GiB per clip at paper scale). The official model instead gives each pixel position its
own sequence of the T motion features found there: the motion grid [gh, gw] is nearest-resized to the block's (h, w)
and pixel p attends to [T, D]. :func:`use_per_pixel_time_context` swaps that forward into every such block of a U-Net;
the spatial cross-attention keeps reading its frame's grid tokens. Remaining difference from the official forward: the
grid is resized with ``size=(h, w)`` rather than ``scale_factor`` (the same indices for the paper's 16×16 → 40×72, 20×36,
10×18, 5×9); the temporal block is also checkpointed when gradient checkpointing is on (memory only, same values).

:func:`spatiotemporal_unet_forward` is the U-Net forward both contexts go through (one context per frame).
:func:`official_motion_input` is the other half of the official variant (``motion_input="official"``): the motion the
official U-Net and motion encoder read, at the latent grid and in the official units.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F


def spatiotemporal_unet_forward(unet, sample, c_noise, context, added_time_ids):
    """`UNetSpatioTemporalConditionModel.forward` with one context per frame: ``context`` [B·T, L, D] (frame-major).

    ``sample`` [B, T, C_in, h, w], ``c_noise`` [B], ``added_time_ids`` [B, 3] → [B, T, C_out, h, w].
    """
    B, T = sample.shape[:2]
    emb = unet.time_embedding(unet.time_proj(c_noise.expand(B)).to(sample.dtype))
    added = unet.add_time_proj(added_time_ids.flatten()).reshape(B, -1).to(emb.dtype)
    emb = (emb + unet.add_embedding(added)).repeat_interleave(T, dim=0)  # [B·T, E]
    h = unet.conv_in(sample.flatten(0, 1))  # [B·T, C0, h, w]
    indicator = torch.zeros(B, T, dtype=h.dtype, device=h.device)
    skips = (h,)
    for block in unet.down_blocks:
        extra = {"encoder_hidden_states": context} if getattr(block, "has_cross_attention", False) else {}
        h, res = block(hidden_states=h, temb=emb, image_only_indicator=indicator, **extra)
        skips += res
    h = unet.mid_block(hidden_states=h, temb=emb, encoder_hidden_states=context, image_only_indicator=indicator)
    for i, block in enumerate(unet.up_blocks):
        res, skips = skips[-len(block.resnets) :], skips[: -len(block.resnets)]
        # Always pass the skip's size so grids that are not a multiple of 2^levels work.
        size = skips[-1].shape[2:] if i < len(unet.up_blocks) - 1 else None
        extra = {"encoder_hidden_states": context} if getattr(block, "has_cross_attention", False) else {}
        h = block(
            hidden_states=h,
            temb=emb,
            res_hidden_states_tuple=res,
            upsample_size=size,
            image_only_indicator=indicator,
            **extra,
        )
    h = unet.conv_out(unet.conv_act(unet.conv_norm_out(h)))
    return h.reshape(B, T, *h.shape[1:])


def per_pixel_time_context(context: torch.Tensor, frames: int, grid: tuple[int, int], size: tuple[int, int]):
    """Grid tokens [B·T, gh·gw, D] (frame-major) → per-pixel sequences [B·h·w, T, D] at ``size`` = (h, w)."""
    gh, gw = grid
    bt, n, d = context.shape
    if n != gh * gw:
        raise ValueError(f"per-pixel temporal context needs the {gh}x{gw} motion grid's tokens, got {n} tokens")
    b = bt // frames
    x = context.reshape(bt, gh, gw, d).permute(0, 3, 1, 2)  # [B·T, D, gh, gw]
    if (gh, gw) != tuple(size):
        x = F.interpolate(x.float(), size=tuple(size), mode="nearest").to(context.dtype)
    h, w = size
    x = x.reshape(b, frames, d, h * w).permute(0, 3, 1, 2)  # [B, h·w, T, D]
    return x.reshape(b * h * w, frames, d)


def official_motion_input(motion: torch.Tensor, size: tuple[int, int], rescale: float) -> torch.Tensor:
    """Normalized motion [B, 2, T, h, w] (the tokenizer's input units) → [B, T, 2, H, W] at the latent ``size``.

    As the official motion tokenizer hands its reconstruction to the detokenizer: each frame resized bicubically
    (in float32) to the latent grid and divided by ``rescale`` (its ×10: what is left is x/W, y/H ÷ the motion std).
    """
    B, _, T, h, w = motion.shape
    x = motion.transpose(1, 2).reshape(B * T, 2, h, w).float()
    if (h, w) != tuple(size):
        x = F.interpolate(x, size=tuple(size), mode="bicubic", align_corners=False)
    return (x / float(rescale)).reshape(B, T, 2, *size).to(motion.dtype)


def _forward(self, hidden_states, encoder_hidden_states=None, image_only_indicator=None, return_dict=True):
    """``TransformerSpatioTemporalModel.forward`` with the per-pixel temporal context (see the module docstring)."""
    from diffusers.models.transformers.transformer_temporal import TransformerTemporalModelOutput
    from torch.utils.checkpoint import checkpoint

    batch_frames, _, height, width = hidden_states.shape
    frames = image_only_indicator.shape[-1]
    batch = batch_frames // frames
    time_context = per_pixel_time_context(encoder_hidden_states, frames, self._motion_grid, (height, width))
    residual = hidden_states
    hidden_states = self.norm(hidden_states)
    inner = hidden_states.shape[1]
    hidden_states = self.proj_in(hidden_states.permute(0, 2, 3, 1).reshape(batch_frames, height * width, inner))
    positions = torch.arange(frames, device=hidden_states.device).repeat(batch)
    emb = self.time_pos_embed(self.time_proj(positions).to(hidden_states.dtype))[:, None, :]
    ckpt = torch.is_grad_enabled() and getattr(self, "gradient_checkpointing", False)

    def spatial(block, x):
        return block(x, encoder_hidden_states=encoder_hidden_states)

    def temporal(block, x):
        return block(x, num_frames=frames, encoder_hidden_states=time_context)

    for block, temporal_block in zip(self.transformer_blocks, self.temporal_transformer_blocks):
        if ckpt:
            hidden_states = checkpoint(spatial, block, hidden_states, use_reentrant=False)
            mixed = checkpoint(temporal, temporal_block, hidden_states + emb, use_reentrant=False)
        else:
            hidden_states = spatial(block, hidden_states)
            mixed = temporal(temporal_block, hidden_states + emb)
        hidden_states = self.time_mixer(
            x_spatial=hidden_states, x_temporal=mixed, image_only_indicator=image_only_indicator
        )
    hidden_states = self.proj_out(hidden_states)
    hidden_states = hidden_states.reshape(batch_frames, height, width, inner).permute(0, 3, 1, 2).contiguous()
    output = hidden_states + residual
    return TransformerTemporalModelOutput(sample=output) if return_dict else (output,)


def use_per_pixel_time_context(unet: torch.nn.Module, grid: tuple[int, int]) -> int:
    """Give every spatio-temporal transformer of ``unet`` the per-pixel temporal context; returns how many."""
    from diffusers.models.transformers.transformer_temporal import TransformerSpatioTemporalModel

    count = 0
    for module in unet.modules():
        if isinstance(module, TransformerSpatioTemporalModel):
            module._motion_grid = (int(grid[0]), int(grid[1]))
            module.forward = types.MethodType(_forward, module)
            count += 1
    return count
