"""Long videos, clip after clip, with the inter-clip noise constraint (paper §3.2 Eq. 4, Fig. 3b).

Each later clip's keyframe does not start from fresh noise but from the previous clip's last frame, pushed part way up
the keyframe detokenizer's DDIM schedule; its denoising then runs only the remaining steps. ``inverse_rate`` says
where: the keyframe resumes at timestep index ``k = int(inverse_rate · steps)`` of the (descending) schedule, so
0.85 of 50 steps resumes at index 42 and denoises 8 steps (the official default; its long-video notebook uses 0.9).
- ``"ddim_inversion"`` (the paper): deterministic DDIM inversion (Eq. 4) of the last frame over the ΔT = steps − k
  lowest timesteps, with the next clip's keyframe condition and no guidance.
- ``"add_noise"`` (the official code's `regenerate_noise`): forward noising with ``scheduler.add_noise`` at that
  timestep.
- ``"none"``: fresh noise and the full schedule (independent clips; the baseline the constraint is judged against).
The seam frame is not duplicated: the first frame of every later clip is dropped, so N clips of T frames give
N·T − (N − 1) frames.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from videolavit.errors import ConfigError

NOISE_CONSTRAINTS = ("ddim_inversion", "add_noise", "none")
VideoFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (keyframe [B,3,H,W], motion [B,2,T,h,w]) → [B,T,3,H,W]


@dataclass
class LongVideo:
    frames: torch.Tensor  # [B, N·T − (N − 1), 3, H, W] in [-1, 1]
    keyframes: list[torch.Tensor]  # N × [B, 3, H_k, W_k] in [-1, 1], as the keyframe detokenizer rendered them


@torch.no_grad()
def ddim_invert(
    keyframe_detokenizer, x0: torch.Tensor, cond: torch.Tensor, steps: int, start_index: int
) -> torch.Tensor:
    """DDIM inversion of the clean ``x0`` (diffusion space [B, C, h, w]) up to timestep index ``start_index`` of a
    ``steps``-step DDIM schedule: x_{t+1}/√ᾱ_{t+1} = x_t/√ᾱ_t + (√(1/ᾱ_{t+1} − 1) − √(1/ᾱ_t − 1))·ε(x_t, t).

    Eq. 4 as printed reads x_{t+1} = √(ᾱ_{t+1}/ᾱ_t)·x_t + (…)·ε, which drops the √ᾱ_{t+1} factor on ε; the DDIM
    form above (Song et al. 2021) is the one that inverts the sampler.
    """
    kf = keyframe_detokenizer
    timesteps = kf.make_scheduler(steps).timesteps[start_index:].flip(0)  # ascending: ΔT = steps − start_index levels
    alphas = kf.scheduler.alphas_cumprod.to(x0.device)
    context = kf.context(cond)
    x, a_cur = x0, torch.tensor(1.0, device=x0.device)
    for i, t_next in enumerate(timesteps):
        # ε is read at x's own level; the clean start has none, so the first call uses the lowest timestep.
        t_eval = t_next if i == 0 else timesteps[i - 1]
        eps, _ = kf.eps_and_x0(kf.predict(x, t_eval, context), x, int(t_eval))
        a_next = alphas[int(t_next)]
        x = a_next.sqrt() * (x / a_cur.sqrt() + ((1 / a_next - 1).sqrt() - (1 / a_cur - 1).sqrt()) * eps)
        a_cur = a_next
    return x


@torch.no_grad()
def forward_noise(keyframe_detokenizer, x0: torch.Tensor, steps: int, start_index: int, generator=None) -> torch.Tensor:
    """The official `regenerate_noise`: ``add_noise`` of fresh Gaussian noise at timestep index ``start_index``."""
    scheduler = keyframe_detokenizer.make_scheduler(steps)
    noise = torch.randn(x0.shape, generator=generator, device=x0.device)
    t = scheduler.timesteps[start_index].reshape(1).expand(x0.shape[0])
    return scheduler.add_noise(x0, noise, t)


@torch.no_grad()
def next_keyframe(
    keyframe_detokenizer,
    last_frame: torch.Tensor,
    cond: torch.Tensor,
    noise_constraint: str = "add_noise",
    inverse_rate: float = 0.85,
    steps: int = 50,
    guidance: float = 3.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The next clip's keyframe [B, 3, H_k, W_k] in [-1, 1], constrained by the previous clip's ``last_frame``."""
    kf = keyframe_detokenizer
    if noise_constraint not in NOISE_CONSTRAINTS:
        raise ConfigError(f"noise_constraint must be one of {NOISE_CONSTRAINTS}, got {noise_constraint!r}")
    if noise_constraint == "none":
        return kf.sample(cond, steps, guidance, generator, output_type="float")
    start_index = int(inverse_rate * steps)
    if not 0 <= start_index < steps:
        raise ConfigError(f"inverse_rate must be in [0, 1), got {inverse_rate}")
    x0 = kf.encode_images(_resize(last_frame, kf.config["image_size"]))  # [B, C, h, w]
    if noise_constraint == "ddim_inversion":
        x_t = ddim_invert(kf, x0, cond, steps, start_index)
    else:
        x_t = forward_noise(kf, x0, steps, start_index, generator)
    return kf.sample(cond, steps, guidance, generator, latents=x_t, start_index=start_index, output_type="float")


