"""The LaVIT visual tokenizer: an image → a variable number of discrete tokens (about ρ of its patches) → features.

ViT encoder (or a frozen transformers vision teacher) → token selector (hard Gumbel keep mask, straight-through) →
token merger (kept tokens attend causally to each other and to the dropped ones) → VQ (codebook_size × code_dim) →
decoder (one learned query per patch) that reconstructs the target: the teacher's patch features when ``teacher_path``
is set, else the pixels of each patch (average-pooled to ``pixel_target_size``² per patch when set: a low-pass target
where stripe/checker texture no longer dominates the MSE). Loss: reconstruction + token reconstruction (each kept
token's own patch target from its code alone, through ``token_head``, × ``token_loss_weight``) + commitment + ``keep_weight·(keep fraction − ρ)²``.

Why the token term: the decoder's tokens are a set whose patch positions it cannot know, so an object token cannot be
placed and the easiest use of the codes is a global background tint (measured: a bag-of-codes probe predicted object
colour at chance). Asking every code to rebuild its own patch makes the code carry that patch's appearance.
``saliency_prior`` (pixel target) adds that weight × the z-scored distance of each patch's mean colour from the image's
mean colour to the keep logit, so the selection keeps the patches that stand out (the object) from the first step on,
where the learned selector alone kept background and dropped the object in a short run.

Inference is deterministic. ``selection="expected"`` (default) keeps the k likeliest patches, k = round(Σ p_keep):
the count the sampled mask has on average, so the count follows the image and its mean matches training.
``"threshold"`` keeps the patches with p_keep > 0.5; it collapses to one token while the selector is unsure (p_keep
near ρ everywhere: measured on the tiny model after 200 steps). ``"topk"`` keeps round(ρ·N), a fixed count. The
official code samples the Gumbel mask even at inference (a stochastic count): ``"gumbel"`` (the paper profile and the
imported release) does that, as does ``encode(images, sample=True)``.

Official variants (paper profile; what the released weights need, convert/visual_tokenizer.py): ``vit_cls_token`` and
``vit_norm_eps=1e-6`` (EVA-CLIP's ViT), ``merger="official"`` (selector and residual stream on the raw ViT features,
cross-attention to ``ln_vision(raw)``, the release's eps-smoothed masked softmax) and ``decoder_head="mlp"``
(Linear–Tanh–Linear). The constructor defaults keep our tiny recipe's choices. ``teacher_path`` takes a transformers
vision model or a ``VisionEncoder`` folder (the imported EVA-CLIP).

Training selection: ``train_selection="gumbel"`` (default, LaVIT) samples the hard Gumbel mask; ``"deterministic"``
trains on the inference choice itself with straight-through gradients to p_keep. While the selector is unsure (p_keep
near ρ everywhere, all of a short run) a sampled mask is a random third of the patches, while the inference choice is
a fixed-looking subset the decoder never saw: on the tiny corpus (300 steps) deterministic val rec loss was 0.259 with
Gumbel training vs 0.226 with a sampled val mask, and 0.220 when training on the deterministic choice (the tiny default).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from videolavit.errors import ConfigError, MissingArtifactError
from videolavit.models.quantizer import VectorQuantizer
from videolavit.models.vision_encoder import (
    CrossBlock, TokenSelector, VisionEncoder, load_vision_teacher, preprocess_images,
)

SELECTIONS = ("expected", "threshold", "topk", "gumbel")
MERGERS = ("ours", "official")
DECODER_HEADS = ("linear", "mlp")
TRAIN_SELECTIONS = ("gumbel", "deterministic")
REC_LOSSES = ("auto", "cosine", "mse")
MAX_PREFIX_TOKENS = 8  # a teacher's non-patch tokens before its patches (CLS, registers)


class KeptCodes(Sequence):
    """Each image's kept codes (1-D LongTensors), split from the padded codes [B, N] only when read: a training step
    that does not read them makes no host sync for them."""

    def __init__(self, codes: torch.Tensor, mask: torch.Tensor):
        self._codes, self._mask, self._split = codes, mask, None

    def _items(self) -> list:
        if self._split is None:
            self._split = [c[m] for c, m in zip(self._codes, self._mask)]
        return self._split

    def __getitem__(self, index):
        return self._items()[index]

    def __len__(self) -> int:
        return int(self._codes.shape[0])


class VisualTokenizer(nn.Module):
    def __init__(
        self,
        image_size: int = 224,
        patch_size: int = 14,
        width: int = 1408,
        depth: int = 40,
        heads: int = 16,
        mlp_ratio: float = 4.3637,
        merger_depth: int = 12,
        merger_causal: bool = True,
        decoder_width: Optional[int] = None,
        decoder_depth: int = 12,
        decoder_heads: Optional[int] = None,
        code_dim: int = 32,
        codebook_size: int = 16384,
        ema_decay: float = 0.995,
        kmeans_init: bool = True,
        dead_code_threshold: float = 2.0,
        commitment_weight: float = 0.25,
        keep_ratio: float = 1 / 3,
        keep_weight: float = 2.0,
        gumbel_tau: float = 1.0,
        selection: str = "expected",
        train_selection: str = "gumbel",
        rec_loss: str = "auto",
        teacher_path: Optional[str] = None,
        pixel_target_size: Optional[int] = None,
        saliency_prior: float = 0.0,
        token_loss_weight: float = 1.0,
        vit_cls_token: bool = False,
        vit_norm_eps: float = 1e-5,
        merger: str = "ours",
        decoder_head: str = "linear",
        dead_code_fraction: float = 0.1,
        kmeans_vectors_per_code: int = 0,
    ):
        super().__init__()
        if image_size % patch_size:
            raise ConfigError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        if selection not in SELECTIONS:
            raise ConfigError(f"selection '{selection}' is not one of {', '.join(SELECTIONS)}")
        if train_selection not in TRAIN_SELECTIONS:
            raise ConfigError(f"train_selection '{train_selection}' is not one of {', '.join(TRAIN_SELECTIONS)}")
        if merger not in MERGERS:
            raise ConfigError(f"merger '{merger}' is not one of {', '.join(MERGERS)}")
        if decoder_head not in DECODER_HEADS:
            raise ConfigError(f"decoder_head '{decoder_head}' is not one of {', '.join(DECODER_HEADS)}")
        if rec_loss not in REC_LOSSES:
            raise ConfigError(f"rec_loss '{rec_loss}' is not one of {', '.join(REC_LOSSES)}")
        if pixel_target_size is not None and (pixel_target_size < 1 or patch_size % pixel_target_size):
            raise ConfigError(
                f"pixel_target_size must divide patch_size {patch_size} (or be null), got {pixel_target_size}"
            )
        if not 0 < keep_ratio <= 1:
            raise ConfigError(f"keep_ratio must be in (0, 1], got {keep_ratio}")
        self.config = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        decoder_width = decoder_width or width
        decoder_heads = decoder_heads or heads
        self.image_size, self.patch_size = image_size, patch_size
        self.num_patches = (image_size // patch_size) ** 2
        self.keep_ratio, self.keep_weight, self.gumbel_tau = keep_ratio, keep_weight, gumbel_tau
        self.selection, self.train_selection = selection, train_selection
        self.codebook_size = codebook_size
        self.pixel_target_size = pixel_target_size or patch_size
        self.saliency_prior = float(saliency_prior)
        self.token_loss_weight = float(token_loss_weight)
        self.official_merger = merger == "official"

        if teacher_path:
            self.teacher = load_vision_teacher(teacher_path)
            try:  # one probe forward: finds the feature width and fails early on an image-size mismatch
                feature_dim = self._teacher_features(torch.zeros(1, 3, image_size, image_size)).shape[-1]
            except ConfigError:
                raise
            except Exception as exc:
                raise ConfigError(
                    f"the teacher at '{teacher_path}' cannot encode {image_size}px images: {exc}"
                ) from None
            self.encoder = None
            self.target_dim = feature_dim
            self.rec_loss = "cosine" if rec_loss == "auto" else rec_loss
        else:
            self.teacher = None
            self.encoder = VisionEncoder(image_size, patch_size, width, depth, heads, mlp_ratio, vit_cls_token, vit_norm_eps)
            feature_dim = width
            self.target_dim = 3 * self.pixel_target_size**2
            self.rec_loss = "mse" if rec_loss == "auto" else rec_loss
        if self.official_merger and feature_dim != width:
            raise ConfigError(
                f"merger 'official' runs its residual stream on the raw features, so width {width} must equal the "
                f"feature width {feature_dim} (the teacher's)"
            )
        self.ln_vision = nn.LayerNorm(feature_dim)
        self.feature_proj = nn.Linear(feature_dim, width) if feature_dim != width else nn.Identity()

        self.selector = TokenSelector(width)
        self.merger = nn.ModuleList(CrossBlock(width, heads, mlp_ratio, width) for _ in range(merger_depth))
        self.merger_causal = merger_causal
        self.merger_norm = nn.LayerNorm(width)
        # Linear–Tanh–Linear down to the small code space "to improve codebook usage" (ViT-VQGAN; official code)
        self.encode_task = nn.Sequential(nn.Linear(width, width), nn.Tanh(), nn.Linear(width, code_dim))
        # dead_code_threshold None: relative to the codebook's mean use; k-means from kmeans_vectors_per_code per code
        self.quantizer = VectorQuantizer(
            code_dim, codebook_size, ema_decay, kmeans_init, dead_code_threshold, commitment_weight,
            dead_code_fraction=dead_code_fraction, kmeans_init_vectors=int(kmeans_vectors_per_code) * codebook_size,
        )

        self.token_in = nn.Linear(code_dim, decoder_width)
        self.token_pos = nn.Parameter(torch.zeros(1, self.num_patches, decoder_width))  # by index in the code sequence
        self.queries = nn.Parameter(torch.zeros(1, self.num_patches, decoder_width))  # one per patch
        self.decoder = nn.ModuleList(
            CrossBlock(decoder_width, decoder_heads, mlp_ratio, decoder_width) for _ in range(decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(decoder_width)
        # "mlp": the released decoder's Linear–Tanh–Linear head ("decode_task_layer"); "linear": one Linear (tiny)
        if decoder_head == "mlp":
            self.decoder_head = nn.Sequential(
                nn.Linear(decoder_width, decoder_width), nn.Tanh(), nn.Linear(decoder_width, self.target_dim)
            )
        else:
            self.decoder_head = nn.Linear(decoder_width, self.target_dim)
        self.token_head = nn.Linear(code_dim, self.target_dim)  # a token's own patch from its code alone
        nn.init.trunc_normal_(self.token_pos, std=0.02)
        nn.init.trunc_normal_(self.queries, std=0.02)

    # ---- encoder side ----------------------------------------------------------------------------------------------
    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # frozen: no dropout, no norm statistics
        return self

    def trainable_parameters(self):
        """Everything but the frozen teacher (what the optimizer should see)."""
        return [p for n, p in self.named_parameters() if not n.startswith("teacher.")]

    @torch.no_grad()
    def _teacher_features(self, images):
        if isinstance(self.teacher, VisionEncoder):  # the imported EVA-CLIP: patch features, its CLS already dropped
            return self.teacher(images)
        hidden = self.teacher(pixel_values=images).last_hidden_state  # [B, prefix + N, Dt]
        extra = hidden.shape[1] - self.num_patches
        if not 0 <= extra <= MAX_PREFIX_TOKENS:
            raise ConfigError(
                f"the teacher gives {hidden.shape[1]} tokens for a {self.image_size}px image, not the "
                f"{self.num_patches} patches of patch_size {self.patch_size} (+ CLS/register tokens); "
                "set image_size/patch_size to the teacher's"
            )
        return hidden[:, extra:]  # CLS (and any register tokens) dropped: [B, N, Dt]

    def _check_images(self, images):
        s = self.image_size
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[2:]) != (s, s):
            raise ValueError(
                f"images must be float [B, 3, {s}, {s}] (use preprocess() on uint8 images), got {tuple(images.shape)}"
            )
        if not images.is_floating_point():
            raise ValueError(f"images must be float and normalized (use preprocess()), got dtype {images.dtype}")

    def patchify(self, images):
        """[B, 3, S, S] → [B, N, 3·s·s] (the pixel target): each patch average-pooled to s = ``pixel_target_size``."""
        p = self.pixel_target_size
        if p != self.patch_size:
            images = F.avg_pool2d(images, self.patch_size // p)
        B, C, H, W = images.shape
        x = images.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(B, (H // p) * (W // p), p * p * C)

    def unpatchify(self, patches):
        """[B, N, 3·s·s] → [B, 3, S, S] (a pooled target is repeated back to full size)."""
        p, g = self.pixel_target_size, self.image_size // self.patch_size
        B = patches.shape[0]
        x = patches.reshape(B, g, g, p, p, 3).permute(0, 5, 1, 3, 2, 4).reshape(B, 3, g * p, g * p)
        scale = self.patch_size // p
        return x if scale == 1 else x.repeat_interleave(scale, 2).repeat_interleave(scale, 3)

    def select(self, log_probs, sample: bool, straight_through: bool = False):
        """log-probs [B, N, 2] → keep mask [B, N] float. Never empty.

        ``sample``: a hard Gumbel mask (straight-through gradients). Else the deterministic ``selection``; with
        ``straight_through`` its 0/1 mask carries the gradient of p_keep (value unchanged), so the selector trains on it.
        """
        p_keep = log_probs[..., 0]
        if sample or self.selection == "gumbel":  # "gumbel": the official tokenizer samples at inference too
            keep = F.gumbel_softmax(log_probs, tau=self.gumbel_tau, hard=True)[..., 0]
        elif self.selection == "threshold":
            keep = (p_keep > math.log(0.5)).to(log_probs.dtype)
        else:
            N = p_keep.shape[1]
            if self.selection == "topk":
                k = torch.full_like(p_keep[:, 0], max(1, round(self.keep_ratio * N)))
            else:
                k = p_keep.exp().sum(1).round().clamp(1, N)  # [B] the sampled mask's expected count
            rank = p_keep.argsort(1, descending=True).argsort(1)  # [B, N] 0 = likeliest patch
            keep = (rank < k[:, None]).to(log_probs.dtype)
        if straight_through and not sample and self.selection != "gumbel":
            p = p_keep.exp()
            keep = keep + p - p.detach()
        # a selector that drops every patch would leave nothing to decode (official issue #38): keep the likeliest one
        # (added where the mask is empty, zero elsewhere: no host sync to decide)
        empty = keep.detach().sum(1) == 0
        keep = keep + F.one_hot(p_keep.argmax(1), p_keep.shape[1]).to(keep.dtype) * empty[:, None].to(keep.dtype)
        return keep

    def _with_saliency(self, log_probs, images):
        """Add ``saliency_prior`` × (each patch's standardized distance from the image's mean colour) to the keep logit."""
        p = self.patch_size
        colour = F.avg_pool2d(images, p).flatten(2).transpose(1, 2)  # [B, N, 3]
        dist = (colour - colour.mean(1, keepdim=True)).norm(dim=-1)  # [B, N]
        z = (dist - dist.mean(1, keepdim=True)) / dist.std(1, keepdim=True).clamp_min(1e-6)
        logit = log_probs[..., 0] - log_probs[..., 1] + self.saliency_prior * z
        return torch.stack([F.logsigmoid(logit), F.logsigmoid(-logit)], dim=-1)

    def _merge(self, images, sample: bool, straight_through: bool = False):
        """images → (merged token features [B, N, code_dim] for every patch, keep mask [B, N], target [B, N, T])."""
        if self.teacher is not None:
            raw = self._teacher_features(images)  # [B, N, Dt]
            target = raw
        else:
            raw = self.encoder(images)  # [B, N, width]
            target = self.patchify(images)
        x, keep = self._merged_features(raw, images, sample, straight_through)
        z = self.encode_task(x)  # [B, N, code_dim]; rows of dropped patches are ignored
        return z, keep, target

    def _merged_features(self, raw, images, sample: bool, straight_through: bool = False):
        """Raw patch features → (the merger's normalised output [B, N, width] for every patch, keep mask [B, N]).

        ``merger="official"`` (the release): the selector and the residual stream start from the raw features and
        cross-attend to ``ln_vision(raw)``; ``"ours"``: both start from ``ln_vision(raw)``.
        """
        feats = self.feature_proj(self.ln_vision(raw))  # [B, N, width]
        stream = raw if self.official_merger else feats
        log_probs = self.selector(stream)
        if self.saliency_prior:
            log_probs = self._with_saliency(log_probs, images)
        keep = self.select(log_probs, sample, straight_through)  # [B, N]
        x = stream
        for block in self.merger:
            x = block(x, feats, self_weights=keep, context_weights=1.0 - keep, causal=self.merger_causal,
                      official=self.official_merger)
        return self.merger_norm(x), keep

    # ---- decoder side ----------------------------------------------------------------------------------------------
    def _decode(self, tokens, weights, positions):
        """tokens [B, L, code_dim], weights [B, L] 0/1, positions [B, L] index in the code sequence → [B, N, T]."""
        # A one-hot product, not token_pos[0][positions]: the CPU backward of that advanced indexing (index_put with
        # accumulate) adds repeated positions in a thread-dependent order, so identical runs trained different
        # weights. A matmul's backward has no scatter at all, and the forward is exact (one 1.0 per row).
        one_hot = F.one_hot(positions, self.token_pos.shape[1]).to(self.token_pos.dtype)  # [B, L, N]
        ctx = self.token_in(tokens) + one_hot @ self.token_pos[0]  # [B, L, Dd]
        x = self.queries.expand(tokens.shape[0], -1, -1)  # [B, N, Dd]
        for block in self.decoder:
            x = block(x, ctx, context_weights=weights)
        return self.decoder_head(self.decoder_norm(x))

    def decode_features(self, codes, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Codes (a list of 1-D LongTensors, or padded [B, L] with ``mask`` [B, L]) → features [B, N, target_dim]."""
        device = self.queries.device
        if isinstance(codes, (list, tuple)):
            codes, mask = pad_codes(codes)
        codes = torch.as_tensor(codes, device=device)
        if codes.ndim != 2:
            raise ValueError(f"codes must be a list of 1-D tensors or a padded [B, L] tensor, got {tuple(codes.shape)}")
        mask = torch.ones_like(codes, dtype=torch.bool) if mask is None else mask.to(device).bool()
        if codes.shape[1] > self.num_patches:
            raise ValueError(f"an image has at most {self.num_patches} visual codes, got sequences of {codes.shape[1]}")
        real = codes[mask]
        if real.numel() and (int(real.min()) < 0 or int(real.max()) >= self.codebook_size):
            raise ValueError(
                f"visual codes must be in [0, {self.codebook_size}), got {int(real.min())}..{int(real.max())}"
            )
        tokens = self.quantizer.decode(codes.masked_fill(~mask, 0))  # [B, L, code_dim]
        positions = torch.arange(codes.shape[1], device=device).expand_as(codes)
        return self._decode(tokens, mask.to(tokens.dtype), positions)

    # ---- public API ------------------------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor, sample: Optional[bool] = None) -> dict:
        """Tokenize and reconstruct. ``sample`` None: in training the ``train_selection`` (Gumbel sampling, or the
        deterministic choice with straight-through gradients), in eval the deterministic choice."""
        self._check_images(images)
        if sample is None:
            sample = self.training and self.train_selection == "gumbel"
        z, keep, target = self._merge(images, sample, straight_through=self.training and not sample)
        mask = keep.detach() > 0
        q = self.quantizer(z, mask=mask)
        positions = (mask.long().cumsum(1) - 1).clamp_min(0)  # the index each kept token has in the code sequence
        recon = self._decode(q.quantized, keep, positions)  # [B, N, target_dim]
        if self.rec_loss == "cosine":
            rec = (1 - F.cosine_similarity(recon, target, dim=-1)).mean()
        else:
            rec = F.mse_loss(recon, target)
        # on the batch mean, not per image: images may keep more or fewer tokens as long as the average is ρ
        fraction = keep.mean()
        keep_loss = (fraction - self.keep_ratio) ** 2
        own = self.token_head(q.quantized)  # [B, N, target_dim]; the kept tokens' rows count (masked mean, no sync)
        if self.rec_loss == "cosine":
            per_token = 1 - F.cosine_similarity(own, target, dim=-1)  # [B, N]
        else:
            per_token = (own - target).pow(2).mean(-1)
        kept = mask.to(per_token.dtype)
        token_rec = (per_token * kept).sum() / kept.sum().clamp_min(1)
        loss = rec + self.token_loss_weight * token_rec + q.loss + self.keep_weight * keep_loss
        return {
            "loss": loss,
            "rec_loss": rec.detach(),
            "token_rec_loss": token_rec.detach(),
            "commit_loss": q.loss.detach(),
            "keep_loss": keep_loss.detach(),
            "keep_fraction": fraction.detach(),
            "num_tokens": mask.sum(1).float().mean(),
            "codes": KeptCodes(q.codes, mask),
            "keep_mask": mask,
            "reconstruction": recon,
            "target": target,
        }

    @torch.no_grad()
    def own_code_features(self, images: torch.Tensor) -> torch.Tensor:
        """images → the decoded features of their own codes [B, N, target_dim]: ``decode_features(encode(images))``
        computed padded (no per-image lists, no host sync), the detokenizer's training condition."""
        self._check_images(images)
        z, keep, _ = self._merge(images, False)
        mask = keep > 0
        tokens = self.quantizer.decode(self.quantizer.encode(z))  # [B, N, code_dim]
        positions = (mask.long().cumsum(1) - 1).clamp_min(0)  # each kept token's index in its code sequence
        return self._decode(tokens, mask.to(tokens.dtype), positions)

    @torch.no_grad()
    def encode(self, images: torch.Tensor, sample: bool = False) -> list[torch.Tensor]:
        """images [B, 3, S, S] → one LongTensor of codes per image (variable length, in patch order)."""
        self._check_images(images)
        z, keep, _ = self._merge(images, sample)
        mask = keep > 0
        codes = self.quantizer.encode(z)  # [B, N]; no codebook update
        return [codes[i][mask[i]] for i in range(len(mask))]

    @torch.no_grad()
    def encode_features(self, images: torch.Tensor, sample: bool = False) -> list[torch.Tensor]:
        """images → the merger's continuous features of the kept patches, [k_i, width] per image (no quantization).

        The released understanding LM reads these through its ``vit_proj`` instead of the codes
        (models/understanding.py); the selection is the same as ``encode``'s.
        """
        self._check_images(images)
        raw = self._teacher_features(images) if self.teacher is not None else self.encoder(images)
        x, keep = self._merged_features(raw, images, sample)
        mask = keep > 0
        return [x[i][mask[i]] for i in range(len(mask))]

    def preprocess(self, images) -> torch.Tensor:
        """uint8 RGB [B, H, W, 3] or [H, W, 3] → float [B, 3, S, S] for this tokenizer."""
        return preprocess_images(images, self.image_size).to(self.queries.device)

    def save_pretrained(self, directory) -> Path:
        """config.json + model.safetensors. The teacher is not copied: its local path is recorded in config.json."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {"model_type": "videolavit_visual_tokenizer", **self.config}
        (directory / "config.json").write_text(json.dumps(config, indent=2))
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items() if not k.startswith("teacher.")}
        save_file(state, str(directory / "model.safetensors"))
        return directory

    @classmethod
    def from_pretrained(cls, directory, **overrides) -> "VisualTokenizer":
        """Rebuild from ``save_pretrained`` output; ``overrides`` replace config keys (e.g. a moved teacher_path)."""
        from safetensors.torch import load_file

        directory = Path(directory)
        config_file, weights = directory / "config.json", directory / "model.safetensors"
        if not config_file.is_file() or not weights.is_file():
            raise MissingArtifactError(
                f"no visual tokenizer in '{directory}' (expected config.json and model.safetensors)"
            )
        config = json.loads(config_file.read_text())
        config.pop("model_type", None)
        teacher = config.get("teacher_path")
        if teacher and not Path(teacher).is_absolute() and (directory / teacher).is_dir():
            config["teacher_path"] = str((directory / teacher).resolve())  # import-official writes ../eva_clip
        config.update(overrides)
        model = cls(**config)
        missing, unexpected = model.load_state_dict(load_file(str(weights)), strict=False)
        # token_head is a training loss term only (encode/decode never use it): older checkpoints without it still load
        missing = [k for k in missing if not k.startswith(("teacher.", "token_head."))]
        if missing or unexpected:
            raise MissingArtifactError(
                f"visual tokenizer weights in '{directory}' do not match its config: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}"
            )
        return model


def pad_codes(codes: Sequence[torch.Tensor], pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Variable-length code lists → padded [B, L] and mask [B, L]."""
    L = max((len(c) for c in codes), default=0)
    padded = torch.full((len(codes), max(L, 1)), pad, dtype=torch.long)
    mask = torch.zeros(len(codes), max(L, 1), dtype=torch.bool)
    for i, c in enumerate(codes):
        padded[i, : len(c)] = torch.as_tensor(c, dtype=torch.long)
        mask[i, : len(c)] = True
    return padded, mask
