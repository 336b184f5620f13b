"""Stage ``evaluate``: every trained model under one versioned protocol (``conf/eval/<evaluate.protocol>.yaml``).

``videolavit evaluate`` writes ``metrics/evaluate.json`` and one MLflow run (generated clips as MP4 + GIF artifacts):
- ``qa/*``: zero-shot QA of the instruction-tuned LM on the protocol split, greedy, EXACT MATCH after normalization
  (``qa/metric`` says so; NOT comparable with the GPT-3.5-judged accuracy of the paper's Table 2), per question type,
  beside ``qa/chance_<type>`` (a uniform guess within the answer's family) and ``qa/prior_<type>`` (the most frequent
  training answer: the best a media-blind model can do). ``ablation_no_motion/qa/*``: the same video questions with
  ``frames_media`` (uniformly sampled frames as images, no motion tokens), as the paper's Table 6 "w/o motion".
- ``t2v/*``: clips generated from the split's captions, scored by FVD and CLIPSIM whose key names the feature extractor
  (``_i3d`` / ``_clip`` with local weights, else ``_corpus``: the evaluators stage's proxies), and by the corpus
  classifier's reading of their shape, color and direction (``t2v/attribute_acc*``, next to chance and real clips).
- ``recon/*``: motion tokenizer round trip (EPE in px/frame at the encode size, beside predicting zero motion);
  video detokenizer re-rendering clips from their first frame + tokenized motion (PSNR/SSIM over frames 2…T, beside
  repeating the first frame); keyframe detokenizer re-rendering keyframes from their visual tokens.
- ``tokens/*``: motion tokens per clip (N, paper Table 7) and the token saving measured by the tokenize stage.
A value that cannot be computed is null, and ``notes`` in the JSON says why. A run whose motion tokenizer grid differs
from the profile's is tagged ``videolavit.ablation=tokens_<N>`` (the report's Table 7 groups runs by N).
"""

from __future__ import annotations

import itertools
import json
import random
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from videolavit import tracking
from videolavit.config import CONF_DIR, parse_overrides
from videolavit.errors import ConfigError
from videolavit.stages.common import require_path, stage_entry

STAGE = "evaluate"
NO_MOTION = "ablation_no_motion/"
QA_TYPES = ("appearance", "motion", "temporal")
REQUIRED = (
    "qa/video_acc", *(f"qa/video_acc_{t}" for t in QA_TYPES), "qa/image_acc", *(f"qa/chance_{t}" for t in QA_TYPES),
    f"{NO_MOTION}qa/video_acc", *(f"{NO_MOTION}qa/video_acc_{t}" for t in QA_TYPES),
    "t2v/attribute_acc", "t2v/attribute_acc_direction", "recon/motion_epe", "recon/video_psnr",
    "recon/video_psnr_static_baseline", "tokens/saving", "tokens/motion_per_clip",
)  # plus t2v/fvd_<extractor> and t2v/clipsim_<extractor>  # fmt: skip


# ---- the protocol ---------------------------------------------------------------------------------------------------


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
)  # the protocol keys that pin lm.generate; the others pin generate  # fmt: skip


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


def _seed(cfg: DictConfig) -> int:
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


# ---- QA -------------------------------------------------------------------------------------------------------------


def _qa_items(records: list[dict], max_questions: Optional[int], seed: int) -> list[dict]:
    items = [{"media_id": r["id"], "kind": r["kind"], "question": f"<{r['kind']}>\n{q}", "answer": a, "type": t or "other"}
             for r in records for q, a, t in r["qa"]]  # fmt: skip
    if max_questions is None or len(items) <= max_questions:
        return items
    groups: dict[tuple, list] = defaultdict(list)
    for item in items:
        groups[(item["kind"], item["type"])].append(item)
    rng = random.Random(seed)
    queues = [rng.sample(groups[k], len(groups[k])) for k in sorted(groups)]
    chosen: list[dict] = []
    while len(chosen) < max_questions:
        for queue in queues:
            if queue and len(chosen) < max_questions:
                chosen.append(queue.pop())
    return chosen


def _conversations(tokens_dir, split: str) -> list:
    """The typed QA of a split as conversation-like objects (what the instruct stage's baselines read)."""
    from videolavit.data.tokens import iter_token_records

    return [SimpleNamespace(type=q.get("type"), conversations=[{"value": q["question_text"]}, {"value": q["answer_text"]}])
            for r in iter_token_records(tokens_dir, split) for q in r.get("qa", [])]  # fmt: skip


