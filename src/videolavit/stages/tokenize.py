"""Stage ``tokenize``: every corpus sample → unified-vocabulary ids in token shards (the format of data/tokens.py).

``videolavit tokenize`` → ``<paths.tokens>/``: ``text_tokenizer/`` (a BPE trained on the corpus train text, or a copy
of ``tokenize.text_tokenizer_path``), ``{split}-*.jsonl`` and ``meta.json``; ``metrics/tokenize.json``.

A video is ``[IMG] keyframe [/IMG] [MOV] motion [/MOV]`` per clip, clips in time order; an image ``[IMG] … [/IMG]``.
``frames_media`` (the no-motion ablation, paper T6) holds N frames sampled uniformly over the video's clip frames, each
resized to the visual tokenizer input and tokenized as an image (N = ``tokenize.ablation_frames``, None: 2 per clip;
the clip keyframes stand in when the shards keep no frames). Text is ids without BOS/EOS. Videos that decompose
rejected (``rejects.jsonl``) or that have no clips are skipped and counted.

Token saving (paper Fig. 1, "saving > 90% tokens") is counted with this project's own formulas:
``clip = visual + motion + 4`` ([IMG] [/IMG] [MOV] [/MOV]) against ``per_frame = Σ over the clip's frames of
(visual_f + 2)``, each frame tokenized alone as an image; ``token_saving = 1 − clip / per_frame``. Measured: the
trained tokenizers on the ``tokenize.baseline_split`` clips. ``token_saving_paper_counts``: the paper profile's counts
(visual = ρ · patches = 256/3 ≈ 85.3 kept tokens of a 224/14 ViT, motion = the paper motion tokenizer's 135, 24 frames),
i.e. 1 − (85.3 + 135 + 4) / (24 · (85.3 + 2)) ≈ 0.893.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from videolavit import tracking
from videolavit.config import section_kwargs
from videolavit.data.clip_settings import check_motion_model
from videolavit.data.manifest import INSTRUCT_FILE, SPLITS, iter_manifest_share, read_instruct, read_manifest
from videolavit.data.shards import clip_shard_urls
from videolavit.data.token_parts import (
    PARTS_DIR, PartWriter, TokenStats, decompose_shares, locked, merged_stats, missing_parts, parse_shard,
    image_codes, read_part_stats, require_parts, unit_tags, video_record, write_merged,
)
from videolavit.data.tokens import write_token_meta
from videolavit.errors import ConfigError, require_path
from videolavit.inference.media_tokens import (
    MediaTokenizer, VideoTokens, clip_tokens, per_frame_tokens, token_saving,
)
from videolavit.runner import stage_entry
from videolavit.vocab import Vocab

STAGE = "tokenize"
_PLACEHOLDERS = re.compile(r"<video>\n?|<image>\n?")


# ---- token counts -------------------------------------------------------------------------------------------------
def paper_token_counts() -> dict[str, float]:
    """The saving with the paper profile's token counts (visual ρ·patches, motion from its motion tokenizer grid)."""
    from videolavit.config import load_config
    from videolavit.models.motion_tokenizer import MotionTokenizer

    paper = load_config(profile="paper", params_file=None)
    vt = paper.visual_tokenizer.model
    size = int(vt.image_size or paper.video.keyframe_size)
    visual = float(vt.keep_ratio) * (size // int(vt.patch_size)) ** 2
    with torch.device("meta"):
        motion = float(MotionTokenizer(**section_kwargs(paper.motion_tokenizer.model)).tokens_per_clip)
    frames = int(paper.video.clip_frames)
    clip, per_frame = clip_tokens(visual, motion), per_frame_tokens([visual] * frames)
    return {
        "paper/visual_tokens_per_image": visual,
        "paper/motion_tokens_per_clip": motion,
        "paper/tokens_per_clip": clip,
        "paper/tokens_per_clip_per_frame_baseline": per_frame,
        "token_saving_paper_counts": token_saving(clip, per_frame),
    }


# ---- text ---------------------------------------------------------------------------------------------------------
def corpus_texts(cfg: DictConfig) -> list[str]:
    """The train text: captions, QA, and the instruction conversations (when the corpus has them) in the LM's template."""
    from videolavit.data.conversation import get_template, render

    texts = []
    for s in read_manifest(cfg.paths.corpus, "train"):
        texts.append(s.caption)
        texts.extend(f"{q.question} {q.answer}" for q in s.qa)
    template = get_template(str(cfg.lm.template))
    convs = read_instruct(cfg.paths.corpus, "train") if (Path(cfg.paths.corpus) / INSTRUCT_FILE).is_file() else []
    for conv in convs:
        texts.append(_PLACEHOLDERS.sub("", render(conv.conversations, template, eos="")))
    return [t for t in texts if t.strip()]


def build_text_tokenizer(cfg: DictConfig, out_dir: Path):
    """``(tokenizer, source)``: a copy of the configured local tokenizer, or a BPE trained on the corpus train text."""
    from videolavit.data.text_tokenizer import load_text_tokenizer, train_bpe_tokenizer

    path = cfg.tokenize.text_tokenizer_path
    if path:
        tokenizer = load_text_tokenizer(path)
        tokenizer.save_pretrained(str(out_dir))
        return tokenizer, str(path)
    texts = corpus_texts(cfg)
    tokenizer = train_bpe_tokenizer(texts, int(cfg.tokenize.text_vocab_size), out_dir, int(cfg.tokenize.text_min_frequency))
    return tokenizer, "bpe"


def rounded_text_size(length: int, multiple: int) -> int:
    multiple = max(1, int(multiple))
    return int(math.ceil(length / multiple) * multiple)


def _rejected(clips_dir: Path) -> set[str]:
    path = clips_dir / "rejects.jsonl"
    if not path.is_file():
        return set()
    return {json.loads(line)["id"] for line in path.read_text().splitlines() if line.strip()}


def _clear_outputs(tokens_dir: Path, parts: bool = True) -> None:
    """Shards of an earlier run would be read with these (a smaller run writes fewer files)."""
    for split in SPLITS:
        for path in tokens_dir.glob(f"{split}-*.jsonl"):
            path.unlink()
    (tokens_dir / "meta.json").unlink(missing_ok=True)
    if parts:
        shutil.rmtree(tokens_dir / "text_tokenizer", ignore_errors=True)
        shutil.rmtree(tokens_dir / PARTS_DIR, ignore_errors=True)


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std())


