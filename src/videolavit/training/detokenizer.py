"""Training of the keyframe and video detokenizers: one LightningModule holding both (a parameter group each,
gradients clipped per model), conditioned by the frozen visual and motion tokenizers (paper §3.2)."""

from __future__ import annotations

from typing import Optional

import lightning as L
import torch
import torch.nn.functional as F

from videolavit.data.pixels import frames_to_unit
from videolavit.errors import ConfigError, MissingArtifactError
from videolavit.models.keyframe_detokenizer import KeyframeDetokenizer
from videolavit.models.motion_tokenizer import MotionTokenizer
from videolavit.models.video_detokenizer import VideoDetokenizer
from videolavit.models.visual_tokenizer import VisualTokenizer, preprocess_images
from videolavit.training.optim import adamw_with_cosine, decay_groups
from videolavit.training.trainer import ResumableRNG, TrainLoss

NO_DECAY = ("embedding",)  # position tables of the motion encoder
RUNS = ("separate", "joint")


def run_groups(models, runs: str) -> list[tuple[str, ...]]:
    """The training runs of the stage: ``joint`` one module holding every model in ``models`` (their memory adds up),
    ``separate`` one run per model in turn (the paper-scale way: each fits a GPU where both do not)."""
    if str(runs) not in RUNS:
        raise ConfigError(f"detokenizer.runs must be one of {list(RUNS)}, got {runs!r}")
    models = tuple(str(m) for m in models)
    return [models] if str(runs) == "joint" or len(models) == 1 else [(m,) for m in models]


class FrozenTokenizers:
    """The trained visual and motion tokenizers, frozen. Not a Module: they stay out of the checkpoint and optimizer."""

    def __init__(self, visual: Optional[VisualTokenizer], motion: Optional[MotionTokenizer]):
        self.visual, self.motion = visual, motion
        for model in (visual, motion):
            if model is not None:
                model.eval().requires_grad_(False)

    def to(self, device) -> "FrozenTokenizers":
        for model in (self.visual, self.motion):
            if model is not None:
                model.to(device)
        return self

    def keyframe_pixels(self, keyframes: torch.Tensor) -> torch.Tensor:
        """uint8 keyframes [B, S, S, 3] on the host → the visual tokenizer's input [B, 3, S', S'], still on the host
        (the training module makes it before the batch moves, so no step copies keyframes back from the GPU)."""
        return preprocess_images(keyframes, self.visual.image_size)

    @torch.no_grad()
    def keyframe_condition(self, keyframes: torch.Tensor) -> torch.Tensor:
        """Keyframes (uint8 [B, S, S, 3], or ``keyframe_pixels``' floats) → decoded features of their own visual codes
        [B, N, D]."""
        vt = self.visual
        if keyframes.is_floating_point():  # padded, on the device: no per-image code lists, no host sync
            return vt.own_code_features(keyframes.to(vt.queries.device))
        codes = vt.encode(vt.preprocess(keyframes.cpu()))  # preprocess moves them to the tokenizer's device
        return vt.decode_features(codes)

    @torch.no_grad()
    def motion_from_tokens(self, motion: torch.Tensor) -> torch.Tensor:
        """Motion [B, 2, T, h, w] → its round trip through the motion tokens (what generation gives g_V)."""
        return self.motion.decode(self.motion.encode(motion))


