"""Feature extractors for FVD / CLIPSIM (local I3D and CLIP, else the evaluators stage's corpus proxies), the real
clips they are fed, and the corpus classifier's attribute scores."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from omegaconf import DictConfig

from videolavit.artifacts import artifact, artifact_dir
from videolavit.errors import ConfigError


@dataclass
class Extractors:
    fvd: Any = None  # FrechetVideoDistance with the real clips' features already in
    clipsim: Any = None
    classifier: Any = None
    fvd_key: str = "t2v/fvd_corpus"
    clipsim_key: str = "t2v/clipsim_corpus"
    reasons: dict = field(default_factory=dict)


def build_extractors(cfg: DictConfig, protocol: DictConfig) -> Extractors:
    """FVD, CLIPSIM and the corpus classifier the protocol asks for (the corpus evaluators are optional only when
    both FVD and CLIPSIM use local published weights; attribute accuracy then has no judge)."""
    from videolavit.metrics.clipsim import CLIPSim
    from videolavit.metrics.frechet import FrechetVideoDistance
    from videolavit.metrics.naming import metric_name
    from videolavit.models.evaluators import CorpusEvaluators, load_evaluators

    ev, choice = cfg.evaluate, protocol.extractors
    fvd_kind = ("i3d" if ev.i3d_path else "corpus") if choice.fvd == "auto" else str(choice.fvd)
    clip_kind = ("clip" if ev.clip_path else "corpus") if choice.clipsim == "auto" else str(choice.clipsim)
    for kind, allowed, key in ((fvd_kind, ("i3d", "corpus", "none"), "fvd"),
                               (clip_kind, ("clip", "corpus", "none"), "clipsim")):
        if kind not in allowed:
            raise ConfigError(f"protocol extractors.{key} must be auto or one of {allowed}, got {kind!r}")
    if fvd_kind == "i3d" and not ev.i3d_path:
        raise ConfigError("protocol extractors.fvd=i3d needs evaluate.i3d_path (a local i3d_torchscript.pt)")
    if clip_kind == "clip" and not ev.clip_path:
        raise ConfigError("protocol extractors.clipsim=clip needs evaluate.clip_path (a local CLIP directory)")
    path = Path(ev.evaluators_path) if ev.evaluators_path else artifact_dir(cfg, "evaluators")
    if path.exists() or "corpus" in (fvd_kind, clip_kind):
        corpus = load_evaluators(artifact(cfg, "evaluators", "evaluate.evaluators_path"))
    else:
        corpus = CorpusEvaluators(None, None)
    out = Extractors(classifier=corpus.classifier)
    out.fvd_key, out.clipsim_key = f"t2v/fvd_{fvd_kind}", f"t2v/clipsim_{clip_kind}"
    if fvd_kind == "i3d":
        out.fvd = FrechetVideoDistance(f"i3d:{ev.i3d_path}", reset_real_features=False)
    elif fvd_kind == "corpus" and corpus.classifier is not None:
        out.fvd = FrechetVideoDistance(corpus.classifier, reset_real_features=False)
    elif fvd_kind == "corpus":
        out.reasons[out.fvd_key] = "the evaluators stage trained no video classifier (the corpus has no attribute labels)"
    if clip_kind == "clip":
        out.clipsim = CLIPSim(str(ev.clip_path))
    elif clip_kind == "corpus" and corpus.clip is not None:
        out.clipsim = CLIPSim(corpus.clip)
    elif clip_kind == "corpus":
        out.reasons[out.clipsim_key] = "the evaluators stage trained no CLIP (the corpus has no captions)"
    if out.fvd is not None:
        out.fvd_key = metric_name("t2v/fvd", out.fvd)
    if out.clipsim is not None:
        out.clipsim_key = metric_name("t2v/clipsim", out.clipsim)
    return out


def feed_clips(fvd, clips_dir, split: str, limit: Optional[int], batch: int = 32, real: bool = True) -> int:
    """Stream the split's clip frames (at most ``limit``) into one side of ``fvd``; returns how many went in."""
    from videolavit.data.shards import iter_clip_records

    count, chunk = 0, []
    for record in iter_clip_records(clips_dir, split, fields=("frames",)):
        if limit is not None and count >= limit:
            break
        if "frames" not in record:
            break
        chunk.append(record["frames"])
        count += 1
        if len(chunk) == batch:
            fvd.update(_cthw(np.stack(chunk)), real=real)
            chunk = []
    if chunk:
        fvd.update(_cthw(np.stack(chunk)), real=real)
    return count


def feed_real_clips(ext: Extractors, clips_dir, split: str, limit: Optional[int], batch: int = 32) -> int:
    """Stream the split's clips (at most ``limit``) into the FVD's real side; returns how many went in."""
    if ext.fvd is None:
        return 0
    count = feed_clips(ext.fvd, clips_dir, split, limit, batch)
    if count < 2:
        ext.reasons[ext.fvd_key], ext.fvd = f"FVD needs ≥ 2 real '{split}' clips with frames, found {count}", None
    return count


def _cthw(videos: np.ndarray) -> torch.Tensor:
    """uint8 [N, T, H, W, 3] → [N, 3, T, H, W] (the FVD / classifier layout)."""
    return torch.from_numpy(np.ascontiguousarray(videos)).permute(0, 4, 1, 2, 3)


def fvd_of(ext: Extractors, fake: list[np.ndarray]) -> tuple[Optional[float], str]:
    if ext.fvd is None:
        return None, ext.reasons.get(ext.fvd_key, "no FVD extractor (protocol extractors.fvd=none)")
    if len(fake) < 2:
        return None, f"FVD needs ≥ 2 generated clips, got {len(fake)}"
    ext.fvd.reset()  # keeps the real features (reset_real_features=False)
    for video in fake:
        ext.fvd.update(_cthw(video[None]), real=False)
    return float(ext.fvd.compute()), ""




def read_clips(clips_dir, split: str, limit: Optional[int], fields=("keyframe", "motion", "frames", "meta"),
               stream: bool = False):
    """The first ``limit`` (None: all) clip records of a split, as a list, or as an iterator with ``stream``."""
    from videolavit.data.shards import iter_clip_records

    records = itertools.islice(iter_clip_records(clips_dir, split, fields=fields), limit)
    return records if stream else list(records)


def main_targets(sample, attributes) -> dict[str, str]:
    """What the corpus classifier should read from a clip generated from ``sample``'s caption: its first clip."""
    values = {k: str(v) for k, v in sample.attributes.items() if isinstance(v, (str, int)) and not isinstance(v, bool)}
    if sample.clips:
        values.update({k: str(v) for k, v in sample.clips[0].items() if isinstance(v, (str, int))})
    return {a: values[a] for a in attributes if a in values}


def attribute_scores(ext: Extractors, videos: list[np.ndarray], targets: list[dict], attributes, prefix: str) -> dict:
    if ext.classifier is None or not videos:
        return {}
    known = [a for a in attributes if a in ext.classifier.attributes]
    scores = {}
    for start in range(0, len(videos), 8):
        batch = _cthw(np.stack(videos[start : start + 8]))
        for name, acc in ext.classifier.accuracy(batch, targets[start : start + 8]).items():
            if name in known:
                n = sum(1 for t in targets[start : start + 8] if t.get(name) is not None)
                scores.setdefault(name, []).append((acc, n))
    out = {f"{prefix}_{a}": sum(acc * n for acc, n in v) / sum(n for _, n in v) for a, v in scores.items()}
    if out:
        out[prefix] = float(np.mean(list(out.values())))
    return out
