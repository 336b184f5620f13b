"""Training of the MotionTokenizer VQ-VAE: the LightningModule, its loss, validation metrics and figure."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
import torch.nn.functional as F

from videolavit import tracking
from videolavit.errors import ConfigError
from videolavit.metrics.motion import MotionEPE
from videolavit.models.motion_tokenizer import MotionTokenizer
from videolavit.models.quantizer import code_statistics
from videolavit.training.optim import adamw_with_cosine, decay_groups
from videolavit.training.trainer import ResumableRNG, TrainLoss
from videolavit.video.motion import denormalize_motion

SAMPLE_FRAMES = (1, 6, 11, 13, 18, 23)  # frames drawn in the validation figure (0 and 12 are I-frames)
LOSSES = ("mse", "mse_epe", "epe")


def reconstruction_loss(reconstruction: torch.Tensor, motion: torch.Tensor, kind: str, video_cfg: Any) -> torch.Tensor:
    """``kind`` of ``LOSSES`` between normalized motion [B, 2, T, h, w]: MSE, end-point error in px/frame, or both."""
    if kind not in LOSSES:
        raise ConfigError(f"motion_tokenizer.loss must be one of {LOSSES}, got {kind!r}")
    terms = []
    if kind in ("mse", "mse_epe"):
        terms.append(F.mse_loss(reconstruction, motion))
    if kind in ("epe", "mse_epe"):
        error_px = denormalize_motion(reconstruction - motion, video_cfg, axis=1)
        terms.append(error_px.square().sum(dim=1).add(1e-6).sqrt().mean())  # the eps keeps the gradient finite at 0
    return sum(terms)


class MotionEvaluation:
    """Validation metrics over many batches: reconstruction MSE, EPE in px/frame (and of predicting zero), code usage."""

    def __init__(self, video_cfg: Any, codebook_size: int):
        self.video_cfg, self.codebook_size = video_cfg, codebook_size
        self.epe, self.epe_zero = MotionEPE(), MotionEPE()
        self.squared_error, self.values = 0.0, 0
        self.codes: list[torch.Tensor] = []

    def update(self, motion: torch.Tensor, reconstruction: torch.Tensor, codes: torch.Tensor) -> None:
        motion, reconstruction = motion.detach().float().cpu(), reconstruction.detach().float().cpu()
        self.squared_error += float(F.mse_loss(reconstruction, motion, reduction="sum"))
        self.values += motion.numel()
        target_px = denormalize_motion(motion, self.video_cfg, axis=1)  # [B, 2, T, h, w] px/frame
        self.epe.update(denormalize_motion(reconstruction, self.video_cfg, axis=1), target_px)
        self.epe_zero.update(torch.zeros_like(target_px), target_px)
        self.codes.append(codes.detach().cpu())

    def compute(self, prefix: str = "val") -> dict[str, float]:
        if not self.values:
            return {}
        stats = code_statistics(torch.cat([c.reshape(-1) for c in self.codes]), self.codebook_size)
        epe, zero = float(self.epe.compute()), float(self.epe_zero.compute())
        return {
            f"{prefix}/rec_loss": self.squared_error / self.values,
            f"{prefix}/epe": epe,
            f"{prefix}/epe_zero_baseline": zero,
            f"{prefix}/epe_ratio": epe / zero if zero > 0 else float("nan"),
            f"{prefix}/codebook_usage": stats["codebook_usage"],
            f"{prefix}/perplexity": stats["perplexity"],
        }


class MotionTokenizerModule(TrainLoss, ResumableRNG, L.LightningModule):
    """Reconstruction (``loss``: MSE, EPE or both) + commitment loss; AdamW, cosine warm-up; exact resume with the RNG
    state (dead-code restarts draw from it)."""

    def __init__(
        self,
        model_kwargs: dict,
        optim: dict,
        max_steps: int,
        video_cfg: Any,
        samples_dir: Optional[str] = None,
        loss: str = "mse",
    ):
        super().__init__()
        if loss not in LOSSES:
            raise ConfigError(f"motion_tokenizer.loss must be one of {LOSSES}, got {loss!r}")
        self.model = MotionTokenizer(**model_kwargs)
        self.loss_kind = loss
        self.optim, self.max_steps, self.video_cfg = optim, int(max_steps), video_cfg
        self.samples_dir = Path(samples_dir) if samples_dir else None
        self.evaluation: Optional[MotionEvaluation] = None
        self.sample: Optional[tuple[torch.Tensor, torch.Tensor]] = None

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        motion = batch["motion"]  # [B, 2, T, h, w]
        out = self.model(motion)
        rec_loss = reconstruction_loss(out["reconstruction"], motion, self.loss_kind, self.video_cfg)
        loss = rec_loss + out["vq_loss"]
        self.log_dict({"train/loss": loss, "train/rec_loss": rec_loss, "train/vq_loss": out["vq_loss"]}, prog_bar=False)
        self.remember_train_loss(loss)
        return loss

    def on_validation_epoch_start(self) -> None:
        self.evaluation, self.sample = MotionEvaluation(self.video_cfg, self.model.codebook_size), None

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        motion = batch["motion"]
        out = self.model(motion)
        self.evaluation.update(motion, out["reconstruction"], out["codes"])
        if self.sample is None:
            self.sample = (motion[0].detach().cpu(), out["reconstruction"][0].detach().cpu())

    def on_validation_epoch_end(self) -> None:
        metrics = self.evaluation.compute("val") if self.evaluation else {}
        if metrics:
            self.log_dict(metrics)
            self.log("tokens_per_clip", float(self.model.tokens_per_clip))
        if self.sample is not None and self.samples_dir is not None and not self.trainer.sanity_checking:
            path = self.samples_dir / f"val_step{self.global_step:06d}.png"
            save_motion_figure(path, *self.sample, self.video_cfg)
            tracking.active().log_artifact(path, "samples")

    def configure_optimizers(self):
        groups = decay_groups(self.model.named_parameters(), self.optim["weight_decay"], no_decay=("_pos",))
        return adamw_with_cosine(groups, self.optim, self.max_steps)


def save_motion_figure(path: Path, motion: torch.Tensor, reconstruction: torch.Tensor, video_cfg: Any) -> Path:
    """PNG: input (top) vs reconstructed (bottom) motion of one clip as HSV flow images (hue = direction)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import hsv_to_rgb

    fields = [denormalize_motion(m.float(), video_cfg, axis=0).numpy() for m in (motion, reconstruction)]  # [2, T, h, w]
    frames = [f for f in SAMPLE_FRAMES if f < motion.shape[1]] or [0]
    peak = max(float(np.hypot(f[0], f[1]).max()) for f in fields) or 1.0
    fig, axes = plt.subplots(2, len(frames), figsize=(2.2 * len(frames), 3.6), squeeze=False)
    for row, (name, field) in enumerate(zip(("input", "reconstruction"), fields)):
        for col, t in enumerate(frames):
            dx, dy = field[0, t], field[1, t]
            hue = (np.arctan2(dy, dx) / (2 * np.pi)) % 1.0
            value = np.clip(np.hypot(dx, dy) / peak, 0.0, 1.0)
            hsv = np.stack([hue, value, np.ones_like(hue)], axis=-1)  # [h, w, 3]: saturation = speed
            ax = axes[row][col]
            ax.imshow(hsv_to_rgb(hsv), interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_title(f"{name} t={t}", fontsize=7)
    fig.suptitle(f"motion (px/frame), max {peak:.2f}", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def evaluate(
    model: MotionTokenizer, loader, video_cfg: Any, prefix: str = "val", max_batches: Optional[int] = None
) -> dict[str, float]:
    """Metrics of ``model`` over the batches of ``loader`` (eval mode, no codebook update), on the model's device."""
    evaluation = MotionEvaluation(video_cfg, model.codebook_size)
    device = next(model.parameters()).device
    model.eval()
    with torch.no_grad():
        for i, batch in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            motion = batch["motion"].to(device)
            out = model(motion)
            evaluation.update(motion, out["reconstruction"], out["codes"])
    return evaluation.compute(prefix)
