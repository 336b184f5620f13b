"""Video detokenizer g_V (paper §3.2): an SVD-shaped diffusers `UNetSpatioTemporalConditionModel` that renders a clip
from its keyframe and motion, with enhanced motion conditioning (EMC) and EDM training.

What the U-Net receives (per frame t of a clip of T frames; C = 3 pixel channels, or the VAE's latent channels):
- input, concatenated on channels (in_channels = 2·C + 2): the noisy frame scaled by c_in (C), the keyframe (C) repeated
  over time and the motion field (2) nearest-resized to the input grid. In latent space the keyframe is the VAE mean
  WITHOUT the scaling factor, as SVD's `_encode_vae_image`, after adding `noise_aug`·N(0, 1) to the keyframe pixels.
- cross-attention context: diffusers repeats one [B, L, D] context for every frame; we bypass that repeat
  (`spatiotemporal_unet_forward`) and give frame t its own context: that frame's motion features (grid_h·grid_w tokens,
  spatial cross-attention as the official code) followed by T per-frame summaries (mean over the grid). diffusers'
  temporal cross-attention reads frame 0's context, so through the summaries it still sees the motion of every frame
  (the official code instead gives each pixel its own motion sequence). ``temporal_context="per_pixel"`` (the paper
  profile) does as the official code: every context is that frame's grid tokens only and each pixel's temporal
  cross-attention reads the T motion features at its position (:mod:`videolavit.models.temporal_context`).
- ``motion_input="official"`` (the paper profile; "ours" is the tiny recipe's path above) feeds the motion as the
  official detokenizer receives it: bicubic-resized to the latent grid and in its units (ours ÷ ``motion_rescale``),
  for both the input channels and the motion encoder (which resizes that again, bicubic, to its grid).
- added_time_ids = [fps, motion_bucket_id, noise_aug] = [6, 127, 0.02] as the official `reconstruct_from_token`.

EDM (Karras 2022) with SVD's v-style preconditioning, σ_data configurable (1.0 for SVD weights):
c_skip = σd²/(σ²+σd²), c_out = −σ·σd/√(σ²+σd²), c_in = 1/√(σ²+σd²), c_noise = ¼·ln σ; D(x) = c_skip·x + c_out·F(c_in·x).
Training: ln σ ~ N(p_mean, p_std²) = N(1.0, 1.2²), loss = λ(σ)·‖D(x0 + σ·n) − x0‖² with λ = (σ²+σd²)/(σ·σd)².
With ``keyframe_skip`` the diffusion runs on the clip minus its keyframe (both in diffusion space; the keyframe is
added back after sampling) and a fresh U-Net's ``conv_out`` is zeroed: an untrained model renders the static clip and
training only has to learn how the frames move away from the keyframe (the tiny CPU recipe; the paper's SVD-initialised
U-Net predicts whole frames, so the option is off by default). With ``motion_warp`` as well, the base is the keyframe
carried along the motion field frame after frame (:func:`warp_along_motion`: the codec's own motion-compensated
prediction without its residuals), so the U-Net learns only what motion compensation misses: on the tiny synthetic
val clips (30) that base alone scores 24.4 dB PSNR against 21.0 dB for the repeated keyframe.
Sampling: Euler over Karras σs; classifier-free guidance rising linearly per frame from 1 to `max_guidance`, the
negative being zero motion features, zero motion channels and zero keyframe channels (the official negative); the same
three are dropped together with probability `cond_dropout` in training.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from videolavit.errors import ConfigError, MissingArtifactError
from videolavit.models.keyframe_detokenizer import load_vae, loading_kwargs, vae_downsampling, weights_variant
from videolavit.models.motion_condition import MotionConditionEncoder
from videolavit.models.temporal_context import spatiotemporal_unet_forward

TINY_UNET = {
    "block_out_channels": [32, 64],
    "layers_per_block": 1,
    "down_block_types": ["DownBlockSpatioTemporal", "CrossAttnDownBlockSpatioTemporal"],
    "up_block_types": ["CrossAttnUpBlockSpatioTemporal", "UpBlockSpatioTemporal"],
    "num_attention_heads": [2, 4],
    "cross_attention_dim": 64,
    "addition_time_embed_dim": 8,
    "projection_class_embeddings_input_dim": 24,  # 3 added time ids × addition_time_embed_dim
}
# SVD img2vid(-xt) layout with the official Video-LaVIT changes (paper.md §5): 10 input channels, heads (5, 10, 10, 20).
PAPER_UNET = {
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "down_block_types": ["CrossAttnDownBlockSpatioTemporal"] * 3 + ["DownBlockSpatioTemporal"],
    "up_block_types": ["UpBlockSpatioTemporal"] + ["CrossAttnUpBlockSpatioTemporal"] * 3,
    "num_attention_heads": [5, 10, 10, 20],
    "cross_attention_dim": 1024,
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 768,
}
TINY_MOTION_ENCODER = {"grid": [8, 12], "dim": 64, "depth": 2, "heads": 4}
PAPER_MOTION_ENCODER = {"grid": [16, 16], "dim": 512, "depth": 12, "heads": 8}


def warp_along_motion(
    keyframe: torch.Tensor, motion: torch.Tensor, motion_std, motion_rescale: float
) -> torch.Tensor:
    """The keyframe [B, C, H, W] carried along normalized motion [B, 2, T, h, w] → frames [B, T, C, H, W].

    Frame 0 is the keyframe; frame t is frame t−1 backward-warped by frame t's field, which holds, at each block of
    frame t, how far its content moved since frame t−1 (x, y): frame_t(p) = frame_{t−1}(p − m_t(p)), as a decoder
    predicts a P-frame. The displacements are composed first, D_t(p) = D_{t−1}(p − m_t(p)) + m_t(p), and each frame is
    sampled once from the keyframe (bilinear), so sub-pixel motion does not blur the content frame after frame. The
    field is bilinearly resized to the frames; its units are the tokenizer input's (x/W, y/H ÷ ``motion_std`` ×
    ``motion_rescale``, see ``video.motion.normalize_motion``), i.e. free of resolution.
    """
    B, C, H, W = keyframe.shape
    if motion.ndim != 5 or motion.shape[:2] != (B, 2):
        raise ValueError(f"motion must be [{B}, 2, T, h, w], got {tuple(motion.shape)}")
    T = motion.shape[2]
    # normalized motion → displacement in grid_sample coordinates ([-1, 1] spans the frame: 2 units per width)
    scale = motion.new_tensor([2 * float(motion_std[0]), 2 * float(motion_std[1])]) / float(motion_rescale)
    ys = (torch.arange(H, device=keyframe.device, dtype=keyframe.dtype) * 2 + 1) / H - 1  # pixel centres
    xs = (torch.arange(W, device=keyframe.device, dtype=keyframe.dtype) * 2 + 1) / W - 1
    identity = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)[None]  # [1, H, W, 2] as (x, y)
    field = motion.transpose(1, 2).flatten(0, 1).to(keyframe.dtype) * scale.reshape(1, 2, 1, 1)  # [B·T, 2, h, w]
    if tuple(field.shape[-2:]) != (H, W):
        field = F.interpolate(field, size=(H, W), mode="bilinear", align_corners=False)
    field = field.reshape(B, T, 2, H, W)
    frames, total = [keyframe], torch.zeros_like(field[:, 0])  # total: D_t [B, 2, H, W]
    sample = dict(mode="bilinear", padding_mode="border", align_corners=False)
    for t in range(1, T):
        step = field[:, t]
        total = F.grid_sample(total, identity - step.permute(0, 2, 3, 1), **sample) + step
        frames.append(F.grid_sample(keyframe, identity - total.permute(0, 2, 3, 1), **sample))
    return torch.stack(frames, dim=1)


def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """EDM sampling noise levels, descending, with a final 0: [steps + 1]."""
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    sigmas = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)]).float()


class VideoDetokenizer(nn.Module):
    """Keyframe [B, 3, H, W] + normalized motion [B, 2, T, h, w] → clip frames [B, T, 3, H, W] in [-1, 1]."""

    def __init__(
        self,
        frames: int = 24,
        height: int = 32,
        width: int = 48,
        unet: dict | None = None,
        motion_encoder: dict | None = None,
        vae_dir: str | None = None,
        sigma_data: float = 0.5,
        p_mean: float = 1.0,
        p_std: float = 1.2,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        noise_aug: float = 0.02,
        fps: int = 6,
        motion_bucket_id: int = 127,
        cond_dropout: float = 0.1,
        decode_chunk_size: int = 8,
        keyframe_skip: bool = False,
        motion_warp: bool = False,
        motion_std: tuple[float, float] | list[float] | None = None,
        motion_rescale: float | None = None,
        temporal_context: str = "broadcast",
        gradient_checkpointing: bool = False,
        motion_input: str = "ours",
        *,
        unet_model: nn.Module | None = None,
        vae: nn.Module | None = None,
    ):
        super().__init__()
        from diffusers import UNetSpatioTemporalConditionModel

        self.config = {
            "frames": int(frames), "height": int(height), "width": int(width),
            "unet": dict(unet or {}), "motion_encoder": dict(motion_encoder or {}),
            "sigma_data": float(sigma_data), "p_mean": float(p_mean), "p_std": float(p_std),
            "sigma_min": float(sigma_min), "sigma_max": float(sigma_max), "noise_aug": float(noise_aug),
            "fps": int(fps), "motion_bucket_id": int(motion_bucket_id), "cond_dropout": float(cond_dropout),
            "decode_chunk_size": int(decode_chunk_size), "keyframe_skip": bool(keyframe_skip),
            "motion_warp": bool(motion_warp),
            "motion_std": [float(s) for s in motion_std] if motion_std is not None else None,
            "motion_rescale": float(motion_rescale) if motion_rescale is not None else None,
            "temporal_context": str(temporal_context), "gradient_checkpointing": bool(gradient_checkpointing),
            "motion_input": str(motion_input),
        }
        if temporal_context not in ("broadcast", "per_pixel"):
            raise ConfigError(f"temporal_context must be broadcast or per_pixel, got {temporal_context!r}")
        if motion_input not in ("ours", "official"):
            raise ConfigError(f"motion_input must be ours or official, got {motion_input!r}")
        if motion_input == "official" and motion_rescale is None:
            raise ConfigError("motion_input official divides the motion by motion_rescale: give it (video.motion_rescale)")
        if motion_warp and not keyframe_skip:
            raise ConfigError("motion_warp sets the base that keyframe_skip diffuses around: it needs keyframe_skip")
        if motion_warp and (motion_std is None or motion_rescale is None):
            raise ConfigError(
                "motion_warp reads normalized motion: give motion_std and motion_rescale (the clips' video.motion_std, "
                "video.motion_rescale)"
            )
        self.vae = vae if vae is not None else (load_vae(vae_dir) if vae_dir else None)
        if self.vae is not None:
            channels, factor = self.vae.config.latent_channels, vae_downsampling(self.vae)
            self.scaling_factor = float(self.vae.config.scaling_factor)
        else:
            channels, factor, self.scaling_factor = 3, 1, 1.0
        if height % factor or width % factor:
            raise ConfigError(
                f"video size {height}×{width} is not a multiple of the VAE's down-sampling factor {factor}"
            )
        self.channels = channels
        self.latent_size = (height // factor, width // factor)
        if unet_model is None:
            kwargs = {**TINY_UNET, **self.config["unet"]}
            kwargs.update(
                sample_size=list(self.latent_size),
                in_channels=2 * channels + 2,
                out_channels=channels,
                num_frames=frames,
            )
            unet_model = UNetSpatioTemporalConditionModel(**kwargs)
            if keyframe_skip:  # a fresh model predicts no change: it renders the static clip until trained
                nn.init.zeros_(unet_model.conv_out.weight)
                nn.init.zeros_(unet_model.conv_out.bias)
        self.unet = unet_model
        if self.unet.config.in_channels != 2 * channels + 2 or self.unet.config.out_channels != channels:
            raise ConfigError(f"the video U-Net must take {2 * channels + 2} and return {channels} channels")
        cross_dim = self.unet.config.cross_attention_dim
        if not isinstance(cross_dim, int):
            raise ConfigError("the video U-Net needs one cross_attention_dim for all blocks")
        encoder_kwargs = {
            **TINY_MOTION_ENCODER,
            **self.config["motion_encoder"],
            "out_dim": cross_dim,
            "frames": frames,
        }
        self.motion_encoder = MotionConditionEncoder(**encoder_kwargs)
        if temporal_context == "per_pixel":
            from videolavit.models.temporal_context import use_per_pixel_time_context

            use_per_pixel_time_context(self.unet, tuple(encoder_kwargs["grid"]))
        if gradient_checkpointing:  # recompute each block's activations in backward (paper scale: ≥ 69 GiB a clip)
            self.unet.enable_gradient_checkpointing()

    def trainable_parameters(self):
        """U-Net and motion condition encoder (the VAE stays frozen)."""
        return [p for n, p in self.named_parameters() if not n.startswith("vae.")]

    # -- spaces and conditions -----------------------------------------------------------------------------------------

    def encode_frames(self, frames: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Frames [B, T, 3, H, W] in [-1, 1] → diffusion space [B, T, C, h, w]."""
        if self.vae is None:
            return frames
        B, T = frames.shape[:2]
        with torch.no_grad():  # the VAE is frozen
            dist = self.vae.encode(frames.flatten(0, 1).to(self.vae.dtype)).latent_dist
            z = dist.sample(generator) if generator is not None else dist.mode()
        return (z.float() * self.scaling_factor).reshape(B, T, *z.shape[1:])

    def decode_frames(self, x: torch.Tensor) -> torch.Tensor:
        """Diffusion space [B, T, C, h, w] → frames [B, T, 3, H, W] in [-1, 1], decoded in chunks of frames."""
        if self.vae is None:
            return x.clamp(-1, 1)
        z = (x / self.scaling_factor).to(self.vae.dtype)
        temporal = type(self.vae).__name__ == "AutoencoderKLTemporalDecoder"  # its decode mixes frames in time
        videos = []
        for clip in z:  # chunks never straddle two clips
            chunks = []
            for chunk in clip.split(self.config["decode_chunk_size"]):
                extra = {"num_frames": chunk.shape[0]} if temporal else {}
                chunks.append(self.vae.decode(chunk, **extra).sample.float())
            videos.append(torch.cat(chunks))
        return torch.stack(videos).clamp(-1, 1)  # [B, T, 3, H, W]

    def conditions(self, keyframe: torch.Tensor, motion: torch.Tensor, frames: int, generator=None) -> dict:
        """The three EMC conditions and the added time ids of a batch (see the module docstring)."""
        B = keyframe.shape[0]
        H, W = self.config["height"], self.config["width"]
        if keyframe.ndim != 4 or tuple(keyframe.shape[1:]) != (3, H, W):
            raise ValueError(f"keyframe must be [B, 3, {H}, {W}] in [-1, 1], got {tuple(keyframe.shape)}")
        if motion.ndim != 5 or motion.shape[:3] != (B, 2, frames):
            raise ValueError(
                f"motion must be [{B}, 2, {frames}, h, w] (batch and frames of the clip), got {tuple(motion.shape)}"
            )
        if frames > self.config["frames"]:
            raise ValueError(
                f"{frames} frames given, the video detokenizer was built for at most {self.config['frames']}"
            )
        noisy = keyframe + self.config["noise_aug"] * torch.randn(
            keyframe.shape, generator=generator, device=keyframe.device
        )
        if self.vae is not None:
            with torch.no_grad():
                noisy = self.vae.encode(noisy.to(self.vae.dtype)).latent_dist.mode().float()  # unscaled, as SVD
        keyframe_in = noisy[:, None].expand(B, frames, *noisy.shape[1:])  # [B, T, C, h, w]
        if self.config["motion_input"] == "official":
            from videolavit.models.temporal_context import official_motion_input

            motion_in = official_motion_input(motion, self.latent_size, self.config["motion_rescale"])
            features = self.motion_encoder(motion_in.transpose(1, 2))  # [B, T, N, D]
        else:
            motion_in = F.interpolate(motion, size=(frames, *self.latent_size), mode="nearest").transpose(
                1, 2
            )  # [B, T, 2, h, w]
            features = self.motion_encoder(motion)  # [B, T, N, D]
        ids = [self.config["fps"], self.config["motion_bucket_id"], self.config["noise_aug"]]
        added_time_ids = torch.tensor([ids], dtype=keyframe_in.dtype, device=keyframe.device).expand(B, 3)
        if self.config["temporal_context"] == "per_pixel":  # the temporal blocks build each pixel's T features
            context = features.flatten(0, 1)  # [B·T, N, D]
            return {"keyframe": keyframe_in, "motion": motion_in, "context": context, "added_time_ids": added_time_ids}
        summary = features.mean(2)[:, None].expand(B, frames, frames, features.shape[-1])  # [B, T, T, D]
        context = torch.cat([features, summary], dim=2).flatten(0, 1)  # [B·T, N + T, D]
        return {"keyframe": keyframe_in, "motion": motion_in, "context": context, "added_time_ids": added_time_ids}

    def skip_base(self, keyframe: torch.Tensor, motion: torch.Tensor) -> torch.Tensor | None:
        """With ``keyframe_skip``: what the diffusion variable is taken relative to (x = clip − base), in diffusion
        space [B, T, C, h, w]: the clean keyframe repeated over the T frames of ``motion``, or with ``motion_warp``
        the keyframe carried along the motion (:func:`warp_along_motion`); None without ``keyframe_skip``."""
        if not self.config["keyframe_skip"]:
            return None
        if self.config["motion_warp"]:
            return self.encode_frames(self.warp(keyframe, motion))
        base = self.encode_frames(keyframe[:, None])  # [B, 1, C, h, w]
        return base.expand(base.shape[0], motion.shape[2], *base.shape[2:])

    def warp(self, keyframe: torch.Tensor, motion: torch.Tensor) -> torch.Tensor:
        """:func:`warp_along_motion` in this model's motion units: pixels [B, T, 3, H, W] (the ``motion_warp`` base)."""
        if self.config["motion_std"] is None or self.config["motion_rescale"] is None:
            raise ConfigError("this video detokenizer was built without motion units (motion_std, motion_rescale)")
        return warp_along_motion(keyframe, motion, self.config["motion_std"], self.config["motion_rescale"])

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor, cond: dict) -> torch.Tensor:
        """EDM denoiser D(x; σ) [B, T, C, h, w] with σ [B]."""
        sd = self.config["sigma_data"]
        s = sigma.reshape(-1, 1, 1, 1, 1).to(x.dtype)
        c_skip, c_out, c_in = sd**2 / (s**2 + sd**2), -s * sd / (s**2 + sd**2).sqrt(), 1 / (s**2 + sd**2).sqrt()
        c_noise = 0.25 * sigma.log()
        inp = torch.cat([c_in * x, cond["keyframe"], cond["motion"]], dim=2)  # [B, T, 2C + 2, h, w]
        out = spatiotemporal_unet_forward(self.unet, inp, c_noise, cond["context"], cond["added_time_ids"])
        return c_skip * x + c_out * out

    # -- training ------------------------------------------------------------------------------------------------------

    def training_loss(self, frames, keyframe, motion, generator: torch.Generator | None = None) -> torch.Tensor:
        """EDM loss of clips ``frames`` [B, T, 3, H, W] given ``keyframe`` [B, 3, H, W], ``motion`` [B, 2, T, h, w]."""
        H, W = self.config["height"], self.config["width"]
        if frames.ndim != 5 or tuple(frames.shape[2:]) != (3, H, W):
            raise ValueError(f"frames must be [B, T, 3, {H}, {W}] in [-1, 1], got {tuple(frames.shape)}")
        B, T = frames.shape[:2]
        cond = self.conditions(keyframe, motion, T, generator)
        x0 = self.encode_frames(frames, generator)  # [B, T, C, h, w]
        base = self.skip_base(keyframe, motion)
        if base is not None:
            x0 = x0 - base  # the clip's change from its keyframe
        device = x0.device
        if self.training and self.config["cond_dropout"] > 0:
            keep = (torch.rand(B, generator=generator, device=device) >= self.config["cond_dropout"]).to(x0.dtype)
            cond = self._mask(cond, keep, T)
        sigma = (
            self.config["p_mean"] + self.config["p_std"] * torch.randn(B, generator=generator, device=device)
        ).exp()
        noise = torch.randn(x0.shape, generator=generator, device=device)
        denoised = self.denoise(x0 + sigma.reshape(-1, 1, 1, 1, 1) * noise, sigma, cond)
        sd = self.config["sigma_data"]
        weight = ((sigma**2 + sd**2) / (sigma * sd) ** 2).reshape(-1, 1, 1, 1, 1)
        return (weight * (denoised.float() - x0.float()) ** 2).mean()

    @staticmethod
    def _mask(cond: dict, keep: torch.Tensor, frames: int) -> dict:
        """Zero the keyframe, motion and motion-feature conditions of samples where ``keep`` [B] is 0."""
        k5 = keep.reshape(-1, 1, 1, 1, 1)
        return {
            "keyframe": cond["keyframe"] * k5,
            "motion": cond["motion"] * k5,
            "context": cond["context"] * keep.repeat_interleave(frames).reshape(-1, 1, 1),
            "added_time_ids": cond["added_time_ids"],
        }

    # -- sampling ------------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def sample(
        self,
        keyframe: torch.Tensor,
        motion: torch.Tensor,
        steps: int = 25,
        max_guidance: float = 3.0,
        generator: torch.Generator | None = None,
        init_noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Frames [B, T, 3, H, W] in [-1, 1] from a keyframe and a (true or reconstructed) motion field of T frames."""
        B, T = keyframe.shape[0], motion.shape[2]
        cond = self.conditions(keyframe, motion, T, generator)
        base = self.skip_base(keyframe, motion)
        shape = (B, T, self.channels, *self.latent_size)
        if init_noise is None:
            init_noise = torch.randn(shape, generator=generator, device=keyframe.device)
        elif tuple(init_noise.shape) != shape:
            raise ValueError(f"init_noise must be {list(shape)}, got {list(init_noise.shape)}")
        sigmas = karras_sigmas(steps, self.config["sigma_min"], self.config["sigma_max"]).to(keyframe.device)
        cond = self.guidance_conditions(cond, max_guidance)
        x = init_noise.to(keyframe.device) * sigmas[0]  # [B, T, C, h, w]
        for i in range(steps):
            denoised = self.guided_denoise(x, sigmas[i], cond, max_guidance)
            x = x + (sigmas[i + 1] - sigmas[i]) * (x - denoised) / sigmas[i]
        return self.decode_frames(x if base is None else x + base)

    def guidance_conditions(self, cond: dict, max_guidance: float) -> dict:
        """``cond`` for :meth:`guided_denoise`: with guidance, the negative (zeroed) conditions stacked before it."""
        if max_guidance == 1.0:
            return cond
        B = cond["keyframe"].shape[0]
        zero = self._mask(cond, torch.zeros(B, device=cond["keyframe"].device), cond["keyframe"].shape[1])
        return {k: torch.cat([zero[k], cond[k]]) for k in cond}

    def guided_denoise(self, x: torch.Tensor, sigma: torch.Tensor, cond: dict, max_guidance: float) -> torch.Tensor:
        """D(x; σ) [B, T, C, h, w] at one noise level σ (a scalar tensor) with classifier-free guidance rising per
        frame from 1 to ``max_guidance``; ``cond`` from :meth:`guidance_conditions`."""
        B, T = x.shape[:2]
        if max_guidance == 1.0:
            return self.denoise(x, sigma.expand(B), cond)
        guidance = torch.linspace(1.0, max_guidance, T, device=x.device).reshape(1, T, 1, 1, 1)
        uncond, conditional = self.denoise(torch.cat([x, x]), sigma.expand(2 * B), cond).chunk(2)
        return uncond + guidance * (conditional - uncond)

    # -- persistence and SVD initialisation ----------------------------------------------------------------------------

    def save_pretrained(self, directory: str | Path) -> None:
        """``unet/`` and ``vae/`` in diffusers' format; ``motion_encoder.safetensors`` and ``config.json``."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.unet.save_pretrained(directory / "unet")
        if self.vae is not None:
            self.vae.save_pretrained(directory / "vae")
        state = {k: v.detach().contiguous().cpu() for k, v in self.motion_encoder.state_dict().items()}
        save_file(state, directory / "motion_encoder.safetensors")
        config = {"_class_name": type(self).__name__, **self.config, "vae": self.vae is not None}
        (directory / "config.json").write_text(json.dumps(config, indent=2))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "VideoDetokenizer":
        from diffusers import UNetSpatioTemporalConditionModel
        from safetensors.torch import load_file

        directory = Path(directory)
        if not (directory / "config.json").is_file():
            raise MissingArtifactError(f"no video detokenizer at {directory} (config.json missing)")
        config = json.loads((directory / "config.json").read_text())
        config.pop("_class_name", None)
        has_vae = config.pop("vae", False)
        unet = UNetSpatioTemporalConditionModel.from_pretrained(directory / "unet", **loading_kwargs())
        vae = load_vae(directory / "vae") if has_vae else None
        model = cls(**config, unet_model=unet, vae=vae)
        path = directory / "motion_encoder.safetensors"
        missing, unexpected = model.motion_encoder.load_state_dict(load_file(path), strict=False)
        if missing or unexpected:
            raise MissingArtifactError(
                f"{path} does not match this motion encoder (saved by another version? retrain with "
                f"`videolavit detokenizer`): missing {missing[:3]}, unexpected {unexpected[:3]}"
            )
        return model

    @torch.no_grad()
    def load_svd_weights(self, directory: str | Path) -> tuple[list[str], list[str]]:
        """Initialise the U-Net from a local SVD img2vid diffusers folder (holding ``unet/``, or the U-Net's own).

        As paper A.1, the new layers stay freshly initialised: every cross-attention (``attn2``, spatial and temporal),
        the motion input channels of ``conv_in`` (zeroed, so the U-Net starts as SVD) and the motion encoder.
        Returns (loaded, re-initialised) parameter names.
        """
        from diffusers import UNetSpatioTemporalConditionModel

        folder = Path(directory)
        if (folder / "unet" / "config.json").is_file():
            folder = folder / "unet"
        if not (folder / "config.json").is_file():
            raise MissingArtifactError(f"no SVD U-Net at {directory}: expected {directory}/unet/config.json")
        if any(p.is_meta for p in self.parameters()):
            raise ValueError(
                "the video detokenizer is on the meta device; build it on a real device before loading SVD weights"
            )
        source = UNetSpatioTemporalConditionModel.from_pretrained(
            folder, variant=weights_variant(folder), **loading_kwargs()
        ).state_dict()
        own = self.unet.state_dict()
        unknown = sorted(set(source) - set(own))
        if unknown:
            raise ValueError(
                f"{folder} is not the layout of this U-Net: {len(unknown)} unknown weights, e.g. {unknown[:3]}"
            )
        widened = "conv_in.weight"  # SVD: noisy + image latents; here also the motion channels
        for name, tensor in own.items():  # check everything before touching a weight
            src = source.get(name)
            if src is None or ".attn2." in name or src.shape == tensor.shape:
                continue
            if not (name == widened and src.shape[1] < tensor.shape[1] and src.shape[0] == tensor.shape[0]):
                raise ValueError(
                    f"SVD weight {name} is {list(src.shape)}, this U-Net's is {list(tensor.shape)}: "
                    "use the SVD-shaped unet config"
                )
        loaded, fresh = [], []
        for name, tensor in own.items():
            key = f"unet.{name}"
            if ".attn2." in name or name not in source:
                fresh.append(key)
                continue
            src = source[name]
            if src.shape != tensor.shape:  # the widened conv_in
                tensor[:, : src.shape[1]].copy_(src)
                tensor[:, src.shape[1] :].zero_()
                fresh.append(f"{key}[:, {src.shape[1]}:]")
            else:
                tensor.copy_(src)
            loaded.append(key)
        fresh += [f"motion_encoder.{n}" for n, _ in self.motion_encoder.named_parameters()]
        return loaded, fresh
