"""Transformer pieces shared by the models: self-attention, the MLP, the spatiotemporal block, parameter counting."""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from videolavit.errors import ConfigError


def count_parameters(module: Optional[nn.Module]) -> int:
    """Unique parameters of ``module`` (a tied weight counts once; None counts 0; works on the ``meta`` device)."""
    return 0 if module is None else sum(math.prod(p.shape) for p in module.parameters())


class MLP(nn.Sequential):
    """Linear → GELU → Linear, hidden width ``dim · ratio`` (state-dict names ``0.*`` and ``2.*``)."""

    def __init__(self, dim: int, ratio: float):
        hidden = int(dim * ratio)
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


class Attention(nn.Module):
    """Multi-head self-attention over [B, N, D] with ``F.scaled_dot_product_attention`` (one fused qkv projection)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ConfigError(f"attention width dim={dim} is not divisible by heads={heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # [3, B, heads, N, d_h]
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # [B, heads, N, d_h]
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class SpatioTemporalBlock(nn.Module):
    """Pre-LN block: spatial attention within each frame, temporal attention along each position, then an MLP.

    ``attention="joint"`` replaces the two with one attention over all T·H·W tokens (the baseline of the benchmark).
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, attention: str = "factorized"):
        super().__init__()
        self.attention = attention
        self.norm_spatial = nn.LayerNorm(dim)
        self.spatial_attention = Attention(dim, heads)
        if attention == "factorized":
            self.norm_temporal = nn.LayerNorm(dim)
            self.temporal_attention = Attention(dim, heads)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, h, w, d = x.shape  # [B, T, H, W, D]
        if self.attention == "joint":
            x = x.reshape(b, t * h * w, d)  # [B, T·H·W, D]
            x = x + self.spatial_attention(self.norm_spatial(x))
        else:
            x = x.reshape(b * t, h * w, d)  # [(B·T), H·W, D]
            x = x + self.spatial_attention(self.norm_spatial(x))
            x = x.view(b, t, h * w, d).transpose(1, 2).reshape(b * h * w, t, d)  # [(B·H·W), T, D]
            x = x + self.temporal_attention(self.norm_temporal(x))
            x = x.view(b, h * w, t, d).transpose(1, 2)
        x = x.reshape(b, t, h, w, d)
        return x + self.mlp(self.norm_mlp(x))
