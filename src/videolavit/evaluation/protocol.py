"""Evaluation protocols (``conf/eval/<name>.yaml``): the pinned splits, counts, decoding and extractors, and the
results accumulator whose null values carry a reason."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
from omegaconf import DictConfig, OmegaConf

from videolavit.config import CONF_DIR, parse_overrides
from videolavit.errors import ConfigError

NO_MOTION = "ablation_no_motion/"
QA_TYPES = ("appearance", "motion", "temporal")


@dataclass
class QAProtocol:
    split: str = "test"
    max_questions: Optional[int] = None  # per input condition, stratified by question type
    batch_size: int = 16
    max_new_tokens: int = 8
    no_motion_ablation: bool = True


@dataclass
class T2VProtocol:
    split: str = "test"
    samples: Optional[int] = 4  # captions (one per video, seeded choice); None: every video of the split
    real_clips: Optional[int] = None
    attributes: list = field(default_factory=lambda: ["shape", "color", "direction"])
    save_samples: int = 4
    no_motion_ablation: bool = False
    token_roundtrip: bool = False  # score the real clips rendered from their own tokens too (t2v/attribute_acc_tokens)


@dataclass
class ReconProtocol:
    split: str = "test"
    motion_clips: Optional[int] = None
    video_clips: int = 2
    keyframes: int = 4


@dataclass
class ExtractorProtocol:
    fvd: str = "auto"  # auto | i3d | corpus | none
    clipsim: str = "auto"  # auto | clip | corpus | none


@dataclass
class SamplingProtocol:
    """Pinned decoding; None keeps the config's value (``lm.generate.*`` for the LM, ``generate.*`` for pixels)."""

    temperature: Optional[float] = None
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    guidance_scale: Optional[float] = None
    motion_temperature: Optional[float] = None
    motion_guidance_scale: Optional[float] = None
    image_tokens: Optional[list] = None
    keyframe_steps: Optional[int] = None
    keyframe_guidance: Optional[float] = None
    video_steps: Optional[int] = None
    video_guidance: Optional[float] = None
    noise_constraint: Optional[str] = None
    seed: Optional[int] = None


@dataclass
class EvalProtocol:
    name: str = "???"
    version: int = 1
    description: str = ""
    qa: QAProtocol = field(default_factory=QAProtocol)
    t2v: T2VProtocol = field(default_factory=T2VProtocol)
    recon: ReconProtocol = field(default_factory=ReconProtocol)
    extractors: ExtractorProtocol = field(default_factory=ExtractorProtocol)
    sampling: SamplingProtocol = field(default_factory=SamplingProtocol)


LM_SAMPLING = (
    "temperature", "top_k", "top_p", "guidance_scale", "motion_temperature", "motion_guidance_scale", "image_tokens",
)  # the protocol keys that pin lm.generate; the others pin generate


def load_protocol(name: str, overrides=()) -> tuple[DictConfig, str]:
    """The protocol (validated against :class:`EvalProtocol`) and its label ``name@version`` (``+modified``)."""
    path = Path(name) if str(name).endswith((".yaml", ".yml")) else CONF_DIR / "eval" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (CONF_DIR / "eval").glob("*.yaml"))
        raise ConfigError(f"evaluate.protocol '{name}': no file {path} (shipped protocols: {', '.join(known)})")
    schema = OmegaConf.structured(EvalProtocol)
    try:
        protocol = OmegaConf.merge(schema, OmegaConf.load(path))
        if overrides:
            protocol = OmegaConf.merge(protocol, parse_overrides(overrides))
    except ConfigError:
        raise
    except Exception as exc:  # an unknown key or a wrong type
        raise ConfigError(f"evaluation protocol {path}: {exc}") from None
    if protocol.name == "???":
        raise ConfigError(f"evaluation protocol {path} has no name")
    return protocol, f"{protocol.name}@{protocol.version}" + ("+modified" if overrides else "")


def with_sampling(cfg: DictConfig, sampling: DictConfig) -> DictConfig:
    """A copy of ``cfg`` whose lm.generate / generate keys take the protocol's pinned values."""
    pinned = {k: v for k, v in OmegaConf.to_container(sampling).items() if v is not None}
    lm = {k: v for k, v in pinned.items() if k in LM_SAMPLING}
    pixels = {k: v for k, v in pinned.items() if k not in LM_SAMPLING}
    return OmegaConf.merge(cfg, {"lm": {"generate": lm}, "generate": pixels})


def sampling_seed(cfg: DictConfig) -> int:
    """The protocol's pinned seed (generate.seed after :func:`with_sampling`), else the top-level seed."""
    return int(cfg.seed if cfg.generate.seed is None else cfg.generate.seed)


class Results:
    """Metrics plus a reason for each one that is null."""

    def __init__(self):
        self.metrics: dict[str, Any] = {}
        self.notes: dict[str, str] = {}

    def set(self, key: str, value: Optional[float], reason: str = "") -> None:
        value = None if value is None else float(value)
        self.metrics[key] = value
        if value is None or not np.isfinite(value):
            self.notes[key] = reason or "not finite"

    def update(self, values: dict) -> None:
        for key, value in values.items():
            self.set(key, value)

    def missing(self, keys, reason: str) -> None:
        for key in keys:
            if self.metrics.get(key) is None:
                self.set(key, None, reason)
