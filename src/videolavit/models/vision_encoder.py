"""The visual tokenizer's building blocks: a pre-norm ViT (``VisionEncoder``, EVA-CLIP's layout with ``cls_token``),
the frozen teacher loader, and the masked attention blocks its token selector, merger and decoder are made of."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from videolavit.errors import ConfigError, MissingArtifactError
from videolavit.models.blocks import MLP

ENCODER_MODEL_TYPE = "videolavit_vision_encoder"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def preprocess_images(images, size: int) -> torch.Tensor:
    """uint8 RGB [B, H, W, 3] or [H, W, 3] (numpy or torch) → float [B, 3, size, size], bicubic, CLIP-normalized."""
    x = torch.as_tensor(images)
    if x.dtype != torch.uint8:
        raise ValueError(f"preprocess expects uint8 RGB images, got dtype {x.dtype}")
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"preprocess expects images shaped [B, H, W, 3] or [H, W, 3], got {tuple(x.shape)}")
    x = x.permute(0, 3, 1, 2).float().div(255.0)  # [B, 3, H, W]
    if x.shape[-2:] != (size, size):
        # antialias matches PIL's bicubic when shrinking (the official processor resizes straight to size×size)
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def _policy_softmax(scores: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Softmax over the keys whose 0/1 ``weights`` are 1 (after DynamicViT).

    The weights multiply the exponentials, so a straight-through mask receives gradients for dropped keys as well.
    A row with no allowed key attends to nothing (zeros). scores [B, h, Q, K]; weights broadcast to it.
    """
    allowed = weights > 0
    m = scores.detach().masked_fill(~allowed, float("-inf")).amax(-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, scores.detach().amax(-1, keepdim=True))
    # a dropped key's exponential is capped at the best allowed one's: adding a key moves the output by at most its
    # distance to the value, and an uncapped linearization (up to e^Δscore larger) made the selector collapse
    e = torch.exp((scores - m).clamp(max=0.0)) * weights
    # with an allowed key the sum is ≥ 1 (its max term is exp(0)), so clamping only touches empty rows
    return e / e.sum(-1, keepdim=True).clamp_min(1.0)