class DetokenizerModule(TrainLoss, ResumableRNG, L.LightningModule):
    """Both detokenizers: the sum of their diffusion losses, AdamW (a group per model) with cosine warm-up. Noise
    levels, noise and condition dropout draw from the global RNG, which ResumableRNG restores on resume."""

    def __init__(
        self,
        keyframe_kwargs: Optional[dict],
        video_kwargs: Optional[dict],
        optim: dict,
        max_steps: int,
        condition_motion: str = "true",
        keyframe_lr: Optional[float] = None,
        svd_dir: Optional[str] = None,
        video_every_n_steps: int = 1,
        video_batch_size: Optional[int] = None,
    ):
        super().__init__()
        self.keyframe = KeyframeDetokenizer(**keyframe_kwargs) if keyframe_kwargs is not None else None
        self.video = VideoDetokenizer(**video_kwargs) if video_kwargs is not None else None
        if self.video is not None and svd_dir:
            self.video.load_svd_weights(svd_dir)  # a resumed run's checkpoint then overwrites these
        self.optim, self.max_steps = optim, int(max_steps)
        self.condition_motion, self.keyframe_lr = condition_motion, keyframe_lr
        # the video model steps on every n-th batch, on its first `video_batch_size` clips (the keyframe model on all)
        self.video_every_n_steps, self.video_batch_size = max(1, int(video_every_n_steps)), video_batch_size
        self.tokenizers: Optional[FrozenTokenizers] = None

    def attach(self, tokenizers: FrozenTokenizers) -> "DetokenizerModule":
        self.tokenizers = tokenizers
        return self

    def on_fit_start(self) -> None:
        if self.tokenizers is not None:
            self.tokenizers.to(self.device)

    @property
    def video_size(self) -> tuple[int, int]:
        if self.video is not None:
            return self.video.config["height"], self.video.config["width"]
        return tuple(self.keyframe.config["image_size"])

    def on_before_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        if self.keyframe is not None and self.tokenizers is not None and "keyframe" in batch:
            batch["keyframe"] = self.tokenizers.keyframe_pixels(batch["keyframe"])  # on the host, before the copy
        return batch

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        if "frames" not in batch:
            raise MissingArtifactError(
                "the clip shards hold no RGB frames (the detokenizers' target): re-run `videolavit decompose` "
                "with video.frames_height and video.frames_width > 0"
            )
        batch["frames"] = frames_to_unit(batch["frames"], self.video_size)  # [B, T, 3, H, W]
        return batch

    def losses(self, batch: dict, generator: Optional[torch.Generator] = None) -> dict[str, torch.Tensor]:
        frames = batch["frames"]  # [B, T, 3, H, W] in [-1, 1]
        keyframe = frames[:, 0]  # [B, 3, H, W]: the clip starts at its keyframe
        out = {}
        if self.keyframe is not None:
            size = tuple(self.keyframe.config["image_size"])
            target = keyframe if tuple(keyframe.shape[-2:]) == size else F.interpolate(
                keyframe, size=size, mode="bicubic", align_corners=False, antialias=True
            ).clamp(-1, 1)
            cond = self.tokenizers.keyframe_condition(batch["keyframe"])  # [B, N, D]
            out["keyframe_loss"] = self.keyframe.training_loss(target, cond, generator=generator)
        if self.video is not None and self.video_steps_now():
            n = self.video_batch_size or frames.shape[0]
            motion = batch["motion"][:n]  # [B, 2, T, h, w]
            if self.condition_motion == "tokens":
                motion = self.tokenizers.motion_from_tokens(motion)
            out["video_loss"] = self.video.training_loss(frames[:n], keyframe[:n], motion, generator=generator)
        return out

    def video_steps_now(self) -> bool:
        """Whether this batch trains the video model: always in validation or when it is the only model (a
        video-only run, ``detokenizer.models=[video]`` or the video run of ``runs=separate``), else every
        ``video_every_n_steps``-th step (on the other steps its parameters get no gradient, so AdamW leaves them and
        their moments alone)."""
        return not self.training or self.keyframe is None or self.global_step % self.video_every_n_steps == 0

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        losses = self.losses(batch)
        loss = sum(losses.values())
        self.log_dict({f"train/{k}": v for k, v in {"loss": loss, **losses}.items()})
        self.remember_train_loss(loss, **losses)  # the video loss of its last step stays when it skips one
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        # fixed noise per batch, so validation losses of different steps compare the same draws
        generator = torch.Generator(device=self.device).manual_seed(batch_idx)
        losses = self.losses(batch, generator)
        self.log_dict({f"val/{k}": v for k, v in losses.items()}, batch_size=len(batch["key"]))

    def configure_optimizers(self):
        groups = []
        for name, model in (("keyframe", self.keyframe), ("video", self.video)):
            if model is None:
                continue
            lr = float(self.keyframe_lr or self.optim["lr"]) if name == "keyframe" else float(self.optim["lr"])
            named = [(n, p) for n, p in model.named_parameters() if not n.startswith("vae.") and p.requires_grad]
            groups += decay_groups(named, self.optim["weight_decay"], NO_DECAY, lr=lr)
        return adamw_with_cosine(groups, self.optim, self.max_steps)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        # Two independent models: one global norm would let the larger one's gradients shrink the other's steps.
        if not gradient_clip_val:
            return
        for model in (self.keyframe, self.video):
            if model is not None:
                torch.nn.utils.clip_grad_norm_(model.trainable_parameters(), float(gradient_clip_val))