def write_unit(split: str, tag: str, cfg: DictConfig, media: MediaTokenizer, vocab: Vocab, text_ids, rejected: set,
               fingerprint: dict) -> None:
    """Tokenize one unit (manifest share ``tag`` of a split and the clip tars decompose made from it) and write its
    records in corpus order to its part file, streaming: a batch of clips and one video's codes at a time."""
    tk, corpus_dir = cfg.tokenize, Path(cfg.paths.corpus)
    i, n = parse_shard(tag.replace("of", "/"))
    budget = (int(tk.baseline_clips) if tk.baseline_clips is not None else 1 << 62) if split == tk.baseline_split else 0
    tars = [p for p in clip_shard_urls(cfg.paths.clips, split) if Path(p).name.startswith(f"{split}-{tag}-")]
    clips = VideoTokens(media, tars, tk.ablation_frames, budget)
    videos = clips.videos()
    images = image_codes(media, iter_manifest_share(corpus_dir, split, i, n), corpus_dir)
    stats = TokenStats()
    writer = PartWriter(cfg.paths.tokens, split, tag)
    try:
        ahead = next(videos, None)
        for s in iter_manifest_share(corpus_dir, split, i, n):
            record = {"id": s.id, "kind": s.kind, "split": split}
            if s.kind == "video":
                if ahead is None or ahead[0] != s.id:
                    stats.skipped["rejected" if s.id in rejected else "no_clips"] += 1
                    continue
                _, codes, frames = ahead
                ahead = next(videos, None)
                tokens = video_record(codes, frames, vocab)
                record.update(tokens)
                stats.clip_tokens += [clip_tokens(len(v), len(m)) for v, m in codes.values()]
                stats.keyframe_tokens += [len(v) for v, _ in codes.values()]
                stats.media_lengths.append(len(tokens["media"]))
                stats.frames_lengths.append(len(tokens["frames_media"]))
            else:
                key, visual = next(images)
                assert key == s.id, (key, s.id)  # both walk the same manifest share
                record.update({"media": vocab.image_span(visual), "clip_spans": []})
                stats.image_tokens.append(len(visual))
            record["caption"], record["caption_text"] = text_ids(s.caption), s.caption
            record["qa"] = [
                {"question": text_ids(q.question), "answer": text_ids(q.answer), "question_text": q.question,
                 "answer_text": q.answer, "type": q.type}
                for q in s.qa
            ]
            stats.caption_tokens.append(len(record["caption"]))
            writer.write(record)
        if ahead is not None:
            raise ConfigError(
                f"clip shards {split}-{tag}-*.tar hold video '{ahead[0]}' out of manifest order (or not in manifest share "
                f"{tag} of {split}): tokenize streams both in the order decompose writes them; re-run `videolavit decompose`"
            )
    except BaseException:
        writer.abandon()
        raise
    stats.counts[split] = writer.written
    if clips.clips_seen and clips.frames_source != "frames":
        stats.frames_source = clips.frames_source
    stats.baseline = clips.baseline
    writer.finish({"fingerprint": fingerprint, **asdict(stats)})


