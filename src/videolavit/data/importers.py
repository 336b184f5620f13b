"""Importers: real dataset annotation files → the corpus manifest of :mod:`videolavit.data.manifest`.

``corpus.source`` picks the format, ``corpus.import_path`` the annotation file and ``corpus.media_dir`` where the
videos/images are (default: the annotation file's folder). Imported paths are absolute.

- ``webvid``: CSV ``videoid, contentUrl, duration, page_dir, name``; caption = ``name``; video at
  ``<media>/<page_dir>/<videoid>.mp4`` or ``<media>/<videoid>.mp4``.
- ``msrvtt``: JSON ``{"videos": [{"video_id", "split"}], "sentences": [{"video_id", "caption"}]}``; all captions
  kept in ``attributes["captions"]``, the first is the caption.
- ``msvd_qa`` / ``msrvtt_qa``: JSON list of ``{"video_id" | "video", "question", "answer", "id"}``, or the
  Video-ChatGPT evaluation pair ``test_q.json`` (``video_name, question, question_id``) + ``test_a.json``
  (``answer, type, question_id``) joined by ``question_id`` (``import_path`` = either file or their folder).
- ``llava``: JSON list of ``{"id", "image"?, "conversations": [{"from", "value"}]}`` (image instructions).
- ``videochatgpt``: JSON list of ``{"video_id", "q", "a"}`` (video instructions).

Split: ``corpus.import_split`` when set, else the dataset's own split field (MSR-VTT), else a split word in the file
name (``train_qa.json``), else train (test for the QA sets, which are evaluation sets). Media the annotation names
but the media dir lacks are left out and listed in ``missing.jsonl``; a malformed file is a CorpusError.
"""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np

from videolavit.data.manifest import (
    MISSING_FILE,
    QA,
    SPLITS,
    Conversation,
    Sample,
    corpus_counts,
    write_instruct,
    write_jsonl,
    write_manifest,
    write_meta,
)
from videolavit.errors import ConfigError, CorpusError

SOURCES = ("webvid", "msrvtt", "msvd_qa", "msrvtt_qa", "llava", "videochatgpt")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mkv", ".mov")
DEFAULT_SPLIT = {"webvid": "train", "msrvtt": "train", "msvd_qa": "test", "msrvtt_qa": "test", "llava": "train", "videochatgpt": "train"}
SPLIT_WORDS = {"train": "train", "training": "train", "val": "val", "valid": "val", "validate": "val",
               "validation": "val", "dev": "val", "test": "test", "testing": "test"}
# ActivityNet-QA answer types (test_a.json): 0 motion, 1 spatial, 2 temporal, 3-8 free-form
ACTIVITYNET_TYPES = {0: "motion", 2: "temporal"}


@dataclass
class ImportResult:
    source: str
    samples: dict[str, list[Sample]] = field(default_factory=lambda: {s: [] for s in SPLITS})
    conversations: list[Conversation] = field(default_factory=list)
    missing: list[dict] = field(default_factory=list)


def import_dataset(source: str, import_path: Optional[str], media_dir: Optional[str] = None, split: Optional[str] = None) -> ImportResult:
    """Read one dataset annotation file (and find its media) into manifest samples and conversations."""
    if source not in SOURCES:
        raise ConfigError(f"corpus.source '{source}' is not an importer. Valid: synthetic, {', '.join(SOURCES)}")
    if not import_path:
        raise ConfigError(f"corpus.source={source} needs corpus.import_path (the dataset's annotation file)")
    path = Path(import_path)
    if not path.exists():
        raise ConfigError(f"corpus.import_path '{path}' does not exist")
    if split is not None and split not in SPLITS:
        raise ConfigError(f"corpus.import_split '{split}' is not a split. Valid: {', '.join(SPLITS)}")
    media = Path(media_dir) if media_dir else (path if path.is_dir() else path.parent)
    if not media.is_dir():
        raise ConfigError(f"corpus.media_dir '{media}' is not a directory")
    reader = {
        "webvid": _webvid, "msrvtt": _msrvtt, "msvd_qa": _video_qa, "msrvtt_qa": _video_qa,
        "llava": _llava, "videochatgpt": _videochatgpt,
    }[source]
    result = ImportResult(source)
    reader(result, path, media, split or _file_split(path) or DEFAULT_SPLIT[source], explicit=split is not None)
    return result


