"""Stage ``evaluators``: train the corpus video classifier (FVD features, attribute accuracy) and the corpus CLIP.

``videolavit evaluators`` reads the clip shards' ``frames`` (uint8 [24, Hf, Wf, 3]) and the corpus manifest's
attributes (per video: shape, color, size, background, pan; per clip: direction, speed) and captions, trains both
models in one Lightning run, and saves them to ``<paths.models>/evaluators/{classifier,clip}/``. Validation reports
attribute accuracy next to its chance level (always answering the most frequent training value) and caption ↔ video
retrieval top-1 next to its chance level, so a reader can judge how much the proxies see.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig

from videolavit.artifacts import artifact_dir
from videolavit.config import section_kwargs
from videolavit.data.datamodules import ClipDataModule
from videolavit.errors import ConfigError, MissingArtifactError, require_path
from videolavit.evaluation.extractors import feed_clips
from videolavit.metrics.frechet import FrechetVideoDistance
from videolavit.models.evaluators import CorpusEvaluators, VideoAttributeClassifier, WordTokenizer
from videolavit.runner import stage_entry
from videolavit.training.evaluators import ClipLabels, EvaluatorsModule, evaluate
from videolavit.training.checkpoints import fit as fit_from
from videolavit.training.trainer import make_trainer, resume_checkpoint

STAGE = "evaluators"


def real_fvd(classifier: VideoAttributeClassifier, clips_dir: str | Path, batch_size: int = 32, max_clips: int = 2048) -> float:
    """FVD between train and val clips (both real, ≤ ``max_clips`` each): the floor to read ``t2v/fvd_corpus`` against.

    NaN when a split has fewer than 2 clips (no covariance).
    """
    fvd = FrechetVideoDistance(classifier)
    for split, real in (("train", True), ("val", False)):
        feed_clips(fvd, clips_dir, split, max_clips, batch_size, real=real)
    return float(fvd.compute()) if min(int(fvd.real_n), int(fvd.fake_n)) >= 2 else float("nan")


def _model_kwargs(cfg: DictConfig, labels: ClipLabels) -> tuple[Optional[dict], Optional[dict]]:
    stage_cfg = cfg.evaluators
    frame_size = [int(cfg.video.frames_height), int(cfg.video.frames_width)]
    if not all(frame_size):
        raise ConfigError("the evaluators train on clip frames: set video.frames_height/frames_width and re-run decompose")
    classifier = section_kwargs(stage_cfg.classifier)
    classifier["input_size"] = classifier["input_size"] or frame_size
    clip = section_kwargs(stage_cfg.clip)
    clip["image_size"] = clip["image_size"] or frame_size
    min_count = clip.pop("min_word_count")
    clip.pop("eval_frames")
    captions = labels.captions("train")
    classifier_kwargs = {"attributes": labels.attributes, **classifier} if labels.attributes else None
    clip_kwargs = {"words": WordTokenizer.build(captions, min_count).words, **clip} if captions else None
    if classifier_kwargs is None:
        warnings.warn("the corpus records no attribute labels: the evaluators stage trains no video classifier (no corpus FVD)")
    if clip_kwargs is None:
        warnings.warn("the corpus has no training captions: the evaluators stage trains no CLIP (no corpus CLIPSIM)")
    if classifier_kwargs is None and clip_kwargs is None:
        raise MissingArtifactError(
            f"the corpus in '{cfg.paths.corpus}' has neither attribute labels nor captions, so there is nothing to train "
            "evaluators on; configure evaluate.i3d_path / evaluate.clip_path instead"
        )
    return classifier_kwargs, clip_kwargs


def fit(cfg: DictConfig, callbacks: Optional[list] = None) -> dict[str, float]:
    """Train (or resume), save both models, return the final validation metrics."""
    stage_cfg, train_cfg = cfg.evaluators, cfg.evaluators.train
    corpus = require_path(cfg.paths.corpus, "the corpus manifest", "Run `videolavit corpus` first.")
    labels = ClipLabels(corpus, stage_cfg.attributes, float(cfg.video.fps), int(cfg.video.clip_frames))
    classifier_kwargs, clip_kwargs = _model_kwargs(cfg, labels)
    datamodule = ClipDataModule(cfg, fields=("frames", "meta"), batch_size=int(train_cfg.batch_size))
    module = EvaluatorsModule(
        classifier_kwargs, clip_kwargs, section_kwargs(stage_cfg.optim), int(train_cfg.max_steps), labels,
        int(stage_cfg.clip.eval_frames),
    )
    trainer = make_trainer(cfg, STAGE, train_cfg, callbacks=callbacks)
    fit_from(trainer, module, datamodule, resume_checkpoint(cfg, STAGE, train_cfg.resume), STAGE)

    module = module.cpu().eval()
    evaluators = CorpusEvaluators(module.classifier, module.clip)
    out_dir = evaluators.save_pretrained(artifact_dir(cfg, STAGE))
    # scored on the device training ran on (Lightning leaves the module on the CPU after fit); FVD stays on the host
    metrics = evaluate(module.to(trainer.strategy.root_device), datamodule.val_dataloader(), "val")
    module = module.cpu()
    if module.classifier is not None:
        metrics["val/fvd_corpus_train_vs_val"] = real_fvd(module.classifier, cfg.paths.clips, int(train_cfg.batch_size))
    metrics.update(
        {
            "global_step": float(trainer.global_step),
            "train/loss": module.last_train_loss,
            "attributes": float(len(labels.attributes)),
        }
    )
    summary = ", ".join(
        f"{name} {metrics[f'val/attr_acc_{name}']:.2f} (chance {metrics[f'val/attr_chance_{name}']:.2f})"
        for name in labels.attributes if f"val/attr_acc_{name}" in metrics
    )
    top1, chance = (metrics.get(f"val/clip_retrieval_{k}", float("nan")) for k in ("top1", "chance"))
    print(
        f"evaluators: step {trainer.global_step}; attribute accuracy: {summary or 'n/a'}; "
        f"retrieval top-1 {top1:.2f} (chance {chance:.2f}) → {out_dir}"
    )
    return metrics


@stage_entry(STAGE)
def run(cfg: DictConfig) -> dict[str, float]:
    return fit(cfg)