def _accuracy(answers, items, name: str) -> dict[str, float]:
    """``qa/<name>_acc`` overall and per type, ``qa/<name>_count`` likewise (exact match)."""
    from videolavit.metrics.qa import QAAccuracy

    metric = QAAccuracy()
    metric.update(answers, [i["answer"] for i in items], [i["type"] for i in items])
    result = metric.compute()
    out = {f"qa/{name}_acc": float(result["exact_match"]), f"qa/{name}_count": float(result["count"])}
    for key, value in result.items():
        kind, _, qa_type = key.partition("/")
        if qa_type:
            out[f"qa/{name}_{'acc' if kind == 'exact_match' else 'count'}_{qa_type}"] = float(value)
    return out


def evaluate_qa(cfg: DictConfig, protocol: DictConfig, results: Results, out_dir: Path) -> None:
    from videolavit.data.lm_data import load_media_records
    from videolavit.data.tokens import read_token_meta, vocab_from_meta
    from videolavit.generate import load_models
    from videolavit.metrics.qa import NOT_COMPARABLE_WITH_GPT_JUDGED
    from videolavit.models.lm_inference import answer_questions
    from videolavit.stages.instruct import qa_baselines

    qa, tokens = protocol.qa, Path(cfg.paths.tokens)
    shards = vocab_from_meta(read_token_meta(tokens))
    lm_path = require_path(cfg.evaluate.qa_lm_path or Path(cfg.paths.models) / "lm_instruct", "the instruction-tuned LM",
                           "Run `videolavit instruct` first (or set evaluate.qa_lm_path).")  # fmt: skip
    models = load_models(cfg, lm_path=lm_path, tokenizers=False, detokenizers=False)
    if models.vocab != shards:
        raise ConfigError(f"the LM in '{lm_path}' has {models.vocab}, the token shards {shards}: re-run the LM stages")
    tok = models.text_tokenizer
    template = models.lm_info.get("template") or str(cfg.lm.template)
    records = load_media_records(tokens, qa.split, shards, "media", bos=tok.bos_token_id, eos=tok.eos_token_id)
    media = {r["id"]: r for r in records}
    items = _qa_items(list(media.values()), qa.max_questions, _seed(cfg))
    video = [i for i in items if i["kind"] == "video"]
    image = [i for i in items if i["kind"] == "image"]

    def answer(model, pool, chosen):
        media_ids = [pool[i["media_id"]]["media"].tolist() for i in chosen]
        questions = [i["question"] for i in chosen]
        return answer_questions(model, tok, models.vocab, media_ids, questions, int(qa.max_new_tokens), template,
                                int(qa.batch_size))  # fmt: skip

    predictions = []
    if video:
        answers = answer(models.lm, media, video)
        results.update(_accuracy(answers, video, "video"))
        predictions += [{**i, "prediction": a, "input": "media"} for i, a in zip(video, answers)]
    if image:
        answers = answer(models.lm, media, image)
        scores = _accuracy(answers, image, "image")
        results.update({k: scores[k] for k in ("qa/image_acc", "qa/image_count")})
        predictions += [{**i, "prediction": a, "input": "media"} for i, a in zip(image, answers)]
    results.missing(["qa/video_acc"], f"no video questions in the '{qa.split}' token shards")
    results.missing(["qa/image_acc"], f"no image questions in the '{qa.split}' token shards")
    results.missing([f"qa/video_acc_{t}" for t in QA_TYPES], f"no questions of this type in the '{qa.split}' split")

    all_convs = [c for split in ("train", "val", "test") for c in _conversations(tokens, split)]
    train_convs = _conversations(tokens, "train")
    for chosen, name in ((video, None), (image, "image")):
        if not chosen:
            continue
        base = qa_baselines(chosen, train_convs, all_convs)
        if name is None:
            results.update({k.replace("val/qa_", "qa/"): v for k, v in base.items()})
        else:
            counts = defaultdict(int)
            for i in chosen:
                counts[i["type"]] += 1
            for kind in ("chance", "prior"):
                results.set(f"qa/{kind}_image", sum(base[f"val/qa_{kind}_{t}"] * n for t, n in counts.items()) / len(chosen))
    results.missing([f"qa/chance_{t}" for t in QA_TYPES], f"no video questions of this type in the '{qa.split}' split")

    if qa.no_motion_ablation:
        no_motion_ablation(cfg, protocol, results, models, video, shards, answer, predictions)
    results.missing([f"{NO_MOTION}qa/video_acc", *(f"{NO_MOTION}qa/video_acc_{t}" for t in QA_TYPES)],
                    "the no-motion ablation was not run (protocol qa.no_motion_ablation) or had no questions")  # fmt: skip
    results.metrics["qa/metric"] = "exact_match"
    results.notes["qa/*"] = NOT_COMPARABLE_WITH_GPT_JUDGED
    if predictions:  # logged with the rest of runs/evaluate
        (out_dir / f"qa_{qa.split}.jsonl").write_text("".join(json.dumps(p) + "\n" for p in predictions))


