"""Token shards straight from the synthetic corpus plan, with no pixels and no tokenizers: for tests, benchmarks and
LM recipe design while (or without) the real tokenizers run.

The plan (captions, typed QA, held-out (shape, color) pairs, instruct.jsonl) is the real one of ``data/synthetic.py``;
only the codes are made up, in the format of ``data/tokens.py``. Keyframe codes carry the background, and each object's
color and shape in separate codes (so held-out pairs are answerable from their parts, as a good visual tokenizer would
allow); motion codes carry each object's direction and speed and the background pan; ``frames_media`` repeats the
keyframe codes per frame and carries no motion, like the no-motion ablation. Every code has a random variant, and
filler codes are random, so the LM must learn which codes matter.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np

from videolavit.data.manifest import write_instruct, write_manifest, write_meta
from videolavit.data.synthetic import (
    BACKGROUNDS, COLORS, DIRECTIONS, SHAPES, SIZES, SPEEDS, Geometry, conversations, plan_corpus, to_sample,
)
from videolavit.data.tokens import TokenShardWriter, write_token_meta
from videolavit.vocab import Vocab

VARIANTS = 4  # code variants per attribute value


def _corpus_cfg(train_videos: int, val_videos: int, test_videos: int, images: int, seed: int, max_clips: int):
    return SimpleNamespace(
        seed=seed, train_videos=train_videos, val_videos=val_videos, test_videos=test_videos, images=images,
        heldout_pairs=4, min_clips=1, max_clips=max_clips,
    )


class _Codebook:
    """Disjoint code ranges for each attribute value (``VARIANTS`` codes each), the rest is filler."""

    def __init__(self, size: int, groups: dict[str, tuple]):
        self.ranges: dict[tuple[str, str], int] = {}
        start = 0
        for group, values in groups.items():
            for value in values:
                self.ranges[(group, value)] = start
                start += VARIANTS
        if start > size:
            raise ValueError(f"a toy codebook needs at least {start} codes, got {size}")
        self.size, self.filler = size, start

    def code(self, rng: np.random.Generator, group: str, value: str) -> int:
        return self.ranges[(group, value)] + int(rng.integers(VARIANTS))

    def noise(self, rng: np.random.Generator) -> int:
        return int(rng.integers(self.filler, self.size)) if self.filler < self.size else int(rng.integers(self.size))


def _keyframe_codes(spec, book: _Codebook, rng, tokens: int) -> list[int]:
    # An object's codes stay together (one image region), so the LM can tell which color goes with which shape.
    blocks = []
    for o in spec.objects:
        n = 2 if o.size == "small" else 3
        blocks.append([book.code(rng, group, value) for _ in range(n) for group, value in (("color", o.color), ("shape", o.shape))])
    rest = max(0, tokens - sum(len(b) for b in blocks))
    scene = [book.code(rng, "background", spec.background) if i % 2 == 0 else book.noise(rng) for i in range(rest)]
    scene = [scene[i] for i in rng.permutation(len(scene))]
    for block in blocks:
        at = int(rng.integers(len(scene) + 1))
        scene[at:at] = block
    return scene


def _motion_codes(spec, clip: int, book: _Codebook, rng, tokens: int) -> list[int]:
    codes = [book.code(rng, "pan", spec.pan) for _ in range(tokens // 4)]
    for o in spec.objects:
        codes += [book.code(rng, "direction", o.directions[clip]) for _ in range(3)]
        codes += [book.code(rng, "speed", o.speeds[clip]) for _ in range(2)]
    while len(codes) < tokens:
        codes.append(book.noise(rng))
    return codes[:tokens]  # positional: motion codes keep their grid order


def write_toy_token_corpus(
    corpus_dir: str | Path,
    tokens_dir: str | Path,
    train_videos: int = 24,
    val_videos: int = 6,
    test_videos: int = 6,
    images: int = 12,
    seed: int = 0,
    visual_codes: int = 128,
    motion_codes: int = 64,
    keyframe_tokens: int = 16,
    motion_tokens: int = 12,
    max_clips: int = 3,
    frames_per_video: int = 4,
    text_vocab_size: int = 400,
) -> Vocab:
    """Write ``{train,val,test}.jsonl`` + ``instruct.jsonl`` + ``meta.json`` to corpus_dir and token shards, meta.json
    and ``text_tokenizer/`` to tokens_dir; returns the vocabulary."""
    from videolavit.data.text_tokenizer import train_bpe_tokenizer
    from videolavit.data.conversation import VICUNA_SYSTEM

    corpus_dir, tokens_dir = Path(corpus_dir), Path(tokens_dir)
    geo = Geometry(256, 160, 12.0, 48, 2)
    specs, heldout = plan_corpus(_corpus_cfg(train_videos, val_videos, test_videos, images, seed, max_clips), geo)
    text_rng = np.random.default_rng([seed, 1])
    samples: dict[str, list] = {"train": [], "val": [], "test": []}
    convs = []
    for spec in specs:
        sample = to_sample(spec, text_rng, geo)
        samples[spec.split].append(sample)
        convs.extend(conversations(sample, spec.split, text_rng))
    for split, items in samples.items():
        write_manifest(corpus_dir, split, items)
    write_instruct(corpus_dir, convs)
    write_meta(corpus_dir, {"source": "synthetic", "seed": seed, "heldout": [{"shape": s, "color": c} for s, c in heldout]})

    texts = [VICUNA_SYSTEM, "USER: ASSISTANT:"]
    for items in samples.values():
        for s in items:
            texts.append(s.caption)
            texts.extend(f"{q.question} {q.answer}" for q in s.qa)
    texts.extend(turn["value"] for c in convs for turn in c.conversations)
    tokenizer = train_bpe_tokenizer(texts, text_vocab_size, tokens_dir / "text_tokenizer", min_frequency=1)
    vocab = Vocab(text_size=len(tokenizer), visual_codes=visual_codes, motion_codes=motion_codes)
    visual = _Codebook(visual_codes, {"background": BACKGROUNDS, "color": tuple(COLORS), "shape": SHAPES})
    motion = _Codebook(motion_codes, {"pan": ("none", *DIRECTIONS), "direction": tuple(DIRECTIONS), "speed": tuple(SPEEDS)})
    _ = SIZES  # size is carried by the number of object codes

    def encode(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    code_rng = np.random.default_rng([seed, 2])
    specs_by_id = {spec.id: spec for spec in specs}
    counts = {}
    for split, items in samples.items():
        with TokenShardWriter(tokens_dir, split) as writer:
            for s in items:
                spec = specs_by_id[s.id]
                record = {"id": s.id, "kind": s.kind, "split": split, "caption": encode(s.caption), "caption_text": s.caption}
                if s.kind == "image":
                    record["media"] = vocab.image_span(_keyframe_codes(spec, visual, code_rng, keyframe_tokens))
                    record["clip_spans"] = []
                else:
                    media, spans = [], []
                    for k in range(spec.num_clips):
                        clip = vocab.clip_span(
                            _keyframe_codes(spec, visual, code_rng, keyframe_tokens),
                            _motion_codes(spec, k, motion, code_rng, motion_tokens),
                        )
                        spans.append([len(media), len(media) + len(clip)])
                        media += clip
                    record["media"], record["clip_spans"] = media, spans
                    record["frames_media"] = [
                        t for _ in range(frames_per_video) for t in vocab.image_span(_keyframe_codes(spec, visual, code_rng, keyframe_tokens))
                    ]
                record["qa"] = [
                    {"question": encode(q.question), "answer": encode(q.answer), "question_text": q.question,
                     "answer_text": q.answer, "type": q.type}
                    for q in s.qa
                ]
                writer.write(record)
        counts[split] = len(items)
    write_token_meta(
        tokens_dir,
        {"vocab": {"text_size": vocab.text_size, "visual_codes": visual_codes, "motion_codes": motion_codes},
         "motion_tokens_per_clip": motion_tokens, "counts": counts, "source": "toy"},
    )
    return vocab
