"""Motion feature encoder of the video detokenizer's enhanced motion conditioning (EMC, paper §3.2).

The paper's design: the motion tokenizer's encoder f_E *without* its down-sampling layers, so every frame keeps a grid
of features. As in the official `modeling_motion_condition.py`, the motion field is first resized (bicubic) to a fixed
grid (16×16 at paper scale), embedded by a Linear, run through spatio-temporal transformer blocks and projected to the
U-Net's cross-attention width. Output: one feature sequence per frame, [B, T, grid_h·grid_w, out_dim].

`SpatioTemporalBlock` is a local copy of the tokenizer's block (pre-LN spatial attention over [(B·T), H·W, D], temporal
attention over [(B·H·W), T, D], MLP); it can be deduplicated with `models/motion_tokenizer.py` once that exists.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """Multi-head self-attention over [B, N, D] (qkv with bias, as the official blocks)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # 3 × [B, h, N, d]
        out = F.scaled_dot_product_attention(q, k, v)  # [B, h, N, d]
        return self.proj(out.transpose(1, 2).reshape(B, N, D))


class SpatioTemporalBlock(nn.Module):
    """Pre-LN block: spatial attention within each frame, temporal attention across frames per position, MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm_spatial = nn.LayerNorm(dim, eps=1e-5)
        self.spatial_attn = Attention(dim, heads)
        self.norm_temporal = nn.LayerNorm(dim, eps=1e-5)
        self.temporal_attn = Attention(dim, heads)
        self.norm_mlp = nn.LayerNorm(dim, eps=1e-5)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` [B, T, N, D] → [B, T, N, D]."""
        B, T, N, D = x.shape
        s = x.reshape(B * T, N, D)
        s = s + self.spatial_attn(self.norm_spatial(s))
        t = s.reshape(B, T, N, D).transpose(1, 2).reshape(B * N, T, D)
        t = t + self.temporal_attn(self.norm_temporal(t))
        t = t + self.mlp(self.norm_mlp(t))
        return t.reshape(B, N, T, D).transpose(1, 2)


class MotionConditionEncoder(nn.Module):
    """Motion field [B, 2, T, h, w] → per-frame motion features [B, T, grid_h·grid_w, out_dim]."""

    def __init__(
        self,
        grid: tuple[int, int] | list[int] = (16, 16),
        dim: int = 512,
        depth: int = 12,
        heads: int = 8,
        mlp_ratio: float = 4.0,
        out_dim: int = 1024,
        frames: int = 24,
        temporal_embedding: bool = True,
    ):
        super().__init__()
        self.grid = (int(grid[0]), int(grid[1]))
        self.frames = frames
        n = self.grid[0] * self.grid[1]
        self.in_proj = nn.Linear(2, dim)
        self.spatial_embedding = nn.Parameter(torch.zeros(1, 1, n, dim))  # [1, 1, N, D]
        # The official encoder has none by default; the detokenizer's per-frame summary tokens need the frame order.
        self.temporal_embedding = nn.Parameter(torch.zeros(1, frames, 1, dim)) if temporal_embedding else None
        nn.init.trunc_normal_(self.spatial_embedding, std=0.02)
        if self.temporal_embedding is not None:
            nn.init.trunc_normal_(self.temporal_embedding, std=0.02)
        self.blocks = nn.ModuleList(SpatioTemporalBlock(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-5)
        self.out_proj = nn.Linear(dim, out_dim)

    def forward(self, motion: torch.Tensor) -> torch.Tensor:
        if motion.ndim != 5 or motion.shape[1] != 2:
            raise ValueError(f"motion must be [B, 2, T, h, w], got {tuple(motion.shape)}")
        B, _, T, h, w = motion.shape
        if T > self.frames:
            raise ValueError(f"motion has {T} frames, the motion condition encoder was built for at most {self.frames}")
        x = motion.transpose(1, 2).reshape(B * T, 2, h, w)
        if (h, w) != self.grid:
            x = F.interpolate(x, size=self.grid, mode="bicubic", align_corners=False)
        x = x.reshape(B, T, 2, -1).transpose(2, 3)  # [B, T, N, 2]
        x = self.in_proj(x) + self.spatial_embedding  # [B, T, N, D]
        if self.temporal_embedding is not None:
            x = x + self.temporal_embedding[:, :T]
        for block in self.blocks:
            x = block(x)
        return self.out_proj(self.norm(x))  # [B, T, N, out_dim]