def _official_policy_softmax(scores: torch.Tensor, weights: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """The official merger's masked softmax: max over every key, ``(e·w + eps/K) / (Σ e·w + eps)``.

    Kept for weights imported from the release: a row with no allowed key is uniform, not zero, and the eps terms
    shift every weight slightly; both change the merged features by more than 1e-4 on seeded weights.
    """
    K = scores.shape[-1]
    e = torch.exp(scores.float() - scores.float().amax(-1, keepdim=True)) * weights.float()
    return ((e + eps / K) / (e.sum(-1, keepdim=True) + eps)).to(scores.dtype)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, context_dim: Optional[int] = None):
        super().__init__()
        if dim % heads:
            raise ConfigError(f"attention width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(context_dim or dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, context=None, key_weights=None, causal: bool = False, official: bool = False):
        """x [B, Q, D]; context [B, K, Dc] (None: self-attention); key_weights [B, K] 0/1 (None: all keys).

        ``official``: the released merger's softmax (_official_policy_softmax); in self-attention a query whose own
        key is masked still attends to itself, as there.
        """
        self_attention = context is None
        context = x if context is None else context
        B, Q, D = x.shape
        K = context.shape[1]
        q = self.q(x).view(B, Q, self.heads, -1).transpose(1, 2)  # [B, h, Q, d]
        k, v = self.kv(context).view(B, K, 2, self.heads, -1).permute(2, 0, 3, 1, 4)  # [B, h, K, d] each
        if key_weights is None and not causal:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            w = torch.ones(B, 1, 1, K, dtype=x.dtype, device=x.device)
            if key_weights is not None:
                w = key_weights.to(x.dtype)[:, None, None, :]
            if official and self_attention and key_weights is not None:
                eye = torch.eye(Q, K, dtype=x.dtype, device=x.device)
                w = w + (1.0 - w) * eye
            if causal:
                w = w * torch.ones(Q, K, dtype=x.dtype, device=x.device).tril()
            scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # [B, h, Q, K]
            out = (_official_policy_softmax if official else _policy_softmax)(scores, w) @ v
        return self.proj(out.transpose(1, 2).reshape(B, Q, D))


class EncoderBlock(nn.Module):
    """Pre-norm ViT block."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, eps: float = 1e-5):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim, eps=eps), Attention(dim, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim, eps=eps), MLP(dim, mlp_ratio)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class CrossBlock(nn.Module):
    """Self-attention (optionally masked/causal), cross-attention to a masked context, MLP. Merger and decoder block."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, context_dim: int):
        super().__init__()
        self.norm1, self.self_attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2, self.cross_attn = nn.LayerNorm(dim), Attention(dim, heads, context_dim)
        self.norm3, self.mlp = nn.LayerNorm(dim), MLP(dim, mlp_ratio)

    def forward(self, x, context, self_weights=None, context_weights=None, causal=False, official=False):
        x = x + self.self_attn(self.norm1(x), key_weights=self_weights, causal=causal, official=official)
        x = x + self.cross_attn(self.norm2(x), context, key_weights=context_weights, official=official)
        return x + self.mlp(self.norm3(x))


class TokenSelector(nn.Module):
    """LaVIT's token predictor: per-patch keep/drop log-probabilities from local ‖ global (mean) features."""

    def __init__(self, dim: int):
        super().__init__()
        self.in_proj = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU())
        self.out = nn.Sequential(
            nn.Linear(dim, dim // 2), nn.GELU(), nn.Linear(dim // 2, dim // 4), nn.GELU(), nn.Linear(dim // 4, 2)
        )

    def forward(self, x):
        """x [B, N, D] → log-probabilities [B, N, 2]; index 0 is *keep* (as in the official code)."""
        x = self.in_proj(x)
        half = x.shape[-1] // 2
        local, glob = x[..., :half], x[..., half:].mean(1, keepdim=True).expand(-1, x.shape[1], -1)
        return F.log_softmax(self.out(torch.cat([local, glob], dim=-1)), dim=-1)


class VisionEncoder(nn.Module):
    """Patchify + pre-norm ViT. images [B, 3, S, S] → [B, N, width] (the last block's output, no final norm).

    ``cls_token``: EVA-CLIP's layout, a learned token at position 0 (pos_embed has N + 1 rows) that every patch attends
    to; its output is dropped, as LaVIT drops it. Without it (our tiny recipes) the patches attend to each other only.
    """

    def __init__(self, image_size: int, patch_size: int, width: int, depth: int, heads: int, mlp_ratio: float,
                 cls_token: bool = False, norm_eps: float = 1e-5):
        super().__init__()
        self.config = dict(image_size=image_size, patch_size=patch_size, width=width, depth=depth, heads=heads,
                           mlp_ratio=mlp_ratio, cls_token=cls_token, norm_eps=norm_eps)
        self.patch_embed = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width)) if cls_token else None
        self.pos_embed = nn.Parameter(torch.zeros(1, (image_size // patch_size) ** 2 + int(cls_token), width))
        self.blocks = nn.ModuleList(EncoderBlock(width, heads, mlp_ratio, norm_eps) for _ in range(depth))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if cls_token:
            nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, images):
        x = self.patch_embed(images).flatten(2).transpose(1, 2)  # [B, N, width]
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return x if self.cls_token is None else x[:, 1:]

    def save_pretrained(self, directory) -> Path:
        """config.json (model_type videolavit_vision_encoder) + model.safetensors: a ``teacher_path`` folder."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "config.json").write_text(json.dumps({"model_type": ENCODER_MODEL_TYPE, **self.config}, indent=2))
        save_file({k: v.detach().contiguous() for k, v in self.state_dict().items()}, str(directory / "model.safetensors"))
        return directory

    @classmethod
    def from_pretrained(cls, directory) -> "VisionEncoder":
        from safetensors.torch import load_file

        directory = Path(directory)
        config = json.loads((directory / "config.json").read_text())
        config.pop("model_type", None)
        model = cls(**config)
        try:
            model.load_state_dict(load_file(str(directory / "model.safetensors")), strict=True)
        except (RuntimeError, OSError) as exc:
            raise MissingArtifactError(f"vision encoder weights in '{directory}' do not match its config: {exc}") from None
        return model


def load_vision_teacher(path: str) -> nn.Module:
    """A frozen transformers vision model from a local directory (its vision tower if it is a two-tower model)."""
    directory = Path(path)
    if not directory.is_dir():
        raise MissingArtifactError(
            f"visual tokenizer teacher_path '{path}' is not a directory (save a transformers vision model there "
            "with save_pretrained, e.g. CLIPVisionModel, or import the released EVA-CLIP with import-official)"
        )
    config_file = directory / "config.json"
    if config_file.is_file() and f'"{ENCODER_MODEL_TYPE}"' in config_file.read_text():
        # our VisionEncoder layout: the released EVA-CLIP ViT-G (eva_vitg_psz14.bin) converted by import-official
        return VisionEncoder.from_pretrained(directory).eval().requires_grad_(False)
    from transformers import AutoModel

    from videolavit.pretrained import LOCAL, load_error

    try:
        model = AutoModel.from_pretrained(str(directory), **LOCAL)
    except Exception as exc:  # transformers raises OSError/ValueError with long messages; name the path instead
        raise load_error(exc, directory, "visual_tokenizer.model.teacher_path") from None
    tower = getattr(model, "vision_model", model)  # CLIPModel / SiglipModel → their vision tower
    tower.eval().requires_grad_(False)
    return tower
