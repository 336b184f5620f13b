"""Keyframe detokenizer g_I (paper §3.2): a diffusers `UNet2DConditionModel` that renders a keyframe from the visual
tokenizer's decoded features by cross-attention.

- Space: RGB pixels in [-1, 1] when no VAE is configured (tiny profile); the latent space of a local diffusers
  `AutoencoderKL` otherwise (latent = VAE mean × its `scaling_factor`).
- Training: DDPM. t ~ U{0, …, num_train_timesteps − 1}; the U-Net predicts ε (`prediction_type="epsilon"`, as the
  SD/SDXL U-Nets LaVIT starts from) or v = √ᾱ·ε − √(1−ᾱ)·x0 (`"v_prediction"`); loss = MSE to that target. With
  probability `cond_dropout` a sample's context is zeroed so that classifier-free guidance has an unconditional model.
- SDXL-shaped U-Nets (``addition_embed_type="text_time"``, LaVIT's high-res decoder) also get SDXL micro-conditioning:
  a pooled condition and time ids (H, W, 0, 0, H, W). The pooled condition is the token mean → Linear
  (``pool="mean"``, the tiny recipe's) or, as the official decoder, an attention pool (``pool="attention"``, the paper
  profile's: :class:`AttentionPool`).
- Sampling: DDIM (η = 0, "trailing" spacing so the first step starts from pure noise); CFG with a ZERO context (and zero
  pooled condition) as the negative, as the official `image_decoding`. ``sample(..., latents=x_t, start_index=k)``
  continues a schedule part way, which the long-video noise constraint uses.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from videolavit.errors import ConfigError, MissingArtifactError

TINY_UNET = {
    "block_out_channels": [32, 64],
    "layers_per_block": 1,
    # cross-attention only at the coarser level: full-resolution attention dominates CPU time at tiny scale
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
    "cross_attention_dim": 64,
    "attention_head_dim": 8,
    "norm_num_groups": 8,
}
VAE_CLASSES = ("AutoencoderKL", "AutoencoderKLTemporalDecoder")


def load_vae(path: str | Path) -> nn.Module:
    """A frozen diffusers VAE from a local folder (the VAE's own folder, or a pipeline folder holding ``vae/``)."""
    folder = Path(path)
    if (folder / "vae" / "config.json").is_file():
        folder = folder / "vae"
    if not (folder / "config.json").is_file():
        raise MissingArtifactError(f"no diffusers VAE at {path}: expected {path}/config.json or {path}/vae/config.json")
    name = json.loads((folder / "config.json").read_text()).get("_class_name", "AutoencoderKL")
    if name not in VAE_CLASSES:
        raise ConfigError(f"{folder}/config.json names a {name}; the detokenizers load one of {VAE_CLASSES}")
    import diffusers

    vae = getattr(diffusers, name).from_pretrained(folder, **loading_kwargs())
    vae.requires_grad_(False).eval()
    return vae


def vae_downsampling(vae: nn.Module) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


def _load_unet2d(path: str | Path) -> nn.Module:
    """A diffusers `UNet2DConditionModel` from a local folder (its own, or a pipeline folder holding ``unet/``)."""
    from diffusers import UNet2DConditionModel

    folder = Path(path)
    if (folder / "unet" / "config.json").is_file():
        folder = folder / "unet"
    if not (folder / "config.json").is_file():
        raise MissingArtifactError(
            f"no diffusers U-Net at {path}: expected {path}/config.json or {path}/unet/config.json"
        )
    return UNet2DConditionModel.from_pretrained(folder, variant=weights_variant(folder), **loading_kwargs())


def loading_kwargs() -> dict:
    """diffusers ``from_pretrained`` options: low-memory loading only when ``accelerate`` is installed (saying so
    explicitly keeps diffusers from printing its install hint on every load)."""
    import importlib.util

    return {"low_cpu_mem_usage": importlib.util.find_spec("accelerate") is not None}


class AttentionPool(nn.Module):
    """Tokens [B, N, D] → one vector [B, out_dim]: their mean, prepended as a query, attends (multi-head) over itself
    and the tokens, each place with a learned position embedding (CLIP's attention pool over a token sequence, as
    the official image condition). A ``mask`` [B, N] (real tokens) keeps padding out of the mean and the keys."""

    def __init__(self, tokens: int, dim: int, heads: int, out_dim: int):
        super().__init__()
        if dim % heads:
            raise ConfigError(f"attention pool: width {dim} is not divisible by pool_heads={heads}")
        self.heads = heads
        self.position = nn.Parameter(torch.randn(tokens + 1, dim) / dim**0.5)  # [N + 1, D]: the mean first
        self.query, self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out = nn.Linear(dim, out_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B, N, D = x.shape
        if N + 1 > self.position.shape[0]:
            raise ValueError(f"the attention pool was built for {self.position.shape[0] - 1} tokens, got {N}")
        weight = torch.ones(B, N, dtype=x.dtype, device=x.device) if mask is None else mask.to(x.dtype)
        mean = (x * weight[..., None]).sum(1, keepdim=True) / weight.sum(1).clamp(min=1)[:, None, None]
        seq = torch.cat([mean, x], dim=1) + self.position[: N + 1].to(x.dtype)  # [B, N + 1, D]
        h = self.heads

        def split(t):  # [B, L, D] → [B, heads, L, D / heads]
            return t.reshape(B, t.shape[1], h, D // h).transpose(1, 2)

        keys = None
        if mask is not None:  # the mean's own place is always a key
            keys = torch.cat([torch.ones(B, 1, dtype=torch.bool, device=x.device), mask.bool()], dim=1)[:, None, None]
        q = split(self.query(seq[:, :1]))  # only the mean's output is the pooled vector
        pooled = F.scaled_dot_product_attention(q, split(self.key(seq)), split(self.value(seq)), attn_mask=keys)
        return self.out(pooled.transpose(1, 2).reshape(B, D))


def weights_variant(folder: Path) -> str | None:
    """``"fp16"`` when a diffusers folder only holds fp16 weights (as SD/SVD downloads often do), else None."""
    if not any(folder.glob("diffusion_pytorch_model.safetensors*")) and any(folder.glob("*.fp16.safetensors")):
        return "fp16"
    return None


class KeyframeDetokenizer(nn.Module):
    """Visual-token features ``cond`` [B, N, cond_dim] → keyframe [B, 3, H, W]."""

    def __init__(
        self,
        cond_dim: int,
        image_size: tuple[int, int] | list[int] = (64, 64),
        unet: dict | None = None,
        unet_dir: str | None = None,
        vae_dir: str | None = None,
        prediction_type: str = "epsilon",
        beta_schedule: str = "squaredcos_cap_v2",
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        num_train_timesteps: int = 1000,
        cond_dropout: float = 0.1,
        gradient_checkpointing: bool = False,
        pool: str = "mean",
        pool_heads: int = 16,
        pool_tokens: int | None = None,
        *,
        unet_model: nn.Module | None = None,
        vae: nn.Module | None = None,
    ):
        super().__init__()
        from diffusers import DDIMScheduler, UNet2DConditionModel

        if pool not in ("mean", "attention"):
            raise ConfigError(f"pool must be 'mean' or 'attention', got {pool!r}")

        if prediction_type not in ("epsilon", "v_prediction"):
            raise ConfigError(f"prediction_type must be 'epsilon' or 'v_prediction', got {prediction_type!r}")
        self.config = {
            "cond_dim": int(cond_dim),
            "image_size": [int(image_size[0]), int(image_size[1])],
            "unet": dict(unet or {}),
            "prediction_type": prediction_type,
            "beta_schedule": beta_schedule,
            "beta_start": float(beta_start),
            "beta_end": float(beta_end),
            "num_train_timesteps": int(num_train_timesteps),
            "cond_dropout": float(cond_dropout),
            "gradient_checkpointing": bool(gradient_checkpointing),
            "pool": pool,
            "pool_heads": int(pool_heads),
            "pool_tokens": int(pool_tokens) if pool_tokens is not None else None,
        }
        self.vae = vae if vae is not None else (load_vae(vae_dir) if vae_dir else None)
        if self.vae is not None:
            channels, factor = self.vae.config.latent_channels, vae_downsampling(self.vae)
            self.scaling_factor = float(self.vae.config.scaling_factor)
        else:
            channels, factor, self.scaling_factor = 3, 1, 1.0
        H, W = self.config["image_size"]
        if H % factor or W % factor:
            raise ConfigError(f"keyframe size {H}×{W} is not a multiple of the VAE's down-sampling factor {factor}")
        self.latent_size = (H // factor, W // factor)
        if unet_model is None and unet_dir:
            unet_model = _load_unet2d(unet_dir)
        if unet_model is None:
            kwargs = {**TINY_UNET, **self.config["unet"]}
            kwargs.update(sample_size=list(self.latent_size), in_channels=channels, out_channels=channels)
            unet_model = UNet2DConditionModel(**kwargs)
        self.unet = unet_model
        if gradient_checkpointing:  # recompute block activations in backward: the SDXL-shaped U-Net at paper scale
            self.unet.enable_gradient_checkpointing()
        if self.unet.config.in_channels != channels:
            raise ConfigError(
                f"the keyframe U-Net takes {self.unet.config.in_channels} channels, the keyframe space has {channels}"
            )
        cross_dim = self.unet.config.cross_attention_dim
        if not isinstance(cross_dim, int):
            raise ConfigError("the keyframe U-Net needs one cross_attention_dim for all blocks")
        self.cond_proj = nn.Linear(cond_dim, cross_dim)
        self.pool_proj = None
        if self.unet.config.addition_embed_type == "text_time":
            pooled = (
                self.unet.config.projection_class_embeddings_input_dim - 6 * self.unet.config.addition_time_embed_dim
            )
            if pool == "attention":
                if pool_tokens is None:
                    raise ConfigError("pool='attention' needs pool_tokens (the visual tokenizer's decoded tokens)")
                self.pool_proj = AttentionPool(int(pool_tokens), cond_dim, int(pool_heads), pooled)
            else:
                self.pool_proj = nn.Linear(cond_dim, pooled)
        elif self.unet.config.addition_embed_type is not None:
            raise ConfigError(
                f"keyframe U-Nets with addition_embed_type={self.unet.config.addition_embed_type!r} are not supported"
            )
        self.scheduler = DDIMScheduler(
            num_train_timesteps=num_train_timesteps,
            beta_schedule=beta_schedule,
            beta_start=beta_start,  # SD/SDXL's "scaled_linear" range; unused by the cosine schedule
            beta_end=beta_end,
            prediction_type=prediction_type,
            clip_sample=False,
            set_alpha_to_one=False,
            timestep_spacing="trailing",
        )

    # -- spaces --------------------------------------------------------------------------------------------------------

    def trainable_parameters(self):
        """U-Net and condition projections (the VAE stays frozen)."""
        return [p for n, p in self.named_parameters() if not n.startswith("vae.")]

    def encode_images(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images [B, 3, H, W] in [-1, 1] → diffusion space [B, C, h, w] (VAE sample with a generator, else mean)."""
        self._check_images(images)
        if self.vae is None:
            return images
        with torch.no_grad():  # the VAE is frozen
            dist = self.vae.encode(images.to(self.vae.dtype)).latent_dist
            z = dist.sample(generator) if generator is not None else dist.mode()
        return z.float() * self.scaling_factor

    def decode_latents(self, x: torch.Tensor) -> torch.Tensor:
        """Diffusion space [B, C, h, w] → images [B, 3, H, W] in [-1, 1]."""
        if self.vae is not None:
            x = self.vae.decode((x / self.scaling_factor).to(self.vae.dtype)).sample.float()
        return x.clamp(-1, 1)

    def context(self, cond: torch.Tensor, cond_mask: torch.Tensor | None = None) -> dict:
        """``cond`` [B, N, cond_dim] (``cond_mask`` [B, N]: real tokens) → the U-Net's conditioning keywords."""
        if cond.ndim != 3 or cond.shape[-1] != self.config["cond_dim"]:
            raise ValueError(f"cond must be [B, N, {self.config['cond_dim']}], got {tuple(cond.shape)}")
        if cond_mask is not None and tuple(cond_mask.shape) != tuple(cond.shape[:2]):
            raise ValueError(f"cond_mask must be {list(cond.shape[:2])}, got {list(cond_mask.shape)}")
        context = {"encoder_hidden_states": self.cond_proj(cond), "encoder_attention_mask": cond_mask}  # [B, N, D]
        if self.pool_proj is not None:
            if isinstance(self.pool_proj, AttentionPool):
                text_embeds = self.pool_proj(cond, cond_mask)
            else:
                weight = (
                    torch.ones(cond.shape[:2], dtype=cond.dtype, device=cond.device)
                    if cond_mask is None
                    else cond_mask.to(cond.dtype)
                )
                pooled = (cond * weight[..., None]).sum(1) / weight.sum(1, keepdim=True).clamp(min=1)  # [B, cond_dim]
                text_embeds = self.pool_proj(pooled)
            H, W = self.config["image_size"]
            time_ids = torch.tensor([[H, W, 0, 0, H, W]], dtype=cond.dtype, device=cond.device).expand(cond.shape[0], 6)
            context["added_cond_kwargs"] = {"text_embeds": text_embeds, "time_ids": time_ids}
        return context

    @staticmethod
    def _scale_context(context: dict, keep: torch.Tensor) -> dict:
        """Zero the context of samples where ``keep`` [B] is 0 (the CFG negative; time ids stay, as official)."""
        out = dict(context, encoder_hidden_states=context["encoder_hidden_states"] * keep[:, None, None])
        if "added_cond_kwargs" in context:
            added = context["added_cond_kwargs"]
            out["added_cond_kwargs"] = dict(added, text_embeds=added["text_embeds"] * keep[:, None])
        return out

    @staticmethod
    def _cat_context(a: dict, b: dict) -> dict:
        """Two contexts batched into one (for a single CFG forward)."""

        def cat(x, y):
            if x is None:
                return None
            return torch.cat([x, y]) if torch.is_tensor(x) else {k: cat(x[k], y[k]) for k in x}

        return {k: cat(a[k], b[k]) for k in a}

    # -- training ------------------------------------------------------------------------------------------------------

    def training_loss(
        self,
        images: torch.Tensor,
        cond: torch.Tensor,
        cond_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """DDPM loss (MSE to ε or v) of keyframes ``images`` [B, 3, H, W] in [-1, 1] given ``cond`` [B, N, cond_dim]."""
        if cond.shape[0] != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {cond.shape[0]} conditions")
        x0 = self.encode_images(images, generator=generator)  # [B, C, h, w]
        B, device = x0.shape[0], x0.device
        noise = torch.randn(x0.shape, generator=generator, device=device)
        t = torch.randint(0, self.config["num_train_timesteps"], (B,), generator=generator, device=device)
        x_t = self.scheduler.add_noise(x0, noise, t)
        target = noise if self.config["prediction_type"] == "epsilon" else self.scheduler.get_velocity(x0, noise, t)
        context = self.context(cond, cond_mask)
        if self.training and self.config["cond_dropout"] > 0:
            keep = torch.rand(B, generator=generator, device=device) >= self.config["cond_dropout"]
            context = self._scale_context(context, keep.to(x0.dtype))
        pred = self.unet(x_t, t, **context).sample
        return F.mse_loss(pred.float(), target.float())

    # -- sampling ------------------------------------------------------------------------------------------------------

    def make_scheduler(self, steps: int):
        """A fresh DDIM scheduler with ``steps`` inference timesteps set (descending)."""
        from diffusers import DDIMScheduler

        scheduler = DDIMScheduler.from_config(self.scheduler.config)
        scheduler.set_timesteps(steps, device=self.cond_proj.weight.device)
        return scheduler

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, context: dict, guidance: float = 1.0) -> torch.Tensor:
        """U-Net output (ε or v) at ``x_t`` for a `context`, with classifier-free guidance against a zero context."""
        if guidance == 1.0:
            return self.unet(x_t, t, **context).sample
        zero = self._scale_context(context, torch.zeros(x_t.shape[0], device=x_t.device))
        both = self._cat_context(zero, context)
        uncond, cond = self.unet(torch.cat([x_t, x_t]), t, **both).sample.chunk(2)
        return uncond + guidance * (cond - uncond)

    def eps_and_x0(self, output: torch.Tensor, x_t: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Convert a U-Net output at timestep ``t`` into (ε, x0) whatever the prediction type."""
        a = self.scheduler.alphas_cumprod[int(t)].to(x_t.device, x_t.dtype)
        if self.config["prediction_type"] == "epsilon":
            eps = output
            x0 = (x_t - (1 - a).sqrt() * eps) / a.sqrt()
        else:
            x0 = a.sqrt() * x_t - (1 - a).sqrt() * output
            eps = a.sqrt() * output + (1 - a).sqrt() * x_t
        return eps, x0

    @torch.no_grad()
    def sample(
        self,
        cond: torch.Tensor,
        steps: int = 50,
        guidance: float = 3.0,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        start_index: int = 0,
        cond_mask: torch.Tensor | None = None,
        output_type: str = "uint8",
    ) -> torch.Tensor:
        """Keyframes for ``cond`` [B, N, cond_dim]: uint8 [B, H, W, 3], or [B, 3, H, W] in [-1, 1] with "float".

        ``latents`` (the diffusion-space sample at timestep index ``start_index``) continue a schedule part way.
        """
        if output_type not in ("uint8", "float"):
            raise ValueError(f"output_type must be 'uint8' or 'float', got {output_type!r}")
        scheduler = self.make_scheduler(steps)
        if not 0 <= start_index < steps:
            raise ValueError(f"start_index must be in [0, {steps}), got {start_index}")
        context = self.context(cond, cond_mask)
        B, device = cond.shape[0], cond.device
        C = self.unet.config.in_channels
        shape = (B, C, *self.latent_size)
        if latents is None:
            x = torch.randn(shape, generator=generator, device=device) * scheduler.init_noise_sigma  # [B, C, h, w]
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents must be {list(shape)}, got {list(latents.shape)}")
        else:
            x = latents.to(device)
        for t in scheduler.timesteps[start_index:]:
            out = self.predict(scheduler.scale_model_input(x, t), t, context, guidance)
            x = scheduler.step(out, t, x, eta=0.0).prev_sample
        images = self.decode_latents(x)  # [B, 3, H, W]
        if output_type == "float":
            return images
        return ((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)

    # -- persistence ---------------------------------------------------------------------------------------------------

    def save_pretrained(self, directory: str | Path) -> None:
        """``unet/`` and ``vae/`` in diffusers' format, ``projections.safetensors`` and ``config.json`` for the rest."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.unet.save_pretrained(directory / "unet")
        if self.vae is not None:
            self.vae.save_pretrained(directory / "vae")
        state = {
            k: v.detach().contiguous().cpu()
            for k, v in self.state_dict().items()
            if k.startswith(("cond_proj.", "pool_proj."))
        }
        save_file(state, directory / "projections.safetensors")
        config = {"_class_name": type(self).__name__, **self.config, "vae": self.vae is not None}
        (directory / "config.json").write_text(json.dumps(config, indent=2))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "KeyframeDetokenizer":
        from safetensors.torch import load_file

        directory = Path(directory)
        if not (directory / "config.json").is_file():
            raise MissingArtifactError(f"no keyframe detokenizer at {directory} (config.json missing)")
        config = json.loads((directory / "config.json").read_text())
        config.pop("_class_name", None)
        has_vae = config.pop("vae", False)
        unet = _load_unet2d(directory / "unet")
        vae = load_vae(directory / "vae") if has_vae else None
        model = cls(**config, unet_model=unet, vae=vae)
        missing, unexpected = model.load_state_dict(load_file(directory / "projections.safetensors"), strict=False)
        missing = [k for k in missing if k.startswith(("cond_proj.", "pool_proj."))]
        if missing or unexpected:
            raise MissingArtifactError(
                f"{directory}/projections.safetensors does not match: missing {missing}, unexpected {unexpected}"
            )
        return model

    def _check_images(self, images: torch.Tensor) -> None:
        H, W = self.config["image_size"]
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[2:]) != (H, W):
            raise ValueError(f"keyframes must be [B, 3, {H}, {W}] in [-1, 1], got {tuple(images.shape)}")
        if images.dtype == torch.uint8:
            raise ValueError("keyframes must be float in [-1, 1], got uint8 (divide by 127.5 and subtract 1)")
