"""MotionTokenizer: the spatiotemporal transformer VQ-VAE that turns a clip's motion field into discrete tokens.

After the paper (§3.1, A.1) and the official ``modeling_motion_tokenizer.py``: factorized spatial/temporal attention
blocks, Conv3d down-sampling after chosen blocks (paper: after 3/6/9/12, [24, 20, 36] → [3, 5, 9] = 135 tokens),
a Linear–Tanh–Linear projection to a small code dimension, an L2-normalized EMA codebook, and a mirrored decoder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from videolavit.errors import ConfigError, MissingArtifactError
from videolavit.models.blocks import SpatioTemporalBlock
from videolavit.models.quantizer import VectorQuantizer

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
ATTENTION_KINDS = ("factorized", "joint")


class Downsample(nn.Module):
    """Conv3d k=3 with the official code's padding: (1, 1) on unstrided axes, (0, 1) on stride-2 axes (exact halving)."""

    def __init__(self, dim: int, stride: Sequence[int]):
        super().__init__()
        self.conv = nn.Conv3d(dim, dim, kernel_size=3, stride=tuple(stride))
        pad: list[int] = []
        for s in reversed(stride):  # F.pad lists the last axis (W) first
            total = 3 - s
            pad += [total // 2, total - total // 2]
        self.pad = tuple(pad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 4, 1, 2, 3)  # [B, D, T, H, W]
        x = self.conv(F.pad(x, self.pad))
        return x.permute(0, 2, 3, 4, 1)  # [B, T', H', W', D]


class Upsample(nn.Module):
    """Nearest up-sampling by the mirrored stride, then Conv3d k=3."""

    def __init__(self, dim: int, stride: Sequence[int]):
        super().__init__()
        self.scale = tuple(float(s) for s in stride)
        self.conv = nn.Conv3d(dim, dim, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 4, 1, 2, 3)  # [B, D, T, H, W]
        x = self.conv(F.interpolate(x, scale_factor=self.scale, mode="nearest"))
        return x.permute(0, 2, 3, 4, 1)


def _task_layer(dim_in: int, dim_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim_in, dim_in), nn.Tanh(), nn.Linear(dim_in, dim_out))