@torch.no_grad()
def generate_long_video(
    keyframe_detokenizer,
    video: "VideoFn | torch.nn.Module",
    keyframe_conds: Sequence[torch.Tensor],
    motions: Sequence[torch.Tensor],
    *,
    video_size: tuple[int, int] | None = None,
    noise_constraint: str = "add_noise",
    inverse_rate: float = 0.85,
    keyframe_steps: int = 50,
    keyframe_guidance: float = 3.0,
    generator: torch.Generator | None = None,
    first_keyframe: torch.Tensor | None = None,
) -> LongVideo:
    """Render N clips from per-clip keyframe conditions [B, N_tok, cond_dim] and motion fields [B, 2, T, h, w].

    ``video`` renders one clip: a `VideoDetokenizer` (its ``sample`` with default steps and guidance), a partial of
    its ``sample`` (``functools.partial(vd.sample, steps=25, max_guidance=4.0)``) or any callable (keyframe, motion) →
    frames. ``video_size`` (H, W): the size ``video`` expects (default: the video detokenizer's, else the keyframe
    detokenizer's).
    ``first_keyframe`` [B, 3, H, W] replaces the first rendered keyframe and is the first frame (image-to-video).
    """
    if isinstance(video, torch.nn.Module) and hasattr(video, "sample"):
        video_size = video_size or (video.config["height"], video.config["width"])
        video = functools.partial(video.sample, generator=generator)
    if len(keyframe_conds) != len(motions) or not motions:
        raise ValueError(f"need one keyframe condition per motion field, got {len(keyframe_conds)} and {len(motions)}")
    if noise_constraint not in NOISE_CONSTRAINTS:
        raise ConfigError(f"noise_constraint must be one of {NOISE_CONSTRAINTS}, got {noise_constraint!r}")
    kf = keyframe_detokenizer
    size = tuple(video_size or kf.config["image_size"])
    clips, keyframes = [], []
    for i, (cond, motion) in enumerate(zip(keyframe_conds, motions, strict=True)):
        if i == 0:
            key = (
                first_keyframe
                if first_keyframe is not None
                else kf.sample(cond, keyframe_steps, keyframe_guidance, generator, output_type="float")
            )
        else:
            last = clips[-1][:, -1]  # [B, 3, H, W]
            key = next_keyframe(
                kf, last, cond, noise_constraint, inverse_rate, keyframe_steps, keyframe_guidance, generator
            )
        keyframes.append(key)
        frames = video(_resize(key, size), motion)  # [B, T, 3, H, W]
        if frames.ndim != 5 or frames.shape[1] != motion.shape[2]:
            raise ValueError(
                f"the video detokenizer returned {tuple(frames.shape)}, expected [B, {motion.shape[2]}, 3, H, W]"
            )
        if i == 0 and first_keyframe is not None:
            # Image-to-video: the given image is the video's frame 0 as it is, not the detokenizer's redraw of it
            # (a re-render scored ~20 dB against the input on the tiny run).
            frames = torch.cat([_resize(first_keyframe, frames.shape[-2:]).to(frames)[:, None], frames[:, 1:]], dim=1)
        clips.append(frames)
    # The first frame of a later clip re-renders the seam; keep the earlier clip's.
    frames = torch.cat([clips[0]] + [clip[:, 1:] for clip in clips[1:]], dim=1)
    return LongVideo(frames=frames, keyframes=keyframes)


def _resize(images: torch.Tensor, size) -> torch.Tensor:
    """[B, 3, H, W] → [B, 3, *size], bicubic as the official code, clamped back to [-1, 1]."""
    size = (int(size[0]), int(size[1]))
    if tuple(images.shape[-2:]) == size:
        return images
    return F.interpolate(images, size=size, mode="bicubic", align_corners=False).clamp(-1, 1)