def write_imported(corpus_dir: str | Path, result: ImportResult, seed: int = 0, val_fraction: float = 0.0, extra_meta: Optional[dict] = None) -> dict:
    """Write manifests, instruct.jsonl, missing.jsonl and meta.json; returns the counts."""
    if val_fraction > 0 and not result.samples["val"] and result.samples["train"]:
        _carve_val(result, seed, val_fraction)
    for split, items in result.samples.items():
        write_manifest(corpus_dir, split, items)
    write_instruct(corpus_dir, result.conversations)
    write_jsonl(Path(corpus_dir) / MISSING_FILE, result.missing)
    counts = {**corpus_counts(result.samples, result.conversations), "missing_media": len(result.missing)}
    meta = {"source": result.source, "seed": int(seed), "attributes": {}, "counts": counts, "heldout": [], **(extra_meta or {})}
    write_meta(corpus_dir, meta)
    return counts


def _carve_val(result: ImportResult, seed: int, fraction: float) -> None:
    """Move a seeded ``fraction`` of train samples (and their conversations) to val."""
    train = result.samples["train"]
    n = max(1, int(round(len(train) * fraction)))
    chosen = set(np.random.default_rng(seed).permutation(len(train))[:n].tolist())
    result.samples["val"] = [s for i, s in enumerate(train) if i in chosen]
    result.samples["train"] = [s for i, s in enumerate(train) if i not in chosen]
    moved = {s.id for s in result.samples["val"]}
    for conv in result.conversations:
        if conv.media_id in moved:
            conv.split = "val"


# --------------------------------------------------------------------------------------------------------------------
# Helpers


