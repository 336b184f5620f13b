"""Token part files of a sharded ``tokenize`` run and their merge into the token shards of data/tokens.py.

The unit of work is one decompose share ``<split>-<i>of<n>``: manifest share i of n (``iter_manifest_share``) and the
clip tars ``<split>-<i>of<n>-*.tar`` decompose made from it, both in manifest order. A unit's records go to
``parts/<split>-<i>of<n>.jsonl`` (written as ``.partial``, renamed when complete) beside its statistics
(``.stats.json``); the merge concatenates the parts in share order and cuts them into ``{split}-{k:05d}.jsonl`` of
``records_per_shard`` lines: the files a single process writes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from videolavit.data.images import read_image
from videolavit.data.shards import SPLITS, iter_clip_records
from videolavit.errors import ConfigError, MissingArtifactError
from videolavit.vocab import Vocab

PARTS_DIR = "parts"
_TAG = re.compile(r"^(?P<split>[a-z]+)-(?P<i>\d+)of(?P<n>\d+)-\d+\.tar$")


def parse_shard(spec: str, key: str = "tokenize.shard") -> tuple[int, int]:
    try:
        i, n = (int(x) for x in str(spec).split("/"))
    except ValueError:
        raise ConfigError(f"{key} must look like 'i/n' (e.g. 0/4), got {spec!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ConfigError(f"{key} {spec!r}: need 0 <= i < n")
    return i, n


def decompose_shares(clips_dir: str | Path, splits) -> int:
    """How many shares decompose split the manifests into (the ``n`` of every ``<split>-<i>of<n>-*.tar``; 1 if none)."""
    counts = {int(m["n"]) for p in Path(clips_dir).glob("*.tar") if (m := _TAG.match(p.name)) and m["split"] in splits}
    if len(counts) > 1:
        raise ConfigError(f"clip shards in '{clips_dir}' come from decompose runs with different share counts "
                          f"{sorted(counts)}: re-run decompose with one --shard count")
    return counts.pop() if counts else 1


def unit_tags(shares: int) -> list[str]:
    return [f"{i}of{shares}" for i in range(shares)]


def part_path(tokens_dir: str | Path, split: str, tag: str, suffix: str = ".jsonl") -> Path:
    return Path(tokens_dir) / PARTS_DIR / f"{split}-{tag}{suffix}"


class PartWriter:
    """One unit's records, one JSON line each, under ``.partial`` until :meth:`finish` writes the stats and renames."""

    def __init__(self, tokens_dir: str | Path, split: str, tag: str):
        self.path = part_path(tokens_dir, split, tag)
        self.stats_path = part_path(tokens_dir, split, tag, ".stats.json")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(self.path.name + ".partial")
        self._file = open(self.tmp, "w")
        self.written = 0

    def write(self, record: dict) -> None:
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
        self.written += 1

    def finish(self, stats: dict) -> None:
        """Stats first, the records file last: a part counts as done once its ``.jsonl`` exists."""
        self._file.close()
        tmp = self.stats_path.with_name(self.stats_path.name + ".partial")
        tmp.write_text(json.dumps(stats, sort_keys=True))
        os.replace(tmp, self.stats_path)
        os.replace(self.tmp, self.path)

    def abandon(self) -> None:
        self._file.close()
        self.tmp.unlink(missing_ok=True)


def missing_parts(tokens_dir: str | Path, splits, shares: int) -> list[str]:
    return [f"{s}-{t}" for s in splits for t in unit_tags(shares) if not part_path(tokens_dir, s, t).is_file()]


def read_part_stats(tokens_dir: str | Path, split: str, tag: str) -> dict:
    return json.loads(part_path(tokens_dir, split, tag, ".stats.json").read_text())


def iter_part_lines(tokens_dir: str | Path, split: str, shares: int) -> Iterator[str]:
    for tag in unit_tags(shares):
        with open(part_path(tokens_dir, split, tag)) as f:
            yield from f


def write_merged(tokens_dir: str | Path, split: str, shares: int, records_per_shard: int) -> int:
    """The split's parts, in share order, as ``{split}-{k:05d}.jsonl`` (each written as ``.partial`` and renamed)."""
    tokens_dir = Path(tokens_dir)
    for old in tokens_dir.glob(f"{split}-*.jsonl"):
        old.unlink()
    written, index, out, tmp = 0, 0, None, None
    for line in iter_part_lines(tokens_dir, split, shares):
        if out is None or written % records_per_shard == 0 and written:
            if out is not None:
                out.close()
                os.replace(tmp, tmp.with_suffix(""))
            tmp = tokens_dir / f"{split}-{index:05d}.jsonl.partial"
            out, index = open(tmp, "w"), index + 1
        out.write(line)
        written += 1
    if out is not None:
        out.close()
        os.replace(tmp, tmp.with_suffix(""))
    return written


