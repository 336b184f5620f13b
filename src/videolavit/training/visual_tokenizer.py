"""Training of the LaVIT dynamic visual tokenizer: the LightningModule, validation metrics (with their baselines)
and the kept-patches figure."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import lightning as L
import torch
import torch.nn.functional as F

from videolavit import tracking
from videolavit.models.quantizer import code_statistics
from videolavit.models.vision_encoder import CLIP_MEAN, CLIP_STD, preprocess_images
from videolavit.models.visual_tokenizer import VisualTokenizer
from videolavit.training.optim import adamw_with_cosine, decay_groups
from videolavit.training.trainer import ResumableRNG, TrainLoss

NO_DECAY = ("pos_embed", "token_pos", "queries")  # position tables and learned queries are not weight-decayed


def mean_baseline_loss(model: VisualTokenizer, target: torch.Tensor) -> torch.Tensor:
    """The reconstruction loss of predicting each image's mean, per image [B]: for a pixel target its mean colour
    (every pixel of the image set to it), for a teacher target its mean patch feature. Tokens worth having beat it."""
    if model.teacher is None:
        B, N, _ = target.shape
        colour = target.reshape(B, -1, 3).mean(1, keepdim=True)  # patchify puts the channel last
        prediction = colour.expand(B, target.shape[1] * target.shape[2] // 3, 3).reshape(target.shape)
    else:
        prediction = target.mean(1, keepdim=True).expand_as(target)
    if model.rec_loss == "cosine":
        return (1 - F.cosine_similarity(prediction, target, dim=-1)).mean(1)
    return (prediction - target).pow(2).mean((1, 2))


class VisualEvaluation:
    """Validation metrics over many batches: reconstruction loss (and the mean-colour baseline's), tokens per image
    (mean, spread), code usage."""

    def __init__(self, model: VisualTokenizer):
        self.model = model
        self.codebook_size, self.num_patches = model.codebook_size, model.num_patches
        self.baseline_name = "mean_color" if model.teacher is None else "mean_feature"
        self.rec_sum, self.baseline_sum, self.images = 0.0, 0.0, 0
        self.counts: list[int] = []
        self.codes: list[torch.Tensor] = []

    def update(self, out: dict) -> None:
        batch = int(out["keep_mask"].shape[0])
        self.rec_sum += float(out["rec_loss"]) * batch
        self.baseline_sum += float(mean_baseline_loss(self.model, out["target"].detach()).sum())
        self.images += batch
        self.counts += out["keep_mask"].sum(1).tolist()
        self.codes += [c.detach().cpu() for c in out["codes"]]

    def compute(self, prefix: str = "val") -> dict[str, float]:
        if not self.images:
            return {}
        counts = torch.tensor(self.counts, dtype=torch.float64)
        stats = code_statistics(torch.cat(self.codes), self.codebook_size)
        return {
            f"{prefix}/rec_loss": self.rec_sum / self.images,
            f"{prefix}/rec_loss_{self.baseline_name}_baseline": self.baseline_sum / self.images,
            f"{prefix}/tokens_per_image": float(counts.mean()),
            f"{prefix}/tokens_per_image_std": float(counts.std(unbiased=False)),
            f"{prefix}/tokens_per_image_min": float(counts.min()),
            f"{prefix}/tokens_per_image_max": float(counts.max()),
            f"{prefix}/keep_fraction": float(counts.mean()) / self.num_patches,
            f"{prefix}/codebook_usage": stats["codebook_usage"],
            f"{prefix}/perplexity": stats["perplexity"],
        }


class VisualTokenizerModule(TrainLoss, ResumableRNG, L.LightningModule):
    """Reconstruction + commitment + keep-ratio loss (the model's); AdamW with cosine warm-up; exact resume."""

    def __init__(self, model_kwargs: dict, optim: dict, max_steps: int, samples_dir: Optional[str] = None, sample_images: int = 6):
        super().__init__()
        self.model = VisualTokenizer(**model_kwargs)
        # a frozen teacher (EVA-CLIP: 1 B parameters) is left out of checkpoints; the model reloads it from its path
        self.strict_loading = self.model.teacher is None
        self.optim, self.max_steps = optim, int(max_steps)
        self.samples_dir = Path(samples_dir) if samples_dir else None
        self.sample_images = int(sample_images)
        self.evaluation: Optional[VisualEvaluation] = None
        self.sample: Optional[dict] = None

    def on_before_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        # normalized on the host before the batch moves: no step copies its images back from the GPU to do it
        if "image" in batch and "pixels" not in batch:
            batch["pixels"] = preprocess_images(batch["image"], self.model.image_size)  # [B, 3, S, S]
        return batch

    def _pixels(self, batch: dict) -> torch.Tensor:
        if "pixels" in batch:
            return batch["pixels"].to(self.device)
        # preprocess keeps its constants on the host; the uint8 batch is small, so normalize there
        return preprocess_images(batch["image"].cpu(), self.model.image_size).to(self.device)  # [B, 3, S, S]

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        out = self.model(self._pixels(batch))
        self.log_dict(
            {
                "train/loss": out["loss"], "train/rec_loss": out["rec_loss"], "train/commit_loss": out["commit_loss"],
                "train/keep_loss": out["keep_loss"], "train/keep_fraction": out["keep_fraction"],
                "train/tokens_per_image": out["num_tokens"],
            }
        )
        self.remember_train_loss(out["loss"])
        return out["loss"]

    def on_validation_epoch_start(self) -> None:
        self.evaluation = VisualEvaluation(self.model)
        self.sample = None

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        pixels = self._pixels(batch)
        out = self.model(pixels)
        self.evaluation.update(out)
        if self.sample is None:
            self.sample = _sample(pixels, out, self.sample_images)

    def on_validation_epoch_end(self) -> None:
        metrics = self.evaluation.compute("val") if self.evaluation else {}
        if metrics:
            self.log_dict(metrics, sync_dist=True)
        if self.sample is not None and self.samples_dir is not None and self.trainer.is_global_zero:
            path = save_token_figure(self.samples_dir / f"val_step{self.global_step:06d}.png", self.model, **self.sample)
            tracking.active().log_artifact(path, "samples")

    def configure_optimizers(self):
        named = [(n, p) for n, p in self.model.named_parameters() if not n.startswith("teacher.")]
        return adamw_with_cosine(decay_groups(named, self.optim["weight_decay"], NO_DECAY), self.optim, self.max_steps)

    # Gumbel sampling and dead-code restarts draw from the global RNG: ResumableRNG restores it on resume.
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("state_dict", {})
        for key in [k for k in state if k.startswith("model.teacher.")]:  # frozen, loaded from its own path
            del state[key]
        super().on_save_checkpoint(checkpoint)


def _sample(pixels: torch.Tensor, out: dict, count: int) -> dict:
    k = min(count, pixels.shape[0])
    return {
        "pixels": pixels[:k].detach().float().cpu(),
        "keep": out["keep_mask"][:k].detach().cpu(),
        "reconstruction": out["reconstruction"][:k].detach().float().cpu(),
    }


def _to_rgb(pixels: torch.Tensor) -> torch.Tensor:
    """CLIP-normalized [B, 3, S, S] → [B, S, S, 3] in [0, 1]."""
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (pixels * std + mean).clamp(0, 1).permute(0, 2, 3, 1)


def save_token_figure(
    path: Path, model: VisualTokenizer, pixels: torch.Tensor, keep: torch.Tensor, reconstruction: torch.Tensor
) -> Path:
    """PNG: each image with its dropped patches dimmed (the kept ones became tokens), and, for a pixel target, the
    image the decoder rebuilt from those tokens."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g, p = model.image_size // model.patch_size, model.patch_size
    shade = keep.float().view(-1, g, g).repeat_interleave(p, 1).repeat_interleave(p, 2)  # [B, S, S]
    images = _to_rgb(pixels)  # [B, S, S, 3]
    rows = [("tokens (kept patches)", images * (0.25 + 0.75 * shade[..., None]))]
    if model.teacher is None:  # the target is pixels: show what the tokens decode to
        rows.append(("reconstruction", _to_rgb(model.unpatchify(reconstruction))))
    fig, axes = plt.subplots(len(rows), images.shape[0], figsize=(1.6 * images.shape[0], 1.8 * len(rows)), squeeze=False)
    for r, (name, row) in enumerate(rows):
        for c in range(images.shape[0]):
            ax = axes[r][c]
            ax.imshow(row[c].numpy(), interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_title(f"{int(keep[c].sum())} tokens" if r == 0 else name, fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


@torch.no_grad()
def evaluate(model: VisualTokenizer, loader, prefix: str = "val", seed: int = 0) -> dict[str, float]:
    """Metrics of ``model`` over every batch of ``loader`` (eval mode: deterministic selection, no codebook update),
    plus ``rec_loss_random_codes``: the loss of decoding uniformly random codes of the same lengths (seeded)."""
    evaluation = VisualEvaluation(model)
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    random_sum, images = 0.0, 0
    for batch in loader:
        out = model(model.preprocess(batch["image"]))
        evaluation.update(out)
        codes = [torch.randint(0, model.codebook_size, (len(c),), generator=generator) for c in out["codes"]]
        recon = model.decode_features(codes)
        if model.rec_loss == "cosine":
            loss = (1 - F.cosine_similarity(recon, out["target"], dim=-1)).mean(1)
        else:
            loss = (recon - out["target"]).pow(2).mean((1, 2))
        random_sum, images = random_sum + float(loss.sum()), images + len(codes)
    metrics = evaluation.compute(prefix)
    if images:
        metrics[f"{prefix}/rec_loss_random_codes"] = random_sum / images
    return metrics