def metrics_of(stats: TokenStats, vocab: Vocab, motion_per_clip: int, text_size: int) -> dict[str, float]:
    clip_sum, frames_sum = sum(c for c, _ in stats.baseline), sum(f for _, f in stats.baseline)
    keyframe_mean, keyframe_std = _mean_std(stats.keyframe_tokens)
    return {
        "tokens_per_clip": _mean_std(stats.clip_tokens)[0],
        "tokens_per_clip_per_frame_baseline": frames_sum / len(stats.baseline) if stats.baseline else float("nan"),
        "token_saving": token_saving(clip_sum, frames_sum) if stats.baseline else float("nan"),
        **paper_token_counts(),
        "motion_tokens_per_clip": float(motion_per_clip),
        "visual_tokens_per_keyframe": keyframe_mean,
        "visual_tokens_per_keyframe_std": keyframe_std,
        "visual_tokens_per_frame": _mean_std(stats.frame_tokens)[0],
        "visual_tokens_per_image": _mean_std(stats.image_tokens)[0],
        "media_tokens_per_video": _mean_std(stats.media_lengths)[0],
        "frames_media_tokens_per_video": _mean_std(stats.frames_lengths)[0],
        "caption_tokens": _mean_std(stats.caption_tokens)[0],
        "baseline_clips": float(len(stats.baseline)),
        "clips": float(len(stats.clip_tokens)),
        "text_tokenizer_size": float(text_size),
        "vocab_size": float(vocab.size),
        "videos_skipped_rejected": float(stats.skipped["rejected"]),
        "videos_skipped_no_clips": float(stats.skipped["no_clips"]),
        **{f"records_{split}": float(n) for split, n in stats.counts.items()},
    }


def _text_tokenizer(cfg: DictConfig, tokens_dir: Path, reuse: bool):
    """(tokenizer, source); a sharded run builds it once (under a lock) and the other shards load it."""
    from videolavit.data.text_tokenizer import load_text_tokenizer

    out = tokens_dir / "text_tokenizer"
    with locked(tokens_dir / PARTS_DIR / "text_tokenizer.lock"):
        source = str(cfg.tokenize.text_tokenizer_path) if cfg.tokenize.text_tokenizer_path else "bpe"
        if reuse and (out / "tokenizer.json").is_file():
            return load_text_tokenizer(str(out)), source
        tmp = tokens_dir / PARTS_DIR / "text_tokenizer.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        tokenizer, source = build_text_tokenizer(cfg, tmp)
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
        return load_text_tokenizer(str(out)), source


def merge(cfg: DictConfig, shares: int, started: float) -> dict[str, float]:
    """The parts → ``{split}-*.jsonl``, ``meta.json`` and the stage's metrics (what one process writes)."""
    tokens_dir = Path(cfg.paths.tokens)
    require_parts(tokens_dir, SPLITS, shares)
    with locked(tokens_dir / PARTS_DIR / "merge.lock"):
        stats = merged_stats(tokens_dir, shares, cfg)
        info = read_part_stats(tokens_dir, SPLITS[0], unit_tags(shares)[0])["fingerprint"]
        for split in SPLITS:
            write_merged(tokens_dir, split, shares, int(cfg.tokenize.records_per_shard))
        vocab = Vocab(**info["vocab"])
        tk = cfg.tokenize
        meta_path = write_token_meta(
            tokens_dir,
            {
                "vocab": info["vocab"],
                "motion_tokens_per_clip": info["motion_tokens_per_clip"],
                "counts": stats.counts,
                "skipped": stats.skipped,
                "source": "tokenize",
                "text_tokenizer": info["text_tokenizer"],
                "tokenizers": info["tokenizers"],
                "frames_media": {"frames_per_video": tk.ablation_frames if tk.ablation_frames is not None else "2 per clip",
                                 "source": stats.frames_source},
            },
        )
    shutil.rmtree(tokens_dir / PARTS_DIR, ignore_errors=True)  # merged: the token shards hold it all (no copy twice)
    tracking.active().log_artifact(meta_path, "tokens")
    metrics = metrics_of(stats, vocab, int(info["motion_tokens_per_clip"]), int(info["text_tokenizer"]["size"]))
    metrics["seconds"] = time.perf_counter() - started
    print(
        f"tokenize: {sum(stats.counts.values())} records ({len(stats.clip_tokens)} clips; {stats.skipped['rejected']} "
        f"rejected and {stats.skipped['no_clips']} clip-less videos skipped) in {metrics['seconds']:.1f} s; "
        f"{metrics['tokens_per_clip']:.1f} tokens per clip ({metrics['visual_tokens_per_keyframe']:.1f} visual + "
        f"{info['motion_tokens_per_clip']} motion + 4) vs {metrics['tokens_per_clip_per_frame_baseline']:.1f} frame by "
        f"frame: saving {metrics['token_saving']:.3f} (paper counts: {metrics['token_saving_paper_counts']:.3f}); vocab "
        f"{vocab.size} ids → {tokens_dir}"
    )
    return metrics


