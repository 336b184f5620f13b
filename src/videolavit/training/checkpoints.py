"""Checkpoints a resume can trust: an integrity record beside each one (sha256, size, the model-shaping config),
checked before Lightning reads it, a checkpoint written when SIGTERM stops training, and fit() with weights_only."""

from __future__ import annotations

import hashlib
import json
import signal
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from videolavit.config import flatten
from videolavit.errors import ConfigError, StageInterrupted

RECORD_SUFFIX = ".integrity.json"

# The config subtrees that decide a stage's parameter shapes: a checkpoint made under other values cannot be resumed.
MODEL_KEYS = {
    "motion_tokenizer": ("motion_tokenizer.model",),
    "visual_tokenizer": ("visual_tokenizer.model",),
    "detokenizer": ("detokenizer.models", "detokenizer.keyframe", "detokenizer.video"),
    "evaluators": ("evaluators.attributes", "evaluators.classifier", "evaluators.clip"),
    "pretrain": ("lm.model.config", "lm.model.pretrained_path"),
    "instruct": ("lm.model.config", "lm.model.pretrained_path"),
}


def record_path(ckpt: str | Path) -> Path:
    p = Path(ckpt)
    return p.with_name(p.name + RECORD_SUFFIX)


def model_config(cfg: DictConfig, stage: str) -> dict[str, Any]:
    """The flattened model-shaping keys of ``stage`` (``MODEL_KEYS``), as JSON-able values."""
    out: dict[str, Any] = {}
    for key in MODEL_KEYS.get(stage, ()):
        value = OmegaConf.select(cfg, key)
        if isinstance(value, DictConfig):
            out.update(flatten(OmegaConf.to_container(value, resolve=True), f"{key}."))
        else:
            out[key] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    return out


def file_digest(path: str | Path) -> tuple[str, int]:
    """sha256 and size of a file, or of a directory's files in name order (a sharded FSDP checkpoint)."""
    p = Path(path)
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    digest, size = hashlib.sha256(), 0
    for f in files:
        if p.is_dir():
            digest.update(str(f.relative_to(p)).encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
                size += len(chunk)
    return digest.hexdigest(), size


def write_record(ckpt: str | Path, cfg: DictConfig, stage: str, step: Optional[int] = None) -> Path:
    """Write ``<ckpt>.integrity.json`` for a checkpoint just saved (atomically: a kill leaves the old one or none)."""
    sha, size = file_digest(ckpt)
    record = {"stage": stage, "sha256": sha, "bytes": size, "global_step": step, "model": model_config(cfg, stage)}
    path = record_path(ckpt)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True, default=str) + "\n")
    tmp.replace(path)
    return path


def verify_checkpoint(ckpt: str | Path, cfg: DictConfig, stage: str) -> dict:
    """The checkpoint's record after checking size, sha256 and model config, else a ConfigError naming the resume key."""
    key, p = f"{stage}.train.resume", Path(ckpt)
    advice = f"delete it (and {record_path(p).name}) or set {key}=never to train from scratch"
    if p.is_file() and p.stat().st_size == 0:
        raise ConfigError(f"{key}: checkpoint '{p}' is empty (0 bytes, a save that never finished): {advice}")
    rec_path = record_path(p)
    if not rec_path.is_file():
        raise ConfigError(
            f"{key}: checkpoint '{p}' has no integrity record '{rec_path.name}' (saved by an older videolavit, or copied "
            f"without it), so it cannot be checked before resuming: {advice}"
        )
    try:
        record = json.loads(rec_path.read_text())
        want_sha, want_size = str(record["sha256"]), int(record["bytes"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{key}: integrity record '{rec_path}' is unreadable ({exc}): {advice}") from None
    sha, size = file_digest(p)
    if size != want_size:
        raise ConfigError(f"{key}: checkpoint '{p}' is {size} bytes, {want_size} when saved (truncated or replaced): {advice}")
    if sha != want_sha:
        raise ConfigError(
            f"{key}: checkpoint '{p}' does not match the sha256 recorded when it was saved (corrupted or modified on "
            f"disk): {advice}"
        )
    saved, now = record.get("model") or {}, json.loads(json.dumps(model_config(cfg, stage), default=str))
    diffs = [f"{k}: checkpoint {saved.get(k)!r}, config {now.get(k)!r}" for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)]
    if diffs:
        raise ConfigError(
            f"{key}: checkpoint '{p}' was trained with other model settings ({'; '.join(diffs)}): set them back to "
            f"resume it, or {advice}"
        )
    return record


def make_checkpoint_callback(cfg: DictConfig, stage: str, dirpath: Path, every_n_steps: int):
    """A ``ModelCheckpoint`` keeping ``last.ckpt`` (and its record) every ``every_n_steps`` and when SIGTERM stops fit."""
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    class IntegrityCheckpoint(ModelCheckpoint):
        def _save_checkpoint(self, trainer, filepath: str) -> None:
            super()._save_checkpoint(trainer, filepath)
            if trainer.is_global_zero:
                write_record(filepath, cfg, stage, trainer.global_step)

        def _remove_checkpoint(self, trainer, filepath: str) -> None:
            super()._remove_checkpoint(trainer, filepath)
            if trainer.is_global_zero:
                record_path(filepath).unlink(missing_ok=True)

        def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
            # Preemption (SIGTERM: docker stop, SLURM's time limit or requeue) saves where training stopped, so that
            # resume=auto continues; any other exception leaves the last periodic checkpoint, which is known good.
            if isinstance(exception, SIGTERMException) and trainer.global_step > 0 and not trainer.sanity_checking:
                if self._last_global_step_saved != trainer.global_step:
                    self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    return IntegrityCheckpoint(
        dirpath=str(dirpath),
        filename="step{step}",
        save_last=True,
        save_top_k=0,
        every_n_train_steps=every_n_steps,
        save_on_train_epoch_end=False,
        enable_version_counter=False,  # last.ckpt is always the newest: never last-v1.ckpt beside a stale last.ckpt
    )


def fit(trainer, module, datamodule, ckpt_path: Optional[str], stage: str) -> None:
    """``trainer.fit`` from a verified checkpoint, read with ``weights_only=True``; SIGTERM → :class:`StageInterrupted`
    (exit code 143 from the CLI) after the checkpoint callback saved ``last.ckpt``."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    key = f"{stage}.train.resume"
    if ckpt_path:
        print(f"{stage}: resuming from {ckpt_path}", flush=True)
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except SIGTERMException:
        last = Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"
        where = f"checkpoint {last} at step {trainer.global_step}" if last.exists() else "no checkpoint written yet"
        raise StageInterrupted(
            signal.SIGTERM, f"{stage}: stopped by SIGTERM at step {trainer.global_step} ({where}); continue with {key}=auto"
        ) from None
    except Exception as exc:
        if ckpt_path and _is_load_error(exc):
            raise ConfigError(
                f"{key}: checkpoint '{ckpt_path}' could not be restored ({type(exc).__name__}: {str(exc)[:300]}): delete "
                f"it or set {key}=never to train from scratch"
            ) from None
        raise


def _is_load_error(exc: BaseException) -> bool:
    import pickle

    text = str(exc)
    return isinstance(exc, (pickle.UnpicklingError, EOFError)) or "Weights only load failed" in text or (
        isinstance(exc, (RuntimeError, KeyError)) and ("loading state_dict" in text or "PytorchStreamReader" in text)
    )
