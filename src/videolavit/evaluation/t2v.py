"""Text → video: clips generated from the split's captions, scored by FVD, CLIPSIM and attribute accuracy."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from videolavit.evaluation.extractors import Extractors, attribute_scores, fvd_of, main_targets
from videolavit.evaluation.protocol import NO_MOTION, Results, sampling_seed


def first_clips(clips_dir, split: str, video_ids: set, clip_seconds: float, fields=("frames",)) -> dict[str, dict]:
    """Video id → the record (``fields``, e.g. frames [T, H, W, 3]) of the shard clip covering each chosen video's
    first manifest clip."""
    from videolavit.data.shards import iter_clip_records

    out: dict[str, tuple[float, dict]] = {}
    for r in iter_clip_records(clips_dir, split, fields=(*fields, "meta")):
        video, start = r.get("meta", {}).get("video_id"), float(r.get("meta", {}).get("start_time", 0.0))
        first = start < 0.25 * clip_seconds and (video not in out or start < out[video][0])
        if video in video_ids and all(f in r for f in fields) and first:
            out[video] = (start, r)
    return {k: v for k, (_, v) in out.items()}


def render_from_own_tokens(pipe, record: dict) -> np.ndarray:
    """A real clip's keyframe and motion → their visual / motion tokens → the detokenizers: uint8 [T, H, W, 3]. What
    the generated clip would look like if the LM emitted exactly the tokens of a real clip (the detokenizers' part)."""
    visual = pipe.tokenize_image(record["keyframe"])
    motion = pipe.tokenize_motion(record["motion"][None])[0]
    frames, keyframes, motion_field = pipe.render([visual], [motion])
    return pipe.finish([], [visual], [motion], frames, keyframes, motion_field).frames


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
    from videolavit.data.pixels import to_uint8
    from videolavit.inference.media import save_video

    t2v = protocol.t2v
    attributes = [str(a) for a in t2v.attributes]
    samples = [s for s in read_manifest(cfg.paths.corpus, t2v.split) if s.kind == "video" and s.caption]
    samples.sort(key=lambda s: s.id)
    if t2v.samples is not None and len(samples) > int(t2v.samples):
        samples = sorted(random.Random(sampling_seed(cfg)).sample(samples, int(t2v.samples)), key=lambda s: s.id)
    elif t2v.samples is not None and samples:  # more samples than captions: every caption again, each a new draw
        samples = [samples[i % len(samples)] for i in range(int(t2v.samples))]
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
            written = save_video(video, out_dir / f"t2v_{i:02d}_{sample.id}.mp4", gif=True, previews=False)
            rows.append({"id": sample.id, "caption": sample.caption, "files": [p.name for p in written],
                         "visual_tokens": len(visual[0]), "targets": targets[-1]})
    if rows:
        (out_dir / "t2v_samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    results.set("count/t2v_samples", float(len(videos)))
    results.set("count/t2v_captions", float(len({s.id for s in samples})))
    if not videos:
        results.missing([ext.fvd_key, ext.clipsim_key, "t2v/attribute_acc", "t2v/attribute_acc_direction"],
                        f"no captioned videos in the '{t2v.split}' manifest")
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
        fields = ("frames", "keyframe", "motion") if t2v.token_roundtrip else ("frames",)
        real = first_clips(cfg.paths.clips, t2v.split, {s.id for s in samples}, seconds, fields)
        once = {s.id: t for s, t in zip(samples, targets)}  # a caption drawn twice: its real clip counts once
        pairs = [(real[k], t) for k, t in once.items() if k in real]
        if pairs:  # the classifier on the real first clips of the same videos: the ceiling of t2v/attribute_acc
            real_targets = [t for _, t in pairs]
            real_videos = [r["frames"] for r, _ in pairs]
            results.update(attribute_scores(ext, real_videos, real_targets, attributes, "t2v/attribute_acc_real"))
            if t2v.token_roundtrip:  # between the two: the same real clips through their own tokens
                rendered = [render_from_own_tokens(pipe, r) for r, _ in pairs]
                results.update(attribute_scores(ext, rendered, real_targets, attributes, "t2v/attribute_acc_tokens"))
                results.notes["t2v/attribute_acc_tokens*"] = (
                    "the real first clips rendered by the detokenizers from their own visual and motion tokens "
                    "(no LM): below t2v/attribute_acc_real the detokenizers lose the attribute, above "
                    "t2v/attribute_acc the LM's tokens do"
                )
