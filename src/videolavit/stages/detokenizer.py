"""Stage ``detokenizer``: train the keyframe detokenizer g_I and the video detokenizer g_V (paper §3.2, Table 8).

``videolavit detokenizer [key=value ...]`` → ``models/detokenizer/{keyframe,video}/`` and ``metrics/detokenizer.json``.
One LightningModule holds both models and one AdamW (a parameter group each, gradients clipped per model): they share
nothing, so one step on a batch of clips is one step of each. Resume after a kill with ``detokenizer.train.resume=auto``.

- g_I learns to render the clip's keyframe (its first frame, at the detokenizer's size) from the frozen visual
  tokenizer's decoded features of that keyframe's own codes.
- g_V learns to render the clip's frames from its first frame and its motion: the true field
  (``condition_motion=true``) or the motion tokenizer's reconstruction from tokens (``condition_motion=tokens``).

After training, metrics on the first ``eval.clips`` held-out clips (``eval.split``), sampled with the ``eval`` settings:
``val/keyframe_psnr`` / ``val/keyframe_ssim`` (g_I samples against the true keyframe), ``val/video_psnr`` /
``val/video_ssim`` (g_V from the TRUE keyframe and the motion TOKENS, i.e. the tokenizer's reconstruction),
``val/video_psnr_true_motion`` (from the true field), ``val/video_psnr_static_baseline`` (the keyframe repeated) and,
for a ``motion_warp`` model, ``val/video_psnr_warp_baseline`` (the keyframe carried along the true field: what the U-Net
refines, so the gap to ``_true_motion`` is what the diffusion adds).
Video metrics score frames 1…T−1 (frame 0 is the given keyframe: the static baseline would score it as infinite).
All at the detokenizer's resolution. Samples go to MLflow as a GIF and an MP4 (rows: truth, static, motion tokens,
true motion).
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
from omegaconf import DictConfig

from videolavit import tracking
from videolavit.config import section_kwargs
from videolavit.data.datamodules import ClipDataModule
from videolavit.data.shards import iter_clip_records
from videolavit.artifacts import artifact, artifact_dir
from videolavit.errors import ConfigError, MissingArtifactError
from videolavit.evaluation.recon import score_detokenizers
from videolavit.models.motion_tokenizer import MotionTokenizer
from videolavit.models.visual_tokenizer import VisualTokenizer
from videolavit.runner import seed_everything, stage_entry
from videolavit.training.detokenizer import DetokenizerModule, FrozenTokenizers, run_groups
from videolavit.training.required import require_pretrained
from videolavit.training.topology import micro_batch
from videolavit.training.checkpoints import fit as fit_from
from videolavit.training.trainer import make_trainer, resume_checkpoint

STAGE = "detokenizer"
MODELS = ("keyframe", "video")
CONDITION_MOTION = ("true", "tokens")
GIF_SCALE = 4  # tiny frames are a few dozen pixels: drawn 4× larger (nearest) so a viewer sees them


# --------------------------------------------------------------------------------------------------------------------
# Configuration → constructor arguments


def stage_models(cfg: DictConfig) -> tuple[str, ...]:
    models = tuple(str(m) for m in cfg.detokenizer.models)
    unknown = [m for m in models if m not in MODELS]
    if unknown or not models:
        raise ConfigError(f"detokenizer.models must list some of {list(MODELS)}, got {list(models)}")
    return models


def condition_motion(cfg: DictConfig) -> str:
    # `condition_motion=true` on the command line arrives as the YAML boolean
    value = str(cfg.detokenizer.condition_motion).lower()
    if value not in CONDITION_MOTION:
        raise ConfigError(f"detokenizer.condition_motion must be one of {list(CONDITION_MOTION)}, got {value!r}")
    return value


def _unet(section: Any) -> dict:
    return {k: v for k, v in section_kwargs(section).items() if v is not None}


def video_kwargs(cfg: DictConfig) -> dict:
    """VideoDetokenizer arguments; its size follows the clips' frames unless set."""
    v = cfg.detokenizer.video
    kwargs = {k: section_kwargs(v)[k] for k in (
        "sigma_data", "sigma_min", "sigma_max", "p_mean", "p_std", "noise_aug", "fps", "motion_bucket_id",
        "cond_dropout", "decode_chunk_size", "vae_dir", "temporal_context", "gradient_checkpointing", "motion_input",
    )}
    kwargs.update(
        frames=int(cfg.video.clip_frames),
        height=int(v.height or cfg.video.frames_height),
        width=int(v.width or cfg.video.frames_width),
        unet=_unet(v.unet),
        motion_encoder=section_kwargs(v.motion_encoder),
    )
    kwargs.update(
        keyframe_skip=bool(v.keyframe_skip),
        motion_warp=bool(v.motion_warp),
        # the units the clips' motion was normalized with (what a warp along it reads)
        motion_std=[float(x) for x in cfg.video.motion_std],
        motion_rescale=float(cfg.video.motion_rescale),
    )
    return kwargs


