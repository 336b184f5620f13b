"""Where each trained artifact lives: ``<paths.models>/<name>`` unless a config key points elsewhere.

``artifact_dir`` is where the producing stage writes it; ``artifact`` is what a consumer reads, or a
MissingArtifactError that names the stage to run and the key that would point at an existing copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from videolavit.errors import MissingArtifactError


@dataclass(frozen=True)
class Artifact:
    directory: str  # under paths.models
    stage: str  # the DVC stage (and CLI subcommand) that writes it
    what: str  # how a message names it


ARTIFACTS = {
    "visual_tokenizer": Artifact("visual_tokenizer", "visual_tokenizer", "the visual tokenizer"),
    "motion_tokenizer": Artifact("motion_tokenizer", "motion_tokenizer", "the motion tokenizer"),
    "detokenizer": Artifact("detokenizer", "detokenizer", "the detokenizers"),
    "evaluators": Artifact("evaluators", "evaluators", "the corpus evaluators"),
    "lm_pretrain": Artifact("lm_pretrain", "pretrain", "the pretrained LM"),
    "lm_instruct": Artifact("lm_instruct", "instruct", "the instruction-tuned LM"),
}


def _spec(name: str) -> Artifact:
    if name not in ARTIFACTS:
        raise KeyError(f"unknown artifact {name!r}; known: {', '.join(ARTIFACTS)}")
    return ARTIFACTS[name]


def _select(cfg, key: str):
    node = cfg
    for part in key.split("."):
        node = getattr(node, part, None) if node is not None else None
    return node


def artifact_dir(cfg, name: str) -> Path:
    """``<paths.models>/<name>``: where the stage that trains ``name`` writes it."""
    return Path(cfg.paths.models) / _spec(name).directory


def artifact(cfg, name: str, keys: str | Sequence[str] = (), what: Optional[str] = None, part: Optional[str] = None) -> Path:
    """The path of trained artifact ``name``: the first of ``keys`` (dotted config keys) that is set, else
    :func:`artifact_dir`; with ``part``, that sub-directory of it. Raises MissingArtifactError if it is not there."""
    spec = _spec(name)
    keys = [keys] if isinstance(keys, str) else list(keys)
    chosen = next((v for v in (_select(cfg, k) for k in keys) if v), None)
    path = Path(chosen) if chosen else artifact_dir(cfg, name)
    if part is not None:
        path = path / part
    if not path.exists():
        where = f" (or set {' or '.join(keys)})" if keys else ""
        raise MissingArtifactError(
            f"{what or spec.what} not found at '{path}'. Run `videolavit {spec.stage}` or `dvc repro {spec.stage}` "
            f"first{where}."
        )
    return path
