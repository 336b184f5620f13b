"""The trained models behind generation, loaded from their artifacts and checked to agree with each other."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from videolavit.artifacts import artifact
from videolavit.errors import ConfigError


@dataclass
class Models:
    """What a pipeline holds; a part a task does not need may be None."""

    lm: Any = None
    text_tokenizer: Any = None
    vocab: Any = None
    lm_info: dict = field(default_factory=dict)
    visual_tokenizer: Any = None
    motion_tokenizer: Any = None
    keyframe_detokenizer: Any = None
    video_detokenizer: Any = None


def device_of(cfg) -> str:
    import torch

    wants_gpu = str(cfg.compute.accelerator) in ("gpu", "cuda", "auto")
    return "cuda" if wants_gpu and torch.cuda.is_available() else "cpu"


def lm_dir(cfg, instruct: bool) -> Path:
    """``generate.lm_path``, else ``<models>/lm_instruct`` (questions) or ``<models>/lm_pretrain`` (generation)."""
    return artifact(cfg, "lm_instruct" if instruct else "lm_pretrain", "generate.lm_path")


def load_models(cfg, lm_path: Optional[str | Path] = None, instruct: bool = False, tokenizers: bool = True,
                detokenizers: bool = True, device: Optional[str] = None) -> Models:
    """The LM (``lm_path``, else per :func:`lm_dir`) plus the tokenizers and detokenizers asked for, checked to agree."""
    from videolavit.errors import require_path
    from videolavit.models.lm_checkpoint import load_lm_checkpoint, read_lm_vocab

    device = device or device_of(cfg)
    if lm_path is None:
        path = lm_dir(cfg, instruct)
    else:
        stage = "instruct" if instruct else "pretrain"
        path = require_path(lm_path, "the LM", f"Run `videolavit {stage}` first (or set generate.lm_path).")
    model, tokenizer, vocab = load_lm_checkpoint(path, dtype=cfg.lm.model.dtype, device=device)
    models = Models(model, tokenizer, vocab, read_lm_vocab(path)[1])
    if tokenizers:
        _load_tokenizers(cfg, models, device)
    if detokenizers:
        _load_detokenizers(cfg, models, device)
    return models


def _load_tokenizers(cfg, models: Models, device: str) -> None:
    from videolavit.models.motion_tokenizer import MotionTokenizer
    from videolavit.models.visual_tokenizer import VisualTokenizer

    visual = artifact(cfg, "visual_tokenizer", "tokenize.visual_tokenizer_path")
    motion = artifact(cfg, "motion_tokenizer", "tokenize.motion_tokenizer_path")
    models.visual_tokenizer = VisualTokenizer.from_pretrained(visual).to(device).eval()
    models.motion_tokenizer = MotionTokenizer.from_pretrained(motion, map_location=device).eval()
    vocab, vt, mt = models.vocab, models.visual_tokenizer, models.motion_tokenizer
    if (vocab.visual_codes, vocab.motion_codes) != (vt.codebook_size, mt.codebook_size):
        raise ConfigError(
            f"the LM's vocabulary has {vocab.visual_codes} visual and {vocab.motion_codes} motion codes, but the "
            f"tokenizers have {vt.codebook_size} and {mt.codebook_size}: re-run tokenize and pretrain with these tokenizers"
        )
    expected = models.lm_info.get("motion_tokens_per_clip")
    if expected is not None and int(expected) != mt.tokens_per_clip:
        raise ConfigError(
            f"the LM was trained on {expected} motion tokens per clip, the motion tokenizer makes {mt.tokens_per_clip}"
        )


def _load_detokenizers(cfg, models: Models, device: str) -> None:
    from videolavit.models.keyframe_detokenizer import KeyframeDetokenizer
    from videolavit.models.video_detokenizer import VideoDetokenizer

    key = "generate.detokenizer_path"
    root = artifact(cfg, "detokenizer", key)
    for part in ("keyframe", "video"):
        artifact(cfg, "detokenizer", key, what=f"the {part} detokenizer", part=part)
    models.keyframe_detokenizer = KeyframeDetokenizer.from_pretrained(root / "keyframe").to(device).eval()
    models.video_detokenizer = VideoDetokenizer.from_pretrained(root / "video").to(device).eval()
    vt, kf = models.visual_tokenizer, models.keyframe_detokenizer
    if vt is not None and kf.config["cond_dim"] != vt.target_dim:
        raise ConfigError(
            f"the keyframe detokenizer takes {kf.config['cond_dim']}-d features but the visual tokenizer decodes "
            f"{vt.target_dim}-d ones: re-run `videolavit detokenizer` with this visual tokenizer"
        )
    mt, vd = models.motion_tokenizer, models.video_detokenizer
    if mt is not None and mt.frames > vd.config["frames"]:
        raise ConfigError(
            f"the motion tokenizer's clips have {mt.frames} frames, the video detokenizer renders {vd.config['frames']}"
        )