def keyframe_kwargs(cfg: DictConfig, cond_dim: int, cond_tokens: int | None = None) -> dict:
    """KeyframeDetokenizer arguments; ``cond_dim`` is the visual tokenizer's decoded-feature width, ``cond_tokens``
    its decoded tokens (None: from visual_tokenizer.model's image and patch size)."""
    k = cfg.detokenizer.keyframe
    kwargs = {name: section_kwargs(k)[name] for name in (
        "unet_dir", "vae_dir", "prediction_type", "beta_schedule", "num_train_timesteps", "cond_dropout",
        "gradient_checkpointing", "pool", "pool_heads",
    )}
    if cond_tokens is None:
        vt = cfg.visual_tokenizer.model
        cond_tokens = (int(vt.image_size or cfg.video.keyframe_size) // int(vt.patch_size)) ** 2
    kwargs["pool_tokens"] = int(cond_tokens)
    size = k.image_size
    if size is None:
        video = video_kwargs(cfg)
        size = [video["height"], video["width"]]
    if len(size) != 2:
        raise ConfigError(f"detokenizer.keyframe.image_size must be [H, W], got {list(size)}")
    kwargs.update(cond_dim=int(cond_dim), image_size=[int(size[0]), int(size[1])], unet=_unet(k.unet))
    return kwargs


def load_tokenizers(cfg: DictConfig, models: tuple[str, ...], need_motion: bool) -> FrozenTokenizers:
    visual = motion = None
    if "keyframe" in models:
        what = "the visual tokenizer (the keyframe detokenizer's condition)"
        path = artifact(cfg, "visual_tokenizer", "detokenizer.visual_tokenizer_path", what=what)
        visual = VisualTokenizer.from_pretrained(path)
    if need_motion:
        what = "the motion tokenizer (motion tokens for the video detokenizer)"
        path = artifact(cfg, "motion_tokenizer", "detokenizer.motion_tokenizer_path", what=what)
        motion = MotionTokenizer.from_pretrained(path)
    return FrozenTokenizers(visual, motion)


# --------------------------------------------------------------------------------------------------------------------
# Evaluation


def read_eval_clips(cfg: DictConfig) -> list[dict]:
    ev = cfg.detokenizer.eval
    records = list(itertools.islice(
        iter_clip_records(cfg.paths.clips, str(ev.split), ("keyframe", "motion", "frames")), int(ev.clips)
    ))
    if not records:
        raise MissingArtifactError(
            f"no '{ev.split}' clips in '{cfg.paths.clips}' to evaluate the detokenizers on. Run `videolavit decompose`."
        )
    if "frames" not in records[0]:
        raise MissingArtifactError(
            f"the '{ev.split}' clips in '{cfg.paths.clips}' hold no RGB frames: re-run `videolavit decompose` with "
            "video.frames_height and video.frames_width > 0"
        )
    return records


def save_samples(out_dir: Path, rendered: dict[str, np.ndarray], count: int, fps: float, step: int) -> list[Path]:
    """The video rows (truth, static, motion tokens, true motion) side by side per clip as a GIF and an MP4, and the
    keyframes (truth above sample) as a PNG."""
    from PIL import Image

    from videolavit.video.io import write_gif

    paths = []
    if "true" in rendered:
        rows = [rendered[k][:count] for k in ("true", "static_baseline", "tokens", "true_motion")]  # [N, T, H, W, 3]
        grid = np.concatenate([np.concatenate(list(row), axis=2) for row in rows], axis=1)  # [T, 4·H, N·W, 3]
        grid = grid.repeat(GIF_SCALE, axis=1).repeat(GIF_SCALE, axis=2)
        paths.append(write_gif(out_dir / f"video_step{step:06d}.gif", grid, fps))
        try:
            from videolavit.video.io import write_video

            paths.append(write_video(out_dir / f"video_step{step:06d}.mp4", list(grid), fps))
        except Exception as exc:  # an FFmpeg build without libx264: the GIF still shows the samples
            print(f"detokenizer: MP4 sample not written ({exc})")
    if "keyframe_true" in rendered:
        true, fake = (rendered[k][:count] for k in ("keyframe_true", "keyframe_sample"))  # [N, H, W, 3]
        grid = np.concatenate([np.concatenate(list(true), axis=1), np.concatenate(list(fake), axis=1)], axis=0)
        path = out_dir / f"keyframe_step{step:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(grid.repeat(GIF_SCALE, axis=0).repeat(GIF_SCALE, axis=1)).save(path)
        paths.append(path)
    return paths


# --------------------------------------------------------------------------------------------------------------------
# The stage


def _check_clips(cfg: DictConfig, records: list[dict], tokenizers: FrozenTokenizers) -> None:
    motion = records[0]["motion"].shape  # (2, T, h, w)
    if motion[1] != int(cfg.video.clip_frames):
        raise ConfigError(f"the clips have {motion[1]} frames of motion, video.clip_frames is {cfg.video.clip_frames}")
    mt = tokenizers.motion
    if mt is not None and tuple(motion[1:]) != (mt.frames, mt.height, mt.width):
        raise ConfigError(
            f"the motion tokenizer takes motion [2, {mt.frames}, {mt.height}, {mt.width}], the clips hold {list(motion)}"
        )


INIT_KEY = "detokenizer.init_from"


def start_folder(init_from: Optional[str], part: str, kwargs: dict) -> Optional[Path]:
    """``init_from/<part>`` (None without init_from); a missing folder is named with its key. Where ``vae_dir`` is
    unset, the model is built with that folder's VAE (the one its weights were trained in)."""
    if not init_from:
        return None
    folder = Path(str(init_from)) / part
    if not (folder / "config.json").is_file():
        raise MissingArtifactError(f"{INIT_KEY}: no {part} detokenizer at '{folder}' (config.json missing); give a "
                                   "folder holding keyframe/ and video/ (the detokenizer stage's output or "
                                   "import-official's DIR/detokenizer)")
    if kwargs.get("vae_dir") is None and (folder / "vae" / "config.json").is_file():
        kwargs["vae_dir"] = str(folder / "vae")
    return folder


def load_start_weights(model, folder: Path) -> int:
    """Copy the saved detokenizer at ``folder`` into ``model`` (its frozen VAE aside); ConfigError naming the first
    tensor whose name or shape differs (another architecture than configured). Returns the tensors copied."""
    saved = type(model).from_pretrained(folder)
    theirs = {k: v for k, v in saved.state_dict().items() if not k.startswith("vae.")}
    own = {k: v for k, v in model.state_dict().items() if not k.startswith("vae.")}
    for name in sorted(set(own) | set(theirs)):
        if name not in theirs or name not in own or own[name].shape != theirs[name].shape:
            got = list(theirs[name].shape) if name in theirs else "absent"
            want = list(own[name].shape) if name in own else "absent"
            raise ConfigError(f"{INIT_KEY}: '{folder}' is another architecture than configured: {name} is {got} "
                              f"there, {want} here (the import's is the paper profile's)")
    model.load_state_dict(theirs, strict=False)
    return len(theirs)


def _run_config(cfg: DictConfig, group: tuple[str, ...]) -> DictConfig:
    """The config of one separate run: ``detokenizer.models`` = the run's models (its checkpoints and their integrity
    record follow it)."""
    from omegaconf import OmegaConf, open_dict

    run_cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    with open_dict(run_cfg):
        run_cfg.detokenizer.models = list(group)
    return run_cfg


def _train_run(cfg: DictConfig, models: tuple[str, ...], tokenizers: FrozenTokenizers, cond_motion: str,
               callbacks: Optional[list]) -> tuple[DetokenizerModule, Any, float]:
    """Build, (resume and) train one run's module over ``models``: (module, trainer, training seconds)."""
    stage_cfg, train_cfg = cfg.detokenizer, cfg.detokenizer.train
    kf_kwargs = (keyframe_kwargs(cfg, tokenizers.visual.target_dim, tokenizers.visual.num_patches)
                 if "keyframe" in models else None)
    v_kwargs = video_kwargs(cfg) if "video" in models else None
    starts = {part: start_folder(stage_cfg.init_from, part, kwargs)
              for part, kwargs in (("keyframe", kf_kwargs), ("video", v_kwargs)) if kwargs is not None}
    module = DetokenizerModule(
        kf_kwargs,
        v_kwargs,
        section_kwargs(stage_cfg.optim),
        int(train_cfg.max_steps),
        cond_motion,
        stage_cfg.keyframe_lr,
        stage_cfg.video.svd_dir,
        int(stage_cfg.video_every_n_steps),
        stage_cfg.video_batch_size,
    ).attach(tokenizers)
    for part, folder in starts.items():
        if folder is not None:
            load_start_weights(getattr(module, part), folder)
    fields = ("keyframe", "motion", "frames")
    datamodule = ClipDataModule(cfg, fields=fields, batch_size=micro_batch(cfg, STAGE))
    trainer = make_trainer(cfg, STAGE, train_cfg, callbacks=callbacks)
    ckpt_path = resume_checkpoint(cfg, STAGE, train_cfg.resume)
    started = time.perf_counter()
    fit_from(trainer, module, datamodule, ckpt_path, STAGE)
    return module, trainer, time.perf_counter() - started


def fit(cfg: DictConfig, callbacks: Optional[list] = None) -> dict[str, float]:
    """Train (or resume) both detokenizers, save them, and return the held-out metrics."""
    require_pretrained(cfg, STAGE)  # before any artifact is read: a missing pretrained part names its key
    seed_everything(int(cfg.seed))
    stage_cfg = cfg.detokenizer
    models = stage_models(cfg)
    cond_motion = condition_motion(cfg)
    # the motion tokenizer is always needed: val/video_psnr is scored from motion tokens
    tokenizers = load_tokenizers(cfg, models, need_motion="video" in models)
    records = read_eval_clips(cfg)
    _check_clips(cfg, records, tokenizers)
    trained, train_seconds = {}, 0.0
    for group in run_groups(models, stage_cfg.runs):  # joint: one run of every model; separate: one run each
        run_cfg = _run_config(cfg, group) if tuple(group) != tuple(models) else cfg
        if trained:
            seed_everything(int(cfg.seed))  # each separate run starts as if it were the first
        module, trainer, seconds = _train_run(run_cfg, group, tokenizers, cond_motion, callbacks)
        trained.update({part: module for part in group})
        train_seconds += seconds

    out_dir = artifact_dir(cfg, STAGE)
    keyframe = trained["keyframe"].keyframe.eval() if "keyframe" in trained else None
    video = trained["video"].video.eval() if "video" in trained else None
    if trainer.is_global_zero:
        for name, model in (("keyframe", keyframe), ("video", video)):
            if model is not None:
                model.save_pretrained(out_dir / name)
    # Lightning moves a module to the CPU when fit ends: score on the device training ran on
    device = trainer.strategy.root_device
    for model in (keyframe, video):
        if model is not None:
            model.to(device)
    tokenizers.to(device)
    started = time.perf_counter()
    metrics, rendered = score_detokenizers(keyframe, video, tokenizers, records, stage_cfg.eval, int(cfg.seed), device)
    eval_seconds = time.perf_counter() - started
    if trainer.is_global_zero:
        samples = save_samples(
            Path(cfg.paths.runs) / STAGE / "samples", rendered, int(stage_cfg.eval.sample_clips), float(cfg.video.fps),
            int(trainer.global_step),
        )
        for path in samples:
            tracking.active().log_artifact(path, "samples")
    for part_module in {id(m): m for m in trained.values()}.values():
        metrics.update(part_module.last_losses)  # separate runs: each its own train/loss; the last run's is kept
    metrics.update(
        {
            "global_step": float(trainer.global_step),
            "train/seconds": train_seconds,
            "val/eval_seconds": eval_seconds,
        }
    )
    for name, model in (("keyframe", keyframe), ("video", video)):
        if model is not None:
            metrics[f"parameters_{name}"] = float(sum(p.numel() for p in model.trainable_parameters()))
    line = [f"detokenizer: step {trainer.global_step} ({train_seconds:.0f} s)"]
    if keyframe is not None:
        line.append(f"val/keyframe_psnr {metrics['val/keyframe_psnr']:.2f} dB")
    if video is not None:
        warp = "val/video_psnr_warp_baseline" in metrics
        line.append(
            f"val/video_psnr {metrics['val/video_psnr']:.2f} dB from motion tokens "
            f"(true motion {metrics['val/video_psnr_true_motion']:.2f}, "
            f"static keyframe {metrics['val/video_psnr_static_baseline']:.2f}"
            + (f", warped keyframe {metrics['val/video_psnr_warp_baseline']:.2f})" if warp else ")")
        )
    print(", ".join(line) + f" on {len(records)} '{stage_cfg.eval.split}' clips ({eval_seconds:.0f} s) → {out_dir}")
    return metrics


@stage_entry(STAGE)
def run(cfg: DictConfig) -> dict[str, float]:
    return fit(cfg)
