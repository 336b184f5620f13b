"""Pretrained parts a stage needs before it trains: a missing one is a ConfigError naming the key and the fix, never
a silent random or pixel-space start. ``<section>.from_scratch: true`` opts out (the tiny profile does, on purpose);
``videolavit plan`` lists the same problems under ``missing_before_training``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from videolavit.errors import ConfigError


def _unset(node: Any, key: str) -> bool:
    from omegaconf import OmegaConf

    return OmegaConf.is_missing(node, key) or getattr(node, key) in (None, "", "???")


def _detokenizer_parts(stage_cfg: Any) -> list[str]:
    part = getattr(getattr(stage_cfg, "train", None), "part", None)
    if part in ("keyframe", "video"):
        return [part]
    return [str(m) for m in stage_cfg.models]


def missing_before_training(cfg: Any, stage: str, check_files: bool = True) -> list[str]:
    """One sentence per missing pretrained part of ``stage`` (key, why, fix); empty when the stage can start."""
    out: list[str] = []
    if stage in ("pretrain",):
        m = cfg.lm.model
        if not bool(m.from_scratch) and _unset(m, "pretrained_path"):
            out.append("lm.model.pretrained_path: no LM checkpoint, so a random LM would be trained; set it to a local "
                       "transformers Llama-2-7B (or LaVIT-7B) directory, or lm.model.from_scratch=true")
        elif check_files and not _unset(m, "pretrained_path"):
            mismatch = text_tokenizer_mismatch(cfg)
            if mismatch:
                out.append(mismatch)
    if stage == "visual_tokenizer":
        vt = cfg.visual_tokenizer
        if not bool(vt.from_scratch) and _unset(vt.model, "teacher_path"):
            out.append("visual_tokenizer.model.teacher_path: no teacher, so the ViT would learn from pixels from "
                       "scratch; set it to a local EVA-CLIP / CLIP vision model directory, or "
                       "visual_tokenizer.from_scratch=true")
    if stage == "detokenizer":
        d = cfg.detokenizer
        # detokenizer.init_from: the start weights (and VAEs) come from it; the stage checks its folders
        parts = [] if not _unset(d, "init_from") else _detokenizer_parts(d)
        if "keyframe" in parts and not bool(d.from_scratch) and _unset(d.keyframe, "vae_dir"):
            out.append("detokenizer.keyframe.vae_dir: no VAE, so the keyframe U-Net would diffuse pixels; set it to a "
                       "local diffusers AutoencoderKL (SDXL's vae/), or detokenizer.from_scratch=true")
        if "video" in parts:
            if _unset(d.video, "vae_dir") and (not bool(d.from_scratch) or not _unset(d.video, "svd_dir")):
                why = "SVD's U-Net works in its VAE's latent space" if not _unset(d.video, "svd_dir") else (
                    "no VAE, so the video U-Net would diffuse 24 frames of pixels")
                out.append(f"detokenizer.video.vae_dir: {why}; set it to SVD's vae/ folder "
                           "(AutoencoderKLTemporalDecoder), or detokenizer.from_scratch=true")
            if not bool(d.from_scratch) and _unset(d.video, "svd_dir"):
                out.append("detokenizer.video.svd_dir: no SVD weights, so a random 1.5 B U-Net would be trained; set it "
                           "to a local SVD img2vid(-xt) diffusers folder, or detokenizer.from_scratch=true")
    return out


def text_tokenizer_mismatch(cfg: Any) -> str | None:
    """A sentence when the token shards' text tokenizer is not the one saved with ``lm.model.pretrained_path``."""
    shards = Path(cfg.paths.tokens) / "text_tokenizer"
    lm_dir = Path(str(cfg.lm.model.pretrained_path))
    if not shards.is_dir() or not any((lm_dir / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        return None  # nothing to compare yet (tokenize not run, or the checkpoint carries no tokenizer)
    from videolavit.data.text_tokenizer import load_text_tokenizer

    ours, theirs = load_text_tokenizer(shards).get_vocab(), load_text_tokenizer(lm_dir).get_vocab()
    if ours == theirs:
        return None
    differ = sorted(set(ours.items()) ^ set(theirs.items()))[:3]
    return (f"tokenize.text_tokenizer_path: the token shards in {cfg.paths.tokens} were made with a text tokenizer "
            f"that is not lm.model.pretrained_path's ({len(ours)} vs {len(theirs)} tokens; e.g. {differ}); set "
            f"tokenize.text_tokenizer_path={lm_dir} and rerun `videolavit tokenize`")


def require_pretrained(cfg: Any, stage: str) -> None:
    """Raise the first of :func:`missing_before_training` (all of them, one per line) as a ConfigError."""
    missing = missing_before_training(cfg, stage)
    if missing:
        raise ConfigError(f"{stage} cannot start:\n  " + "\n  ".join(missing))