@contextlib.contextmanager
def locked(path: Path):
    """An exclusive flock on ``path`` (two shards finishing together merge once, one after the other)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def require_parts(tokens_dir: str | Path, splits, shares: int) -> None:
    missing = missing_parts(tokens_dir, splits, shares)
    if missing:
        raise MissingArtifactError(
            f"tokenize --merge: parts {', '.join(missing[:5])}{' …' if len(missing) > 5 else ''} are not in "
            f"'{Path(tokens_dir) / PARTS_DIR}'. Run `videolavit tokenize --shard i/n` for every i first."
        )


def clip_orders(paths: Sequence[str]) -> Iterator[tuple[str, list[int]]]:
    """(video_id, its clip indices in time order) per video, in shard order (metadata only; a video's clips are
    consecutive in decompose's tars)."""
    video, clips = None, []
    for record in iter_clip_records(None, "", fields=("meta",), paths=paths):
        v = record["meta"]["video_id"]
        if v != video and video is not None:
            yield video, sorted(clips)
            clips = []
        video = v
        clips.append(int(record["meta"]["clip"]))
    if video is not None:
        yield video, sorted(clips)


def video_record(clips: dict, frames: dict, vocab: Vocab) -> dict:
    """``media``, ``clip_spans``, ``frames_media`` of one video."""
    media, spans = [], []
    for clip in sorted(clips):
        span = vocab.clip_span(*clips[clip])
        spans.append([len(media), len(media) + len(span)])
        media += span
    frames_media = [t for i in sorted(frames) for t in vocab.image_span(frames[i])]
    return {"media": media, "clip_spans": spans, "frames_media": frames_media}


@dataclass
class TokenStats:
    """What the records hold, accumulated over the splits (the stage's metrics)."""

    counts: dict = field(default_factory=dict)  # split → records written
    skipped: dict = field(default_factory=lambda: {"rejected": 0, "no_clips": 0})
    clip_tokens: list = field(default_factory=list)  # per clip: visual + motion + 4
    keyframe_tokens: list = field(default_factory=list)
    image_tokens: list = field(default_factory=list)
    caption_tokens: list = field(default_factory=list)
    media_lengths: list = field(default_factory=list)  # per video
    frames_lengths: list = field(default_factory=list)  # per video (frames_media)
    baseline: list = field(default_factory=list)  # (clip tokens, per-frame tokens) per baseline clip
    frame_tokens: list = field(default_factory=list)  # visual tokens of each baseline frame
    frames_source: str = "frames"


def merged_stats(tokens_dir: Path, shares: int, cfg: Any) -> TokenStats:
    """The units' statistics in share order: what one process accumulates (baseline: its first clips)."""
    tk, stats = cfg.tokenize, TokenStats()
    fingerprints = set()
    for split in SPLITS:
        stats.counts[split] = 0
        for tag in unit_tags(shares):
            part = read_part_stats(tokens_dir, split, tag)
            fingerprints.add(json.dumps(part.pop("fingerprint"), sort_keys=True))
            stats.counts[split] += part["counts"][split]
            for k in stats.skipped:
                stats.skipped[k] += part["skipped"][k]
            for name in ("clip_tokens", "keyframe_tokens", "image_tokens", "caption_tokens", "media_lengths", "frames_lengths"):
                getattr(stats, name).extend(part[name])
            stats.baseline += part["baseline"]
            if part["frames_source"] != "frames":
                stats.frames_source = part["frames_source"]
    if len(fingerprints) > 1:
        raise ConfigError(f"the parts in '{tokens_dir / PARTS_DIR}' were made with different tokenize settings or "
                          "tokenizers: re-run every `videolavit tokenize --shard i/n` with the same config")
    stats.baseline = stats.baseline[: int(tk.baseline_clips)] if tk.baseline_clips is not None else stats.baseline
    stats.frame_tokens = [c for entry in stats.baseline for c in entry[2]]
    stats.baseline = [(c, f) for c, f, _ in stats.baseline]
    return stats


def image_codes(media: Any, samples: Iterator, corpus_dir: Path) -> Iterator[tuple[str, np.ndarray]]:
    """(id, visual codes) of the image samples, encoded ``batch_size`` at a time."""
    chunk: list = []

    def encode() -> Iterator[tuple[str, np.ndarray]]:
        yield from zip((c.id for c in chunk), media.images([read_image(c.media_path(corpus_dir), media.image_size) for c in chunk]))

    for s in samples:
        if s.kind == "image":
            chunk.append(s)
        if len(chunk) == media.batch_size:
            yield from encode()
            chunk = []
    if chunk:
        yield from encode()