def no_motion_ablation(cfg, protocol, results: Results, models, video: list, shards, answer, predictions: list) -> None:
    """The video questions again, each video given as ``frames_media`` (paper Table 6, understanding w/o motion)."""
    from videolavit.data.lm_data import load_media_records
    from videolavit.errors import MissingArtifactError
    from videolavit.generate import load_models

    if not video:
        return
    tok = models.text_tokenizer
    try:
        records = load_media_records(cfg.paths.tokens, protocol.qa.split, shards, "frames_media", bos=tok.bos_token_id,
                                     eos=tok.eos_token_id)  # fmt: skip
        frames = {r["id"]: r for r in records if r["kind"] == "video"}
    except MissingArtifactError as exc:
        results.notes[f"{NO_MOTION}qa/*"] = str(exc)
        return
    model = models.lm
    if cfg.evaluate.no_motion_lm_path:
        model = load_models(cfg, lm_path=cfg.evaluate.no_motion_lm_path, tokenizers=False, detokenizers=False).lm
    results.metrics[f"{NO_MOTION}qa/model"] = "no_motion_lm" if cfg.evaluate.no_motion_lm_path else "same_lm"
    answers = answer(model, frames, video)
    results.update({NO_MOTION + k: v for k, v in _accuracy(answers, video, "video").items()})
    predictions += [{**i, "prediction": a, "input": "frames_media"} for i, a in zip(video, answers)]


# ---- feature extractors ---------------------------------------------------------------------------------------------


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
                               (clip_kind, ("clip", "corpus", "none"), "clipsim")):  # fmt: skip
        if kind not in allowed:
            raise ConfigError(f"protocol extractors.{key} must be auto or one of {allowed}, got {kind!r}")
    if fvd_kind == "i3d" and not ev.i3d_path:
        raise ConfigError("protocol extractors.fvd=i3d needs evaluate.i3d_path (a local i3d_torchscript.pt)")
    if clip_kind == "clip" and not ev.clip_path:
        raise ConfigError("protocol extractors.clipsim=clip needs evaluate.clip_path (a local CLIP directory)")
    path = Path(ev.evaluators_path or Path(cfg.paths.models) / "evaluators")
    if path.exists() or "corpus" in (fvd_kind, clip_kind):
        require_path(path, "the corpus evaluators", "Run `videolavit evaluators` first (or set evaluate.evaluators_path).")
        corpus = load_evaluators(path)
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


def feed_real_clips(ext: Extractors, clips_dir, split: str, limit: Optional[int], batch: int = 32) -> int:
    """Stream the split's clips (at most ``limit``) into the FVD's real side; returns how many went in."""
    from videolavit.data.shards import iter_clip_records

    if ext.fvd is None:
        return 0
    count, chunk = 0, []
    for record in iter_clip_records(clips_dir, split, fields=("frames",)):
        if limit is not None and count >= limit:
            break
        if "frames" not in record:
            break
        chunk.append(record["frames"])
        count += 1
        if len(chunk) == batch:
            ext.fvd.update(_cthw(np.stack(chunk)), real=True)
            chunk = []
    if chunk:
        ext.fvd.update(_cthw(np.stack(chunk)), real=True)
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


# ---- clips ----------------------------------------------------------------------------------------------------------


def read_clips(clips_dir, split: str, limit: Optional[int], fields=("keyframe", "motion", "frames", "meta"),
               stream: bool = False):  # fmt: skip
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


# ---- text → video ---------------------------------------------------------------------------------------------------