class MotionTokenizer(nn.Module):
    """VQ-VAE over motion [B, 2, T, H, W] → ``tokens_per_clip`` codes in ``codebook_size`` (paper: 135 of 1024)."""

    def __init__(
        self,
        in_channels: int = 2,
        frames: int = 24,
        height: int = 20,
        width: int = 36,
        dim: int = 512,
        depth: int = 12,
        heads: int = 8,
        mlp_ratio: float = 4.0,
        downsample_after: Sequence[int] = (3, 6, 9, 12),
        downsample_strides: Sequence[Sequence[int]] = ((1, 2, 2), (2, 1, 1), (2, 1, 1), (2, 2, 2)),
        code_dim: int = 32,
        codebook_size: int = 1024,
        ema_decay: float = 0.995,
        kmeans_init: bool = True,
        dead_code_threshold: float = 2.0,
        commitment_weight: float = 0.25,
        attention: str = "factorized",
    ):
        super().__init__()
        downsample_after = [int(a) for a in downsample_after]
        downsample_strides = [[int(s) for s in stride] for stride in downsample_strides]
        self.config = dict(
            in_channels=in_channels, frames=frames, height=height, width=width, dim=dim, depth=depth, heads=heads,
            mlp_ratio=mlp_ratio, downsample_after=downsample_after, downsample_strides=downsample_strides,
            code_dim=code_dim, codebook_size=codebook_size, ema_decay=ema_decay, kmeans_init=kmeans_init,
            dead_code_threshold=dead_code_threshold, commitment_weight=commitment_weight, attention=attention,
        )
        self.token_grid = _token_grid((frames, height, width), depth, downsample_after, downsample_strides)
        if attention not in ATTENTION_KINDS:
            raise ConfigError(f"motion tokenizer: attention must be one of {ATTENTION_KINDS}, got {attention!r}")
        self.in_channels, self.frames, self.height, self.width = in_channels, frames, height, width
        self.codebook_size = codebook_size
        # Block index ranges per resolution: segment i runs before down-sampling layer i; the last one has none.
        bounds = [0, *downsample_after, depth]
        self.segments = [(bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)]

        self.in_proj = nn.Linear(in_channels, dim)
        self.spatial_pos = nn.Parameter(torch.zeros(1, 1, height, width, dim))  # [1, 1, H, W, D]
        self.temporal_pos = nn.Parameter(torch.zeros(1, frames, 1, 1, dim))  # [1, T, 1, 1, D]
        self.encoder_blocks = nn.ModuleList(SpatioTemporalBlock(dim, heads, mlp_ratio, attention) for _ in range(depth))
        self.downsample = nn.ModuleList(Downsample(dim, s) for s in downsample_strides)
        self.encoder_norm = nn.LayerNorm(dim)
        self.encode_task_layer = _task_layer(dim, code_dim)

        self.quantizer = VectorQuantizer(
            code_dim, codebook_size, decay=ema_decay, kmeans_init=kmeans_init,
            dead_code_threshold=dead_code_threshold, commitment_weight=commitment_weight,
        )

        self.decoder_in_proj = nn.Linear(code_dim, dim)
        self.decoder_blocks = nn.ModuleList(SpatioTemporalBlock(dim, heads, mlp_ratio, attention) for _ in range(depth))
        self.upsample = nn.ModuleList(Upsample(dim, s) for s in reversed(downsample_strides))
        self.decoder_norm = nn.LayerNorm(dim)
        self.decode_task_layer = _task_layer(dim, in_channels)
        self.apply(_init_weights)
        # The input is 2-channel, mostly-zero motion: at std 0.02 its embedding starts far below the positional
        # embeddings and the encoder starts (and, at a high LR, stays) blind to it. Unit std puts motion first.
        nn.init.normal_(self.in_proj.weight, std=1.0)
        nn.init.trunc_normal_(self.spatial_pos, std=0.02)
        nn.init.trunc_normal_(self.temporal_pos, std=0.02)

    # ----------------------------------------------------------------------------------------------------------------

    @property
    def tokens_per_clip(self) -> int:
        t, h, w = self.token_grid
        return t * h * w

    def _check_motion(self, motion: torch.Tensor) -> None:
        expected = (self.in_channels, self.frames, self.height, self.width)
        if motion.dim() != 5 or tuple(motion.shape[1:]) != expected:
            raise ValueError(
                f"motion tokenizer expects motion of shape [B, {', '.join(map(str, expected))}] "
                f"(B, 2, T, H, W), got {list(motion.shape)}"
            )

    def _encode_features(self, motion: torch.Tensor) -> torch.Tensor:
        """motion [B, 2, T, H, W] → pre-quantization features [B, N, code_dim]."""
        self._check_motion(motion)
        x = self.in_proj(motion.permute(0, 2, 3, 4, 1))  # [B, T, H, W, D]
        x = x + self.spatial_pos + self.temporal_pos
        for i, (start, stop) in enumerate(self.segments):
            for block in self.encoder_blocks[start:stop]:
                x = block(x)
            if i < len(self.downsample):
                x = self.downsample[i](x)
        x = self.encode_task_layer(self.encoder_norm(x))  # [B, t, h, w, code_dim]
        return x.flatten(1, 3)  # [B, N, code_dim]

    def _decode_features(self, quantized: torch.Tensor) -> torch.Tensor:
        """quantized [B, N, code_dim] → motion [B, 2, T, H, W]."""
        t, h, w = self.token_grid
        x = self.decoder_in_proj(quantized.view(quantized.shape[0], t, h, w, -1))  # [B, t, h, w, D]
        for i, (start, stop) in enumerate(reversed(self.segments)):
            if i > 0:
                x = self.upsample[i - 1](x)
            for block in self.decoder_blocks[start:stop]:
                x = block(x)
        x = self.decode_task_layer(self.decoder_norm(x))  # [B, T, H, W, 2]
        return x.permute(0, 4, 1, 2, 3).contiguous()

    def forward(self, motion: torch.Tensor) -> dict[str, torch.Tensor]:
        """motion [B, 2, T, H, W] → reconstruction (same shape), codes [B, N], vq_loss (commitment, scalar)."""
        q = self.quantizer(self._encode_features(motion))
        return {"reconstruction": self._decode_features(q.quantized), "codes": q.codes, "vq_loss": q.loss}

    @torch.no_grad()
    def encode(self, motion: torch.Tensor) -> torch.Tensor:
        """motion [B, 2, T, H, W] → codes long [B, N] (no codebook update)."""
        return self.quantizer.encode(self._encode_features(motion))

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, N] → motion [B, 2, T, H, W]."""
        if codes.dim() != 2 or codes.shape[1] != self.tokens_per_clip:
            raise ValueError(
                f"motion tokenizer decodes codes of shape [B, {self.tokens_per_clip}] "
                f"(grid {'×'.join(map(str, self.token_grid))}), got {list(codes.shape)}"
            )
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(
                f"motion codes must lie in [0, {self.codebook_size}), got range [{int(codes.min())}, {int(codes.max())}]"
            )
        return self._decode_features(self.quantizer.decode(codes.long()))

    # ----------------------------------------------------------------------------------------------------------------

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (weights and codebook state) into ``directory``."""
        from safetensors.torch import save_model

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        (out / CONFIG_NAME).write_text(json.dumps(self.config, indent=2) + "\n")
        save_model(self, str(out / WEIGHTS_NAME))
        return out

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> "MotionTokenizer":
        """The tokenizer saved by ``save_pretrained``; MissingArtifactError if the directory or a file is absent."""
        from safetensors.torch import load_model

        path = Path(directory)
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            if not (path / name).is_file():
                raise MissingArtifactError(
                    f"motion tokenizer not found: '{path / name}' is missing (train it with `videolavit motion_tokenizer`)"
                )
        model = cls(**json.loads((path / CONFIG_NAME).read_text()))
        load_model(model, str(path / WEIGHTS_NAME), device=str(map_location))
        return model.eval()


