"""QA of the released understanding LM (``evaluate.understanding_lm``, an import-official ``DIR/understanding_lm``).

The protocol's questions (the same items as the instruct LM's QA: the split's typed QA whose media have clips or an
image file), answered through the feature route of models/understanding.py: each image, clip keyframe or sampled
frame → the visual tokenizer's merger features → ``vit_proj`` → ``inputs_embeds``; motion → the released motion
tokenizer's codes as ids. Scored by the same exact match (evaluation/qa.py) under ``qa_imported/*`` and
``ablation_no_motion/qa_imported/*`` (frames sampled as tokenize's ``frames_media``, no motion).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
from omegaconf import DictConfig

from videolavit.errors import ConfigError, MissingArtifactError, require_path
from videolavit.evaluation.protocol import NO_MOTION, QA_TYPES, Results, sampling_seed
from videolavit.evaluation.qa import _qa_items, accuracy, baseline_metrics

PREFIX = "qa_imported/"
KEY = "evaluate.understanding_lm"
MOTION_KEY = "evaluate.understanding_motion_tokenizer"


@dataclass
class Understanding:
    """The released understanding LM and what feeds it."""

    path: Path
    lm: Any
    tokenizer: Any
    vocab: Any
    template: str
    embedder: Any  # models.understanding.VisualEmbedder
    motion_tokenizer: Any


@dataclass
class Medium:
    kind: str
    images: list = field(default_factory=list)  # uint8 [S, S, 3]: the image, or each clip's keyframe in time order
    motion: list = field(default_factory=list)  # float [2, T, h, w] per clip
    frames: dict = field(default_factory=dict)  # sample index → uint8 [S, S, 3] (the no-motion ablation's frames)


def load_understanding(cfg: DictConfig, device: str) -> Understanding:
    """The LM of ``evaluate.understanding_lm`` with its ``visual_input/`` and the motion tokenizer beside it."""
    from videolavit.models.lm_checkpoint import load_lm_checkpoint, read_lm_vocab
    from videolavit.models.motion_tokenizer import MotionTokenizer
    from videolavit.models.understanding import FOLDER, VisualEmbedder

    path = require_path(cfg.evaluate.understanding_lm, KEY, "Write it with `videolavit import-official RELEASE --out DIR`.")
    if not (path / FOLDER).is_dir():
        raise MissingArtifactError(f"{KEY}: '{path}' has no {FOLDER}/ (the understanding LM's continuous visual input); "
                                   "import-official writes it when the release has visual_weight.bin and visual_tokenizer/")
    lm, tokenizer, vocab = load_lm_checkpoint(path, dtype=cfg.lm.model.dtype, device=device)
    template = read_lm_vocab(path)[1].get("template") or str(cfg.lm.template)
    embedder = VisualEmbedder.from_pretrained(path / FOLDER).to(device).eval()
    hidden = lm.get_input_embeddings().weight.shape[1]
    if embedder.vit_proj.out_features != hidden:
        raise ConfigError(f"{KEY}: {FOLDER}/ projects to {embedder.vit_proj.out_features}-d features, the LM is {hidden}-d")
    motion_dir = cfg.evaluate.understanding_motion_tokenizer or path.parent / "motion_tokenizer"
    motion_dir = require_path(motion_dir, f"the motion tokenizer of {KEY} ({MOTION_KEY})",
                              "import-official writes DIR/motion_tokenizer from motion_tokenizer.bin.")
    motion = MotionTokenizer.from_pretrained(motion_dir, map_location=device).eval()
    if motion.codebook_size != vocab.motion_codes:
        raise ConfigError(f"{MOTION_KEY}: '{motion_dir}' has {motion.codebook_size} motion codes, the LM in '{path}' "
                          f"{vocab.motion_codes}: give the motion tokenizer released with it")
    return Understanding(path, lm, tokenizer, vocab, template, embedder, motion)


def collect_media(cfg: DictConfig, samples: list, paths: list, orders: dict, with_frames: bool, size: int) -> dict:
    """Medium per id of the image ``samples`` (from the corpus) and of the videos in ``orders`` (video → its clips in
    time order; keyframes and motion from the clip shards ``paths``, and the ablation frames tokenize samples)."""
    from videolavit.data.images import read_image, resize_images
    from videolavit.data.shards import iter_clip_records
    from videolavit.inference.media_tokens import frame_positions

    corpus = Path(cfg.paths.corpus)
    media: dict[str, Medium] = {s.id: Medium("image", [read_image(s.media_path(corpus), size)]) for s in samples}
    fields = ("keyframe", "motion", "meta", *(("frames",) if with_frames else ()))
    clips: dict[str, dict] = {v: {} for v in orders}
    for record in iter_clip_records(None, "", fields, paths=paths):
        video, clip = record["meta"]["video_id"], int(record["meta"]["clip"])
        if video not in orders:
            continue
        clips[video][clip] = (resize_images(record["keyframe"], size), record["motion"])
        medium = media.setdefault(video, Medium("video"))
        if with_frames:  # as VideoTokens: N frames over the video's clips; the keyframes when the shards keep none
            frames = record.get("frames")
            frames = record["keyframe"][None] if frames is None else frames
            rank = orders[video].index(clip)
            n = cfg.tokenize.ablation_frames
            for i, (c, f) in enumerate(frame_positions(len(orders[video]), len(frames), n)):
                if c == rank:
                    medium.frames[i] = resize_images(frames[f], size)
    for video, by_clip in clips.items():
        media[video].images = [by_clip[c][0] for c in sorted(by_clip)]
        media[video].motion = [by_clip[c][1] for c in sorted(by_clip)]
    return media


def _inputs(model: Understanding, medium: Medium, no_motion: bool, cache: dict, key: str):
    """(media ids with one placeholder code per image span, features per span), features computed once per medium."""
    import torch

    vocab = model.vocab
    images = [medium.frames[i] for i in sorted(medium.frames)] if no_motion else medium.images
    if key not in cache:
        with torch.no_grad():
            x = model.embedder.tokenizer.preprocess(np.stack(images))  # [n, 3, S, S]
            features = model.embedder(x)
            codes = []
            if medium.kind == "video" and not no_motion:
                motion = torch.as_tensor(np.stack(medium.motion), device=x.device)  # [clips, 2, T, h, w]
                mt = model.motion_tokenizer
                if tuple(motion.shape[1:]) != (mt.in_channels, mt.frames, mt.height, mt.width):
                    raise ConfigError(f"{MOTION_KEY}: the motion tokenizer takes motion [2, {mt.frames}, {mt.height}, "
                                      f"{mt.width}], the clip shards hold {list(motion.shape[1:])}: decompose the "
                                      "corpus at the released geometry (the paper profile)")
                codes = mt.encode(motion).tolist()  # [clips, tokens_per_clip]
        cache[key] = features, codes
    features, codes = cache[key]
    if medium.kind == "video" and not no_motion:
        ids = [t for motion in codes for t in vocab.clip_span([0], motion)]
    else:
        ids = [t for _ in images for t in vocab.image_span([0])]
    return ids, features


def _manifest_conversations(corpus: Path, split: str) -> list:
    """The typed QA of a manifest split as conversation-like objects (what ``qa_baselines`` reads)."""
    from videolavit.data.manifest import read_manifest

    return [SimpleNamespace(type=q.type, conversations=[{"value": q.question}, {"value": q.answer}])
            for s in read_manifest(corpus, split) for q in s.qa]


def evaluate_qa_imported(cfg: DictConfig, protocol: DictConfig, results: Results, out_dir: Path, device: str) -> int:
    """``qa_imported/*`` (and the no-motion ablation) into ``results``; returns the motion tokens per clip it used."""
    import torch

    from videolavit.inference.qa import answer_from_features
    from videolavit.metrics.qa import NOT_COMPARABLE_WITH_GPT_JUDGED

    qa = protocol.qa
    require_path(cfg.paths.corpus, "corpus", "Build it with `videolavit corpus`.")
    require_path(cfg.paths.clips, "clip shards", "Run `videolavit decompose` first.")
    model = load_understanding(cfg, device)
    corpus = Path(cfg.paths.corpus)
    from videolavit.data.manifest import read_manifest
    from videolavit.data.shards import clip_shard_urls
    from videolavit.data.token_parts import clip_orders

    samples = read_manifest(corpus, qa.split)
    paths = clip_shard_urls(cfg.paths.clips, qa.split)
    orders = dict(clip_orders(paths))
    # the items the instruct LM's QA reads from the token shards: videos with clips, images (with their file here)
    records = [{"id": s.id, "kind": s.kind, "qa": [(q.question, q.answer, q.type) for q in s.qa]} for s in samples
               if (s.id in orders if s.kind == "video" else s.media_path(corpus).is_file())]
    items = _qa_items(records, qa.max_questions, sampling_seed(cfg))
    wanted = {i["media_id"] for i in items}
    media = collect_media(cfg, [s for s in samples if s.kind == "image" and s.id in wanted], paths,
                          {v: c for v, c in orders.items() if v in wanted}, bool(qa.no_motion_ablation),
                          model.embedder.tokenizer.image_size)
    video = [i for i in items if i["kind"] == "video"]
    image = [i for i in items if i["kind"] == "image"]
    cache: dict = {}

    def answer(chosen: list, no_motion: bool) -> list[tuple[str, float]]:
        torch.manual_seed(sampling_seed(cfg))  # the tokenizer's Gumbel selection, where it samples
        inputs = [_inputs(model, media[i["media_id"]], no_motion, cache, f"{i['media_id']}|{no_motion}") for i in chosen]
        return answer_from_features(model.lm, model.tokenizer, model.vocab, [ids for ids, _ in inputs],
                                    [f for _, f in inputs], [i["question"] for i in chosen],
                                    max_new_tokens=int(qa.max_new_tokens), template=model.template)

    predictions = []
    for chosen, name, keys in ((video, "video", None), (image, "image", ("acc", "count"))):
        if not chosen:
            continue
        scored = answer(chosen, no_motion=False)
        scores = accuracy([a for a, _ in scored], chosen, f"{PREFIX}{name}")
        results.update(scores if keys is None else {f"{PREFIX}{name}_{k}": scores[f"{PREFIX}{name}_{k}"] for k in keys})
        predictions += [{**i, "prediction": a, "logprob": lp, "input": "features"} for i, (a, lp) in zip(chosen, scored)]
    if video and qa.no_motion_ablation:
        scored = answer(video, no_motion=True)
        results.update({NO_MOTION + k: v for k, v in accuracy([a for a, _ in scored], video, f"{PREFIX}video").items()})
        predictions += [{**i, "prediction": a, "logprob": lp, "input": "frames_features"} for i, (a, lp) in zip(video, scored)]
    results.missing([f"{PREFIX}video_acc"], f"no video questions with clips in the '{qa.split}' split")
    results.missing([f"{PREFIX}image_acc"], f"no image questions with an image file in the '{qa.split}' split")
    results.missing([f"{PREFIX}video_acc_{t}" for t in QA_TYPES], f"no questions of this type in the '{qa.split}' split")
    results.missing([f"{NO_MOTION}{PREFIX}video_acc", *(f"{NO_MOTION}{PREFIX}video_acc_{t}" for t in QA_TYPES)],
                    "the no-motion ablation was not run (protocol qa.no_motion_ablation) or had no questions")
    all_convs = [c for split in ("train", "val", "test") for c in _manifest_conversations(corpus, split)]
    baseline_metrics(results, PREFIX, video, image, _manifest_conversations(corpus, "train"), all_convs, qa.split)
    results.metrics[f"{PREFIX}metric"] = "exact_match"
    results.metrics[f"{PREFIX}lm"] = str(model.path)
    results.notes[f"{PREFIX}*"] = (f"the released understanding LM in '{model.path}' (image features through vit_proj, "
                                   f"motion as ids); {NOT_COMPARABLE_WITH_GPT_JUDGED}")
    if predictions:  # logged with the rest of runs/evaluate
        (out_dir / f"qa_imported_{qa.split}.jsonl").write_text("".join(json.dumps(p) + "\n" for p in predictions))
    return int(model.motion_tokenizer.tokens_per_clip)
