"""Stage ``visual_tokenizer``: train the LaVIT dynamic visual tokenizer on the clips' keyframes and the corpus images.

``videolavit visual_tokenizer [key=value ...]`` → ``models/visual_tokenizer/`` (safetensors + config.json) and
``metrics/visual_tokenizer.json``. Resume after a kill with ``visual_tokenizer.train.resume=auto``. With
``visual_tokenizer.model.teacher_path`` set, the target is that frozen local vision model's patch features (LaVIT
reconstructs EVA-CLIP's); otherwise the pixels of each patch. Validation uses the deterministic inference selection,
so ``val/tokens_per_image`` is the count the tokenize stage will produce.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from omegaconf import DictConfig

from videolavit.artifacts import artifact_dir
from videolavit.config import section_kwargs
from videolavit.data.datamodules import ImageDataModule
from videolavit.models.blocks import count_parameters
from videolavit.runner import seed_everything, stage_entry
from videolavit.training.callbacks import SampleThroughput
from videolavit.training.required import require_pretrained
from videolavit.training.topology import micro_batch
from videolavit.training.checkpoints import fit as fit_from
from videolavit.training.trainer import make_trainer, resume_checkpoint
from videolavit.training.visual_tokenizer import VisualTokenizerModule, evaluate

STAGE = "visual_tokenizer"


def model_kwargs(cfg: DictConfig) -> dict:
    """The model section as constructor arguments; ``image_size`` null follows ``video.keyframe_size``."""
    kwargs = section_kwargs(cfg.visual_tokenizer.model)
    if kwargs.get("image_size") is None:
        kwargs["image_size"] = int(cfg.video.keyframe_size)
    return kwargs


def fit(cfg: DictConfig, callbacks: Optional[list] = None) -> dict[str, float]:
    """Train (or resume), save the model, and return the final metrics. ``run`` wraps this in an MLflow run."""
    require_pretrained(cfg, STAGE)  # before any artifact is read: a missing pretrained part names its key
    seed_everything(int(cfg.seed))
    stage_cfg, train_cfg = cfg.visual_tokenizer, cfg.visual_tokenizer.train
    kwargs = model_kwargs(cfg)
    datamodule = ImageDataModule(
        cfg, kwargs["image_size"], micro_batch(cfg, STAGE), keyframes=bool(stage_cfg.keyframes), images=bool(stage_cfg.images)
    )
    runs_dir = Path(cfg.paths.runs) / STAGE
    module = VisualTokenizerModule(
        kwargs, section_kwargs(stage_cfg.optim), int(train_cfg.max_steps), str(runs_dir / "samples"), int(stage_cfg.sample_images)
    )
    throughput = SampleThroughput()
    trainer = make_trainer(cfg, STAGE, train_cfg, callbacks=[throughput, *(callbacks or [])])
    fit_from(trainer, module, datamodule, resume_checkpoint(cfg, STAGE, train_cfg.resume), STAGE)

    model = module.model.cpu().eval()
    out_dir = artifact_dir(cfg, STAGE)
    if trainer.is_global_zero:
        model.save_pretrained(out_dir)
    # saved from the CPU (where Lightning leaves the module after fit); scored on the device training ran on
    metrics = evaluate(model.to(trainer.strategy.root_device), datamodule.val_dataloader(), "val")
    metrics.update(
        {
            "global_step": float(trainer.global_step),
            "train/loss": module.last_train_loss,
            "train/images_per_second": throughput.per_second,
            "num_patches": float(model.num_patches),
            "parameters_trainable": float(sum(p.numel() for p in model.trainable_parameters())),
            "parameters_teacher": float(count_parameters(model.teacher)),
        }
    )
    print(
        f"visual_tokenizer: step {trainer.global_step}, {throughput.per_second:.1f} images/s, "
        f"val/rec_loss {metrics.get('val/rec_loss', float('nan')):.4f} (mean baseline "
        f"{metrics.get('val/rec_loss_mean_color_baseline', metrics.get('val/rec_loss_mean_feature_baseline', float('nan'))):.4f}, "
        f"random codes {metrics.get('val/rec_loss_random_codes', float('nan')):.4f}), "
        f"{metrics.get('val/tokens_per_image', float('nan')):.1f} ± {metrics.get('val/tokens_per_image_std', float('nan')):.1f} "
        f"tokens of {model.num_patches} patches, codebook usage {metrics.get('val/codebook_usage', float('nan')):.2f} → {out_dir}"
    )
    return metrics


@stage_entry(STAGE)
def run(cfg: DictConfig) -> dict[str, float]:
    return fit(cfg)