ARCHITECTURE_KEYS = ("in_channels", "frames", "height", "width", "dim", "depth", "heads", "mlp_ratio", "downsample_after",
                     "downsample_strides", "code_dim", "codebook_size", "attention")


def load_weights_from(model: MotionTokenizer, directory: str | Path) -> MotionTokenizer:
    """Copy the weights and codebook state of a saved tokenizer into ``model``; ConfigError if the shapes differ."""
    saved = MotionTokenizer.from_pretrained(directory)
    differ = {k: (saved.config[k], model.config[k]) for k in ARCHITECTURE_KEYS if saved.config[k] != model.config[k]}
    if differ:
        shown = ", ".join(f"{k}: saved {a} vs configured {b}" for k, a, b in ((k, *v) for k, v in differ.items()))
        raise ConfigError(f"the motion tokenizer in '{directory}' has another architecture ({shown})")
    model.load_state_dict(saved.state_dict())
    return model


def _token_grid(
    size: Sequence[int], depth: int, downsample_after: Sequence[int], strides: Sequence[Sequence[int]]
) -> tuple[int, int, int]:
    """(t, h, w) of the token grid; ConfigError when the layout cannot down-sample ``size`` exactly."""
    if len(downsample_after) != len(strides):
        raise ConfigError(
            f"motion tokenizer: downsample_after has {len(downsample_after)} entries but downsample_strides has {len(strides)}"
        )
    if list(downsample_after) != sorted(set(downsample_after)) or any(a < 0 or a > depth for a in downsample_after):
        raise ConfigError(f"motion tokenizer: downsample_after={list(downsample_after)} must increase within 0..depth={depth} (0: right after in_proj)")
    grid = list(size)
    for stride in strides:
        if len(stride) != 3 or any(s not in (1, 2, 3) for s in stride):
            raise ConfigError(f"motion tokenizer: each stride is (t, h, w) with values in 1..3, got {list(stride)}")
        for axis, s in enumerate(stride):
            if grid[axis] % s:
                raise ConfigError(
                    f"motion tokenizer: input (T, H, W)={tuple(size)} cannot be down-sampled by the strides "
                    f"{[list(s) for s in strides]} (axis {'THW'[axis]} of size {grid[axis]} is not divisible by {s})"
                )
            grid[axis] //= s
    return tuple(grid)  # type: ignore[return-value]


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Conv3d)):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)

