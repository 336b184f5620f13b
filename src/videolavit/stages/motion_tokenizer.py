"""Stage ``motion_tokenizer``: train the MotionTokenizer VQ-VAE on the clips' motion fields (paper §3.1, Table 8).

``videolavit motion_tokenizer [key=value ...]`` → ``models/motion_tokenizer/`` (safetensors + config.json) and
``metrics/motion_tokenizer.json``. Resume after a kill with ``motion_tokenizer.train.resume=auto``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from omegaconf import DictConfig

from videolavit.artifacts import artifact_dir
from videolavit.config import section_kwargs
from videolavit.data.datamodules import ClipDataModule
from videolavit.errors import ConfigError
from videolavit.evaluation.probe import probe_motion_codes
from videolavit.models.motion_tokenizer import load_weights_from
from videolavit.runner import seed_everything, stage_entry
from videolavit.training.callbacks import SampleThroughput
from videolavit.training.motion_tokenizer import MotionTokenizerModule, evaluate
from videolavit.training.topology import micro_batch
from videolavit.training.checkpoints import fit as fit_from
from videolavit.training.trainer import make_trainer, resume_checkpoint

STAGE = "motion_tokenizer"


def _check_config(cfg: DictConfig) -> dict:
    model = section_kwargs(cfg.motion_tokenizer.model)
    expected = {"frames": cfg.video.clip_frames, "height": cfg.video.motion_height, "width": cfg.video.motion_width}
    for key, value in expected.items():
        if int(model[key]) != int(value):
            source = {"frames": "video.clip_frames", "height": "video.motion_height", "width": "video.motion_width"}[key]
            raise ConfigError(f"motion_tokenizer.model.{key}={model[key]} does not match {source}={value} (the clips' motion)")
    return model


def fit(cfg: DictConfig, callbacks: Optional[list] = None) -> dict[str, float]:
    """Train (or resume), save the model, and return the final metrics. ``run`` wraps this in an MLflow run."""
    seed_everything(int(cfg.seed))
    stage_cfg = cfg.motion_tokenizer
    model_kwargs = _check_config(cfg)
    train_cfg = stage_cfg.train
    datamodule = ClipDataModule(cfg, fields=("motion",), batch_size=micro_batch(cfg, STAGE))
    for split in ("train", "val"):
        datamodule.shard_paths(split)  # fail before building anything when decompose has not run
    runs_dir = Path(cfg.paths.runs) / STAGE
    module = MotionTokenizerModule(
        model_kwargs, section_kwargs(stage_cfg.optim), int(train_cfg.max_steps), cfg.video, str(runs_dir / "samples"),
        loss=str(stage_cfg.loss),
    )
    if stage_cfg.init_from:
        load_weights_from(module.model, stage_cfg.init_from)
    throughput = SampleThroughput()
    trainer = make_trainer(cfg, STAGE, train_cfg, callbacks=[throughput, *(callbacks or [])])
    ckpt_path = resume_checkpoint(cfg, STAGE, train_cfg.resume)
    fit_from(trainer, module, datamodule, ckpt_path, STAGE)

    model = module.model.eval()
    out_dir = artifact_dir(cfg, STAGE)
    if trainer.is_global_zero:
        model.save_pretrained(out_dir)
    val_batches = int(train_cfg.val_batches) if train_cfg.val_batches is not None else None
    metrics = evaluate(model, datamodule.val_dataloader(), cfg.video, "val", val_batches)
    # what a linear reader of the codes gets of each clip's direction / speed (train clips → val clips)
    metrics.update(probe_motion_codes(model, cfg.paths.clips, cfg.paths.corpus))
    metrics.update(
        {
            "tokens_per_clip": float(model.tokens_per_clip),
            "global_step": float(trainer.global_step),
            "train/loss": module.last_train_loss,
            "train/clips_per_second": throughput.per_second,
        }
    )
    print(
        f"motion_tokenizer: step {trainer.global_step}, {throughput.per_second:.1f} clips/s, "
        f"val/epe {metrics.get('val/epe', float('nan')):.4f} px/frame "
        f"(zero motion {metrics.get('val/epe_zero_baseline', float('nan')):.4f}), "
        f"codebook usage {metrics.get('val/codebook_usage', float('nan')):.2f} → {out_dir}"
    )
    if "probe/direction_acc" in metrics:
        print(f"  linear probe of the codes on val clips: direction {metrics['probe/direction_acc']:.3f} "
              f"(chance {metrics['probe/direction_chance']:.3f}, prior {metrics['probe/direction_prior']:.3f}), "
              f"speed {metrics.get('probe/speed_acc', float('nan')):.3f} "
              f"(chance {metrics.get('probe/speed_chance', float('nan')):.3f}, "
              f"prior {metrics.get('probe/speed_prior', float('nan')):.3f})")
    return metrics


@stage_entry(STAGE)
def run(cfg: DictConfig) -> dict[str, float]:
    return fit(cfg)