def first_clips(clips_dir, split: str, video_ids: set, clip_seconds: float) -> dict[str, np.ndarray]:
    """Video id → frames [T, H, W, 3] of the shard clip covering each chosen video's first manifest clip."""
    from videolavit.data.shards import iter_clip_records

    out: dict[str, tuple[float, np.ndarray]] = {}
    for r in iter_clip_records(clips_dir, split, fields=("frames", "meta")):
        video, start = r.get("meta", {}).get("video_id"), float(r.get("meta", {}).get("start_time", 0.0))
        first = start < 0.25 * clip_seconds and (video not in out or start < out[video][0])
        if video in video_ids and "frames" in r and first:
            out[video] = (start, r["frames"])
    return {k: v for k, (_, v) in out.items()}


def _score_t2v(results: Results, ext: Extractors, videos, captions, targets, attributes, prefix: str) -> None:
    value, reason = fvd_of(ext, videos)
    results.set(prefix + ext.fvd_key, value, reason)
    if ext.clipsim is None:
        reason = ext.reasons.get(ext.clipsim_key, "no CLIPSIM model (protocol extractors.clipsim=none)")
        results.set(prefix + ext.clipsim_key, None, reason)
    else:
        ext.clipsim.reset()
        for start in range(0, len(videos), 8):
            ext.clipsim.update(torch.from_numpy(np.stack(videos[start : start + 8])), captions[start : start + 8])
        results.set(prefix + ext.clipsim_key, float(ext.clipsim.compute()))
    results.update(attribute_scores(ext, videos, targets, attributes, prefix + "t2v/attribute_acc"))
    reason = "no corpus classifier" if ext.classifier is None else "the classifier does not know this attribute"
    results.missing([prefix + "t2v/attribute_acc", *(f"{prefix}t2v/attribute_acc_{a}" for a in attributes)], reason)


