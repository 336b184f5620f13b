"""Motion feature encoder of the video detokenizer's enhanced motion conditioning (EMC, paper §3.2).

The paper's design: the motion tokenizer's encoder f_E *without* its down-sampling layers, so every frame keeps a grid
of features. As in the official `modeling_motion_condition.py`, the motion field is first resized (bicubic) to a fixed
grid (16×16 at paper scale), embedded by a Linear, run through spatio-temporal transformer blocks and projected to the
U-Net's cross-attention width. Output: one feature sequence per frame, [B, T, grid_h·grid_w, out_dim].

The blocks are the tokenizer's own `SpatioTemporalBlock` (pre-LN spatial attention within each frame, temporal attention
along each position, MLP).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from videolavit.models.blocks import SpatioTemporalBlock


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
        x = x.reshape(B, T, *self.grid, x.shape[-1])  # [B, T, grid_h, grid_w, D]: the blocks' layout
        for block in self.blocks:
            x = block(x)
        return self.out_proj(self.norm(x.flatten(2, 3)))  # [B, T, N, out_dim]