def safe_id(text: str) -> str:
    """An id usable as a file name and a WebDataset key (no dots or slashes)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", str(text)).strip("_") or "sample"


def _file_split(path: Path) -> Optional[str]:
    words = re.split(r"[^a-z]+", path.stem.lower())
    found = {SPLIT_WORDS[w] for w in words if w in SPLIT_WORDS}
    return found.pop() if len(found) == 1 else None


def _load_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise CorpusError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CorpusError(f"{path}: cannot read ({exc})") from None


def _json_list(path: Path, what: str) -> list:
    data = _load_json(path)
    if not isinstance(data, list):
        raise CorpusError(f"{path}: expected a JSON list of {what}, got {type(data).__name__}")
    return data


def _field(entry: Any, keys: Iterable[str], path: Path, index: int, kind: type | tuple = str) -> Any:
    """The first of ``keys`` present in ``entry``; a CorpusError naming file, entry and keys when none is."""
    keys = tuple(keys)
    if not isinstance(entry, dict):
        raise CorpusError(f"{path}: entry {index} is not an object")
    for key in keys:
        if entry.get(key) is not None:
            value = entry[key]
            if not isinstance(value, kind):
                raise CorpusError(f"{path}: entry {index} field '{key}' has type {type(value).__name__}")
            return value
    raise CorpusError(f"{path}: entry {index} has no {' or '.join(repr(k) for k in keys)}")


def _find(candidates: list[Path]) -> Optional[Path]:
    for c in candidates:
        if c.is_file():
            return c
    return None


def _video_candidates(media: Path, name: str, prefixes: Iterable[str] = ("",)) -> list[Path]:
    """Files a video reference may name: as given when it has an extension, else each known extension."""
    out = []
    for prefix in prefixes:
        stem = prefix + name
        if Path(stem).suffix.lower() in VIDEO_EXTENSIONS:
            out.append(media / stem)
        else:
            out.extend(media / f"{stem}{ext}" for ext in VIDEO_EXTENSIONS)
    return out


class _Media:
    """Resolves media references once each, assigns unique sample ids and records what is missing."""

    def __init__(self, result: ImportResult, kind: str):
        self.result, self.kind = result, kind
        self.by_path: dict[Path, Sample] = {}
        self.split_of: dict[str, str] = {}
        self.ids: set[str] = set()
        self.missed: set[str] = set()

    def get(self, ref_id: str, candidates: list[Path], split: str) -> Optional[Sample]:
        found = _find(candidates)
        if found is None:
            if ref_id not in self.missed:
                self.missed.add(ref_id)
                self.result.missing.append({"id": ref_id, "kind": self.kind, "split": split, "expected": [str(c) for c in candidates[:6]]})
            return None
        found = Path(os.path.abspath(found))
        if found in self.by_path:
            return self.by_path[found]
        sid, n = safe_id(ref_id), 2
        while sid in self.ids:
            sid, n = f"{safe_id(ref_id)}_{n}", n + 1
        self.ids.add(sid)
        sample = Sample(sid, self.kind, str(found))
        self.by_path[found] = sample
        self.split_of[sid] = split
        self.result.samples[split].append(sample)
        return sample


def _qa_conversation(result: ImportResult, cid: str, sample: Sample, split: str, question: str, answer: str, qa_type: Optional[str]) -> None:
    turns = [{"from": "human", "value": f"<{sample.kind}>\n{question}"}, {"from": "gpt", "value": answer}]
    result.conversations.append(Conversation(cid, sample.id, sample.kind, split, turns, qa_type))


# --------------------------------------------------------------------------------------------------------------------
# Formats


def _webvid(result: ImportResult, path: Path, media: Path, split: str, explicit: bool) -> None:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            columns = set(reader.fieldnames or [])
            lacking = {"videoid", "name"} - columns
            if lacking:
                raise CorpusError(f"{path}: not a WebVid CSV, missing column(s) {sorted(lacking)}; found {sorted(columns)}")
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise CorpusError(f"{path}: cannot read CSV ({exc})") from None
    videos = _Media(result, "video")
    for lineno, row in enumerate(rows, start=2):
        vid = (row.get("videoid") or "").strip()
        if not vid:
            raise CorpusError(f"{path}:{lineno}: empty videoid")
        page = (row.get("page_dir") or "").strip()
        candidates = ([media / page / f"{vid}.mp4"] if page else []) + [media / f"{vid}.mp4"]
        sample = videos.get(vid, candidates, split)
        if sample is None:
            continue
        sample.caption = row.get("name") or ""
        sample.attributes = {"duration": _duration_seconds(row.get("duration")), "url": row.get("contentUrl") or ""}


def _duration_seconds(text: Optional[str]) -> Optional[float]:
    """WebVid durations are ISO 8601 (``PT00H00M11S``); plain numbers pass through."""
    if not text:
        return None
    m = re.fullmatch(r"P(?:T)?(?:(\d+(?:\.\d+)?)H)?(?:(\d+(?:\.\d+)?)M)?(?:(\d+(?:\.\d+)?)S)?", text.strip())
    if m and any(m.groups()):
        h, mi, s = (float(g or 0) for g in m.groups())
        return h * 3600 + mi * 60 + s
    try:
        return float(text)
    except ValueError:
        return None


def _msrvtt(result: ImportResult, path: Path, media: Path, split: str, explicit: bool) -> None:
    data = _load_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("videos"), list) or not isinstance(data.get("sentences"), list):
        raise CorpusError(f"{path}: expected MSR-VTT JSON {{'videos': [...], 'sentences': [...]}}")
    captions: dict[str, list[str]] = {}
    for i, s in enumerate(data["sentences"]):
        vid = str(_field(s, ["video_id"], path, i, (str, int)))
        captions.setdefault(vid, []).append(_field(s, ["caption"], path, i))
    videos = _Media(result, "video")
    for i, v in enumerate(data["videos"]):
        vid = str(_field(v, ["video_id"], path, i, (str, int)))
        vsplit = split
        if not explicit and v.get("split") is not None:
            vsplit = SPLIT_WORDS.get(str(v["split"]).lower())
            if vsplit is None:
                raise CorpusError(f"{path}: video {vid} has unknown split '{v['split']}' (expected train, validate, test)")
        sample = videos.get(vid, _video_candidates(media, vid), vsplit)
        if sample is None:
            continue
        caps = captions.get(vid, [])
        sample.caption = caps[0] if caps else ""
        sample.attributes = {"captions": caps}


def _video_qa(result: ImportResult, path: Path, media: Path, split: str, explicit: bool) -> None:
    pair = _qa_pair(path)
    entries = _joined_pair(*pair) if pair else _json_list(path, "question/answer entries")
    videos = _Media(result, "video")
    for i, e in enumerate(entries):
        question = _field(e, ["question"], path, i)
        answer = str(_field(e, ["answer"], path, i, (str, int, float)))
        ref = _field(e, ["video_id", "video", "video_name"], path, i, (str, int))
        if isinstance(ref, int) or str(ref).isdigit():
            candidates = _video_candidates(media, str(ref), ("", "video", "vid"))
        else:
            candidates = _video_candidates(media, str(ref), ("", "v_"))  # ActivityNet names drop the "v_"
        sample = videos.get(Path(str(ref)).stem if not isinstance(ref, int) else str(ref), candidates, split)
        if sample is None:
            continue
        qa_type = ACTIVITYNET_TYPES.get(e.get("type"), "other") if isinstance(e.get("type"), int) else "other"
        sample.qa.append(QA(question, answer, qa_type))
        qid = e.get("question_id", e.get("id"))
        cid = safe_id(f"{sample.id}_q{qid}" if qid is not None else f"{sample.id}_q{len(sample.qa) - 1}")
        _qa_conversation(result, cid, sample, videos.split_of[sample.id], question, answer, qa_type)


def _qa_pair(path: Path) -> Optional[tuple[Path, Path]]:
    """(questions, answers) of a Video-ChatGPT evaluation pair, or None for a plain QA list."""
    if path.is_dir():
        q, a = path / "test_q.json", path / "test_a.json"
        if not q.is_file() or not a.is_file():
            raise CorpusError(f"{path}: a QA folder must hold test_q.json and test_a.json")
        return q, a
    for q_tag, a_tag in (("_q", "_a"), ("_a", "_q")):
        if path.stem.endswith(q_tag):
            other = path.with_name(path.stem[: -len(q_tag)] + a_tag + path.suffix)
            if other.is_file():
                return (path, other) if q_tag == "_q" else (other, path)
    return None


def _joined_pair(q_path: Path, a_path: Path) -> list[dict]:
    """Questions joined to answers BY question_id (list position is unreliable: Video-LLaVA issue #36)."""
    answers: dict[str, dict] = {}
    for i, a in enumerate(_json_list(a_path, "answers")):
        qid = str(_field(a, ["question_id"], a_path, i, (str, int)))
        _field(a, ["answer"], a_path, i, (str, int, float))
        if qid in answers:
            raise CorpusError(f"{a_path}: question_id '{qid}' appears twice")
        answers[qid] = a
    joined, unmatched = [], []
    for i, q in enumerate(_json_list(q_path, "questions")):
        qid = str(_field(q, ["question_id"], q_path, i, (str, int)))
        if qid not in answers:
            unmatched.append(qid)
            continue
        a = answers[qid]
        joined.append({**q, "answer": a["answer"], "type": a.get("type"), "question_id": qid})
    if unmatched:
        raise CorpusError(f"{q_path}: {len(unmatched)} question_id(s) have no answer in {a_path.name} (first: {unmatched[0]})")
    return joined


def _llava(result: ImportResult, path: Path, media: Path, split: str, explicit: bool) -> None:
    images = _Media(result, "image")
    ids: set[str] = set()
    for i, e in enumerate(_json_list(path, "LLaVA instruction entries")):
        turns = _field(e, ["conversations"], path, i, list)
        for t, turn in enumerate(turns):
            if not isinstance(turn, dict) or turn.get("from") not in ("human", "gpt") or not isinstance(turn.get("value"), str):
                raise CorpusError(f"{path}: entry {i} turn {t} must be {{'from': 'human' | 'gpt', 'value': str}}")
        if not turns:
            raise CorpusError(f"{path}: entry {i} has no conversation turns")
        cid, n = safe_id(str(e.get("id", i))), 2
        while cid in ids:
            cid, n = f"{safe_id(str(e.get('id', i)))}_{n}", n + 1
        ids.add(cid)
        image = e.get("image")
        if image is None:
            result.conversations.append(Conversation(cid, None, None, split, [dict(t) for t in turns]))
            continue
        sample = images.get(Path(str(image)).with_suffix("").as_posix(), [media / str(image)], split)
        if sample is None:
            continue
        turns = [dict(t) for t in turns]
        if "<image>" not in turns[0]["value"]:
            turns[0]["value"] = "<image>\n" + turns[0]["value"]
        result.conversations.append(Conversation(cid, sample.id, "image", images.split_of[sample.id], turns))


def _videochatgpt(result: ImportResult, path: Path, media: Path, split: str, explicit: bool) -> None:
    videos = _Media(result, "video")
    counts: dict[str, int] = {}
    for i, e in enumerate(_json_list(path, "Video-ChatGPT instruction entries")):
        vid = str(_field(e, ["video_id"], path, i, (str, int)))
        question, answer = _field(e, ["q"], path, i), _field(e, ["a"], path, i)
        sample = videos.get(vid, _video_candidates(media, vid, ("", "v_")), split)
        if sample is None:
            continue
        k = counts[sample.id] = counts.get(sample.id, -1) + 1
        _qa_conversation(result, f"{sample.id}_q{k}", sample, videos.split_of[sample.id], question, answer, None)