@stage_entry(STAGE)
def run(cfg: DictConfig) -> dict[str, float]:
    """One process (every unit, then the merge), ``tokenize.shard=i/n`` (units i, i+n, …; the merge once every part is
    in) or ``tokenize.merge=true`` (the merge alone)."""
    started = time.perf_counter()
    tk = cfg.tokenize
    if tk.baseline_split not in SPLITS:
        raise ConfigError(f"tokenize.baseline_split must be one of {SPLITS}, got {tk.baseline_split!r}")
    if tk.ablation_frames is not None and int(tk.ablation_frames) < 1:
        raise ConfigError(f"tokenize.ablation_frames must be ≥ 1 or null, got {tk.ablation_frames}")
    require_path(cfg.paths.corpus, "corpus", "Build it with `videolavit corpus`.")
    clips_dir = require_path(cfg.paths.clips, "clip shards", "Make them with `videolavit decompose`.")
    shares = decompose_shares(clips_dir, SPLITS)
    tokens_dir = Path(cfg.paths.tokens)
    if tk.get("merge"):
        return merge(cfg, shares, started)
    shard_i, shard_n = parse_shard(tk.shard) if tk.get("shard") else (0, 1)
    accelerator = str(cfg.compute.accelerator)
    media = MediaTokenizer(cfg, "cuda" if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available() else "cpu")
    check_motion_model(cfg.paths.clips, media.motion, media.paths["motion_tokenizer"], "tokenize.motion_tokenizer_path")
    tokens_dir.mkdir(parents=True, exist_ok=True)
    _clear_outputs(tokens_dir, parts=not tk.get("shard"))
    text_tokenizer, text_source = _text_tokenizer(cfg, tokens_dir, reuse=bool(tk.get("shard")))
    vocab = Vocab(
        text_size=rounded_text_size(len(text_tokenizer), int(tk.text_size_multiple)),
        visual_codes=media.visual.codebook_size,
        motion_codes=media.motion.codebook_size,
    )
    settings = {k: v for k, v in OmegaConf.to_container(tk, resolve=True).items() if k not in ("shard", "merge")}
    fingerprint = {
        "vocab": {"text_size": vocab.text_size, "visual_codes": vocab.visual_codes, "motion_codes": vocab.motion_codes},
        "motion_tokens_per_clip": int(media.motion.tokens_per_clip),
        "text_tokenizer": {"source": text_source, "size": len(text_tokenizer)},
        "tokenizers": media.paths,
        "tokenize": settings,
    }

    def text_ids(text: str) -> list[int]:
        return text_tokenizer(text, add_special_tokens=False)["input_ids"]

    rejected = _rejected(clips_dir)
    mine = unit_tags(shares)[shard_i::shard_n]
    for split in SPLITS:
        for tag in mine:
            write_unit(split, tag, cfg, media, vocab, text_ids, rejected, fingerprint)
    if missing_parts(tokens_dir, SPLITS, shares):
        print(f"tokenize: shard {shard_i}/{shard_n} wrote units {', '.join(mine) or 'none'}; the merge runs when every "
              f"part is in (or `videolavit tokenize --merge`)")
        return {"units": float(len(mine) * len(SPLITS)), "seconds": time.perf_counter() - started}
    return merge(cfg, shares, started)