def evaluate_t2v(cfg: DictConfig, protocol: DictConfig, results: Results, pipe, ext: Extractors, out_dir: Path) -> None:
    """Clips generated from the split's captions → FVD, CLIPSIM, attribute accuracy (and the zero-motion ablation)."""
    from videolavit.data.manifest import read_manifest
    from videolavit.generate import save_video, to_uint8

    t2v = protocol.t2v
    attributes = [str(a) for a in t2v.attributes]
    samples = [s for s in read_manifest(cfg.paths.corpus, t2v.split) if s.kind == "video" and s.caption]
    samples.sort(key=lambda s: s.id)
    if t2v.samples is not None and len(samples) > int(t2v.samples):
        samples = sorted(random.Random(_seed(cfg)).sample(samples, int(t2v.samples)), key=lambda s: s.id)
    videos, ablated, captions, targets, rows = [], [], [], [], []
    for i, sample in enumerate(samples):
        ids, visual, motion = pipe.sample_tokens(pipe.text_prompt(sample.caption))
        frames, keyframes, motion_field = pipe.render(visual, motion)
        video = pipe.finish(ids, visual, motion, frames, keyframes, motion_field)
        videos.append(video.frames)
        captions.append(sample.caption)
        targets.append(main_targets(sample, attributes))
        if t2v.no_motion_ablation:  # the same keyframe, rendered with a zero motion field
            still, _, _ = pipe.render(visual, motion, first_keyframe=keyframes[0], motion=torch.zeros_like(motion_field))
            ablated.append(to_uint8(still[0].permute(0, 2, 3, 1)))
        if i < int(t2v.save_samples):
            written = save_video(video, out_dir / f"t2v_{i:02d}_{sample.id}.mp4", gif=True)
            rows.append({"id": sample.id, "caption": sample.caption, "files": [p.name for p in written],
                         "visual_tokens": len(visual[0]), "targets": targets[-1]})  # fmt: skip
    if rows:
        (out_dir / "t2v_samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    results.set("count/t2v_samples", float(len(videos)))
    if not videos:
        results.missing([ext.fvd_key, ext.clipsim_key, "t2v/attribute_acc", "t2v/attribute_acc_direction"],
                        f"no captioned videos in the '{t2v.split}' manifest")  # fmt: skip
        return
    _score_t2v(results, ext, videos, captions, targets, attributes, "")
    if ablated:
        _score_t2v(results, ext, ablated, captions, targets, attributes, NO_MOTION)
        results.notes[f"{NO_MOTION}t2v/*"] = "generated keyframes re-rendered with a zero motion field (not SVD img2vid)"
    if ext.classifier is not None:
        for a in attributes:
            if a in ext.classifier.attributes:
                results.set(f"t2v/attribute_chance_{a}", 1.0 / len(ext.classifier.attributes[a]))
        seconds = float(cfg.video.clip_frames) / float(cfg.video.fps)
        real = first_clips(cfg.paths.clips, t2v.split, {s.id for s in samples}, seconds)
        pairs = [(real[s.id], t) for s, t in zip(samples, targets) if s.id in real]
        if pairs:  # the classifier on the real first clips of the same videos: the ceiling of t2v/attribute_acc
            real_videos, real_targets = [p for p, _ in pairs], [t for _, t in pairs]
            results.update(attribute_scores(ext, real_videos, real_targets, attributes, "t2v/attribute_acc_real"))


# ---- reconstruction -------------------------------------------------------------------------------------------------


def evaluate_recon(cfg: DictConfig, protocol: DictConfig, results: Results, pipe, ext: Extractors) -> None:
    """Motion tokenizer round trip (EPE), video and keyframe detokenizers re-rendering real clips (PSNR / SSIM)."""
    from videolavit.generate import to_uint8, to_unit
    from videolavit.metrics.motion import MotionEPE
    from videolavit.metrics.reconstruction import SSIM_KERNEL, VideoPSNR, VideoSSIM
    from videolavit.video.motion import denormalize_motion

    recon, m = protocol.recon, pipe.m
    epe, zero, count = MotionEPE(), MotionEPE(), 0
    records = read_clips(cfg.paths.clips, recon.split, recon.motion_clips, ("motion",), stream=True)
    motions = (r["motion"] for r in records)
    with torch.no_grad():
        while chunk := list(itertools.islice(motions, 32)):
            true = torch.from_numpy(np.stack(chunk)).to(pipe.device)  # [B, 2, T, h, w]
            rec = m.motion_tokenizer.decode(m.motion_tokenizer.encode(true))
            px_true, px_rec = denormalize_motion(true, cfg, axis=1).cpu(), denormalize_motion(rec, cfg, axis=1).cpu()
            epe.update(px_rec, px_true)
            zero.update(torch.zeros_like(px_true), px_true)
            count += len(chunk)
    if not count:
        keys = ["recon/motion_epe", "recon/video_psnr", "recon/video_psnr_static_baseline"]
        results.missing(keys, f"no '{recon.split}' clip shards")
        return
    results.set("recon/motion_epe", float(epe.compute()))
    results.set("recon/motion_epe_zero_baseline", float(zero.compute()))
    results.set("count/recon_motion_clips", float(count))
    clips = read_clips(cfg.paths.clips, recon.split, max(int(recon.video_clips), int(recon.keyframes), 1))
    with torch.no_grad():
        motion = torch.from_numpy(np.stack([c["motion"] for c in clips])).to(pipe.device)
        decoded = m.motion_tokenizer.decode(m.motion_tokenizer.encode(motion))  # what generation gives g_V

    vd, g = m.video_detokenizer, cfg.generate
    size = (vd.config["height"], vd.config["width"])
    with_frames = [(c, d) for c, d in zip(clips, decoded) if "frames" in c][: int(recon.video_clips)]
    if not with_frames:
        reason = f"no '{recon.split}' clips with frames (video.frames_height/width were 0 at decompose)"
        results.missing(["recon/video_psnr", "recon/video_psnr_static_baseline"], reason)
    else:
        names = ["recon/video_psnr", "recon/video_psnr_static_baseline"]
        if min(size) >= SSIM_KERNEL:
            names += ["recon/video_ssim", "recon/video_ssim_static_baseline"]
        else:
            keys = ["recon/video_ssim", "recon/video_ssim_static_baseline"]
            results.missing(keys, f"SSIM needs frames ≥ {SSIM_KERNEL} px")
        metrics = {k: (VideoPSNR() if "psnr" in k else VideoSSIM()) for k in names}
        rendered = []
        for clip, motion in with_frames:
            # the truth at the detokenizer's size, resized as the detokenizer stage resizes its targets
            unit = torch.cat([to_unit(frame, size, "cpu") for frame in clip["frames"]])  # [T, 3, h, w]
            real = torch.from_numpy(to_uint8(unit))[None]  # [1, T, 3, h, w] uint8
            key = unit[:1].to(pipe.device)
            out = vd.sample(key, motion[None], int(g.video_steps), float(g.video_guidance), pipe.generator)
            fake = torch.from_numpy(to_uint8(out))  # [1, T, 3, H, W]
            static = real[:, :1].expand_as(real).contiguous()
            rendered.append(fake[0].permute(0, 2, 3, 1).numpy())
            for name, metric in metrics.items():  # frame 0 is the given condition: scored on frames 1…T−1
                metric.update((static if "static" in name else fake)[:, 1:], real[:, 1:])
        results.update({name: float(metric.compute()) for name, metric in metrics.items()})
        results.set("count/recon_video_clips", float(len(rendered)))
        value, why = fvd_of(ext, rendered)
        results.set("recon/" + ext.fvd_key.split("/", 1)[1], value, why)
    recon_keyframes(results, pipe, clips[: int(recon.keyframes)])


def recon_keyframes(results: Results, pipe, clips: list[dict]) -> None:
    """Keyframes → visual tokens → keyframe detokenizer, against the clip's first frame at the detokenizer's size."""
    from videolavit.generate import to_uint8, to_unit
    from videolavit.metrics.reconstruction import SSIM_KERNEL, video_psnr, video_ssim

    if not clips:
        return
    m, g = pipe.m, pipe.cfg.generate
    kf = m.keyframe_detokenizer
    size = tuple(kf.config["image_size"])
    keyframes = np.stack([c["keyframe"] for c in clips])  # [B, S, S, 3]: the visual tokenizer's input
    with torch.no_grad():
        codes = m.visual_tokenizer.encode(m.visual_tokenizer.preprocess(keyframes))
        cond = m.visual_tokenizer.decode_features(codes)
        fake = kf.sample(cond, int(g.keyframe_steps), float(g.keyframe_guidance), pipe.generator, output_type="float")
    # the target the detokenizer stage trains on: the clip's first frame at the detokenizer's size
    real = torch.cat([to_unit(c["frames"][0] if "frames" in c else c["keyframe"], size, "cpu") for c in clips])
    real_u8, fake_u8 = (torch.from_numpy(to_uint8(x))[:, None] for x in (real, fake.cpu()))  # [B, 1, 3, H, W]
    results.set("recon/keyframe_psnr", float(video_psnr(fake_u8, real_u8)))
    ssim = float(video_ssim(fake_u8, real_u8)) if min(size) >= SSIM_KERNEL else None
    results.set("recon/keyframe_ssim", ssim, f"SSIM needs keyframes ≥ {SSIM_KERNEL} px")
    results.set("count/recon_keyframes", float(len(clips)))


# ---- tokens, tags, the stage ----------------------------------------------------------------------------------------


def token_metrics(cfg: DictConfig, results: Results, motion_tokens: int) -> None:
    results.set("tokens/motion_per_clip", float(motion_tokens))
    path = Path(cfg.paths.metrics) / "tokenize.json"
    if not path.is_file():
        results.set("tokens/saving", None, f"{path} not found: run `videolavit tokenize`")
        return
    measured = json.loads(path.read_text())
    for key, name in (("token_saving", "saving"), ("token_saving_paper_counts", "saving_paper_counts"),
                      ("tokens_per_clip", "per_clip"), ("visual_tokens_per_keyframe", "visual_per_keyframe")):  # fmt: skip
        results.set(f"tokens/{name}", measured.get(key), f"{path} has no {key}")


def reference_motion_tokens(cfg: DictConfig) -> int:
    """N of the main runs: ``evaluate.reference_motion_tokens``, else the profile's shipped motion tokenizer grid."""
    from videolavit.config import load_config
    from videolavit.models.motion_tokenizer import _token_grid

    if cfg.evaluate.reference_motion_tokens is not None:
        return int(cfg.evaluate.reference_motion_tokens)
    m = load_config(profile=cfg.profile, params_file=None).motion_tokenizer.model
    strides = [list(s) for s in m.downsample_strides]
    t, h, w = _token_grid((m.frames, m.height, m.width), m.depth, list(m.downsample_after), strides)
    return t * h * w


def run_tags(label: str, motion_tokens: int, reference: int) -> dict[str, str]:
    """Provenance tags; a motion tokenizer grid other than the reference marks the run as the Table 7 ablation."""
    tags = {"videolavit.protocol": label, "videolavit.qa_metric": "exact_match"}
    tags["videolavit.motion_tokens"] = str(motion_tokens)
    if motion_tokens != reference:
        tags["videolavit.ablation"] = f"tokens_{motion_tokens}"
    return tags


@stage_entry(STAGE)
def run(cfg: DictConfig) -> dict:
    from videolavit.generate import VideoLaVITPipeline, load_models

    started = time.perf_counter()
    protocol, label = load_protocol(cfg.evaluate.protocol, list(cfg.evaluate.protocol_overrides))
    reference = reference_motion_tokens(cfg)  # before the long part: a config problem here fails fast
    cfg = with_sampling(cfg, protocol.sampling)
    out_dir = Path(cfg.paths.runs) / STAGE
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("t2v_*"):
        old.unlink()
    (out_dir / "protocol.yaml").write_text(OmegaConf.to_yaml(protocol))
    results, seconds = Results(), {}

    evaluate_qa(cfg, protocol, results, out_dir)
    seconds["qa"] = time.perf_counter() - started

    lm_path = cfg.evaluate.generation_lm_path or cfg.generate.lm_path or Path(cfg.paths.models) / "lm_pretrain"
    lm_path = require_path(lm_path, "the pretrained LM",
                           "Run `videolavit pretrain` first (or set evaluate.generation_lm_path).")  # fmt: skip
    pipe = VideoLaVITPipeline(load_models(cfg, lm_path=lm_path), cfg, seed=cfg.generate.seed)
    motion_tokens = pipe.m.motion_tokenizer.tokens_per_clip
    token_metrics(cfg, results, motion_tokens)
    clips_dir = require_path(cfg.paths.clips, "clip shards", "Run `videolavit decompose` first.")
    ext = build_extractors(cfg, protocol)
    results.set("count/t2v_real_clips", float(feed_real_clips(ext, clips_dir, protocol.t2v.split, protocol.t2v.real_clips)))
    mark = time.perf_counter()
    evaluate_t2v(cfg, protocol, results, pipe, ext, out_dir)
    seconds["t2v"] = time.perf_counter() - mark
    mark = time.perf_counter()
    evaluate_recon(cfg, protocol, results, pipe, ext)
    seconds["recon"] = time.perf_counter() - mark
    results.missing(REQUIRED, "not computed")

    run = tracking.active()
    run.set_tags(run_tags(label, motion_tokens, reference))
    run.log_artifact(out_dir, "evaluate")
    results.update({f"seconds/{k}": v for k, v in seconds.items()})
    results.set("seconds", time.perf_counter() - started)
    metrics = dict(results.metrics)
    metrics.update({"protocol": label, "notes": dict(sorted(results.notes.items()))})
    _print_summary(metrics, ext, label)
    return metrics


def _print_summary(m: dict, ext: Extractors, label: str) -> None:
    def f(key: str, scale: float = 1.0) -> str:
        value = m.get(key)
        return "—" if value is None else f"{value * scale:.3g}"

    print(f"evaluate ({label}) in {f('seconds')} s "
          f"(qa {f('seconds/qa')}, t2v {f('seconds/t2v')}, recon {f('seconds/recon')})")
    print(f"  QA exact match (not GPT-judged): video {f('qa/video_acc')} [appearance {f('qa/video_acc_appearance')}, "
          f"motion {f('qa/video_acc_motion')} (chance {f('qa/chance_motion')}), temporal {f('qa/video_acc_temporal')}]; "
          f"w/o motion {f(NO_MOTION + 'qa/video_acc')} [motion {f(NO_MOTION + 'qa/video_acc_motion')}]; "
          f"image {f('qa/image_acc')}")
    print(f"  T2V: {ext.fvd_key} {f(ext.fvd_key)}, {ext.clipsim_key} {f(ext.clipsim_key)}, "
          f"attributes {f('t2v/attribute_acc')} "
          f"(direction {f('t2v/attribute_acc_direction')}, real clips {f('t2v/attribute_acc_real')})")
    print(f"  recon: motion EPE {f('recon/motion_epe')} px/frame (zero motion {f('recon/motion_epe_zero_baseline')}), "
          f"video PSNR {f('recon/video_psnr')} dB (first frame repeated {f('recon/video_psnr_static_baseline')}), "
          f"keyframe PSNR {f('recon/keyframe_psnr')}; tokens: N={f('tokens/motion_per_clip')}, saving {f('tokens/saving')}")
