"""The corpus manifest: the one contract between the ``corpus`` stage and every stage that reads a corpus.

Layout of ``<paths.corpus>/`` (all JSON is UTF-8, one object per line in ``*.jsonl``):

- ``meta.json``: ``{"source", "seed", "attributes": {name: [values...]}, "counts": {...}, "heldout": [...]}``.
  ``heldout`` lists the attribute combinations that appear only in the test split (synthetic: ``{"shape", "color"}``).
- ``train.jsonl``, ``val.jsonl``, ``test.jsonl``: one :class:`Sample` per line::

      {"id": "vid_00012", "kind": "video" | "image",
       "path": "videos/vid_00012.mp4",          # relative to the corpus dir, or absolute (imported data)
       "caption": str,
       "qa": [{"question": str, "answer": str, "type": "appearance" | "motion" | "temporal" | "other"}],
       "attributes": {...},                      # synthetic: shape, color, size, background, pan, objects, ...
       "clips": [{"direction": "left", "speed": "fast", ...}]}   # per 24-frame clip; [] when unknown

  QA types say what answers them: ``appearance`` a keyframe, ``motion`` one clip's motion, ``temporal`` several clips.
  ``other`` marks imported QA whose type the dataset does not give.
- ``instruct.jsonl``: LLaVA-style conversations, one :class:`Conversation` per line::

      {"id", "media_id": sample id | null, "media_kind": "video" | "image" | null, "split": "train" | "val" | "test",
       "conversations": [{"from": "human", "value": "<video>\\nWhich direction ...?"}, {"from": "gpt", "value": "left"}],
       "type": qa type | null}

- ``missing.jsonl`` (imported data only): media the annotation names but the media dir lacks (not in the manifests).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

from videolavit.errors import CorpusError, MissingArtifactError

SPLITS = ("train", "val", "test")
KINDS = ("video", "image")
QA_TYPES = ("appearance", "motion", "temporal", "other")
ROLES = ("human", "gpt")
META_FILE = "meta.json"
INSTRUCT_FILE = "instruct.jsonl"
MISSING_FILE = "missing.jsonl"


@dataclass
class QA:
    question: str
    answer: str
    type: str

    def to_dict(self) -> dict:
        return {"question": self.question, "answer": self.answer, "type": self.type}


@dataclass
class Sample:
    """One video or image of the corpus with its caption, typed QA pairs and (synthetic) ground-truth attributes."""

    id: str
    kind: str
    path: str
    caption: str = ""
    qa: list[QA] = field(default_factory=list)
    attributes: dict = field(default_factory=dict)
    clips: list[dict] = field(default_factory=list)

    def media_path(self, corpus_dir: str | Path) -> Path:
        """The media file: ``path`` as is when absolute, else under ``corpus_dir``."""
        p = Path(self.path)
        return p if p.is_absolute() else Path(corpus_dir) / p

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "kind": self.kind,
            "path": self.path,
            "caption": self.caption,
            "qa": [q.to_dict() for q in self.qa],
            "attributes": self.attributes,
            "clips": self.clips,
        }

    @classmethod
    def from_dict(cls, d: Any) -> "Sample":
        """Validate one manifest record; raises ValueError saying what is wrong (the reader adds file and line)."""
        _require_dict(d, "sample")
        for key in ("id", "kind", "path"):
            if not isinstance(d.get(key), str) or not d[key]:
                raise ValueError(f"'{key}' must be a non-empty string, got {d.get(key)!r}")
        if d["kind"] not in KINDS:
            raise ValueError(f"'kind' must be one of {KINDS}, got {d['kind']!r}")
        caption = d.get("caption", "")
        if not isinstance(caption, str):
            raise ValueError(f"'caption' must be a string, got {type(caption).__name__}")
        qa = d.get("qa", [])
        if not isinstance(qa, list):
            raise ValueError("'qa' must be a list")
        attributes = d.get("attributes", {})
        clips = d.get("clips", [])
        if not isinstance(attributes, dict):
            raise ValueError("'attributes' must be an object")
        if not isinstance(clips, list) or not all(isinstance(c, dict) for c in clips):
            raise ValueError("'clips' must be a list of objects")
        return cls(d["id"], d["kind"], d["path"], caption, [_qa_from_dict(q, i) for i, q in enumerate(qa)], attributes, clips)


@dataclass
class Conversation:
    """One instruction-tuning dialogue about a sample (or about nothing: text only), in LLaVA's turn format."""

    id: str
    media_id: Optional[str]
    media_kind: Optional[str]
    split: str
    conversations: list[dict]
    type: Optional[str] = None

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "media_id": self.media_id,
            "media_kind": self.media_kind,
            "split": self.split,
            "conversations": self.conversations,
            "type": self.type,
        }

    @classmethod
    def from_dict(cls, d: Any) -> "Conversation":
        _require_dict(d, "conversation")
        if not isinstance(d.get("id"), str) or not d["id"]:
            raise ValueError(f"'id' must be a non-empty string, got {d.get('id')!r}")
        if d.get("split") not in SPLITS:
            raise ValueError(f"'split' must be one of {SPLITS}, got {d.get('split')!r}")
        media_id, media_kind = d.get("media_id"), d.get("media_kind")
        if media_kind not in (*KINDS, None):
            raise ValueError(f"'media_kind' must be one of {KINDS} or null, got {media_kind!r}")
        if (media_id is None) != (media_kind is None):
            raise ValueError("'media_id' and 'media_kind' must both be set or both be null")
        if d.get("type") not in (*QA_TYPES, None):
            raise ValueError(f"'type' must be one of {QA_TYPES} or null, got {d.get('type')!r}")
        turns = d.get("conversations")
        if not isinstance(turns, list) or not turns:
            raise ValueError("'conversations' must be a non-empty list of turns")
        for i, turn in enumerate(turns):
            if not isinstance(turn, dict) or turn.get("from") not in ROLES or not isinstance(turn.get("value"), str):
                raise ValueError(f"turn {i} must be {{'from': 'human' | 'gpt', 'value': str}}, got {turn!r}")
        return cls(d["id"], media_id, media_kind, d["split"], turns, d.get("type"))


def _require_dict(d: Any, what: str) -> None:
    if not isinstance(d, dict):
        raise ValueError(f"a {what} must be a JSON object, got {type(d).__name__}")


def _qa_from_dict(q: Any, index: int) -> QA:
    if not isinstance(q, dict):
        raise ValueError(f"qa[{index}] must be an object")
    for key in ("question", "answer"):
        if not isinstance(q.get(key), str):
            raise ValueError(f"qa[{index}].{key} must be a string, got {q.get(key)!r}")
    if q.get("type") not in QA_TYPES:
        raise ValueError(f"qa[{index}].type must be one of {QA_TYPES}, got {q.get('type')!r}")
    return QA(q["question"], q["answer"], q["type"])


# --------------------------------------------------------------------------------------------------------------------
# Reading and writing


def dumps(record: dict) -> str:
    """One manifest line; fixed separators and key order so the same corpus gives byte-identical files."""
    return json.dumps(record, ensure_ascii=False, separators=(", ", ": "))


def write_jsonl(path: str | Path, records: Iterable[dict]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for record in records:
            f.write(dumps(record) + "\n")
    return path


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed object) for each non-blank line; a line that is not JSON is a CorpusError."""
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as exc:
                raise CorpusError(f"{path}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from None


def _split_path(corpus_dir: str | Path, split: str) -> Path:
    if split not in SPLITS:
        raise CorpusError(f"unknown split '{split}'. Valid splits: {', '.join(SPLITS)}")
    return Path(corpus_dir) / f"{split}.jsonl"


def _require(path: Path) -> Path:
    if not path.is_file():
        raise MissingArtifactError(f"corpus file not found at '{path}'. Build the corpus first: `videolavit corpus`")
    return path


def write_manifest(corpus_dir: str | Path, split: str, samples: Iterable[Sample]) -> Path:
    """Write ``<corpus_dir>/<split>.jsonl`` (ids must be unique within the file)."""
    samples = list(samples)
    seen: set[str] = set()
    for s in samples:
        if s.id in seen:
            raise CorpusError(f"duplicate sample id '{s.id}' in split '{split}'")
        seen.add(s.id)
    return write_jsonl(_split_path(corpus_dir, split), (s.to_dict() for s in samples))


def read_manifest(corpus_dir: str | Path, split: str) -> list[Sample]:
    """The samples of one split; a malformed line is a CorpusError naming the file and line."""
    path = _require(_split_path(corpus_dir, split))
    samples = []
    for lineno, record in iter_jsonl(path):
        try:
            samples.append(Sample.from_dict(record))
        except ValueError as exc:
            raise CorpusError(f"{path}:{lineno}: {exc}") from None
    return samples


def iter_manifest_share(corpus_dir: str | Path, split: str, index: int = 0, count: int = 1) -> Iterator[Sample]:
    """The samples of share ``index`` of ``count`` of one split, streamed: the lines that start in bytes
    [index·size/count, (index+1)·size/count) of the file. A ``--shard i/n`` process reads only those bytes and holds
    one line at a time, so its memory does not grow with the corpus; the shares cover every line exactly once."""
    if not 0 <= index < count:
        raise CorpusError(f"manifest share {index}/{count}: need 0 <= index < count")
    path = _require(_split_path(corpus_dir, split))
    size = path.stat().st_size
    start, end = size * index // count, size * (index + 1) // count
    with open(path, "rb") as f:
        if start > 0:
            f.seek(start - 1)
            f.readline()  # the line holding byte start-1 belongs to the share before
        pos = f.tell()
        while pos < end:
            line = f.readline()
            if not line:
                break
            where, pos = pos, pos + len(line)
            if not line.strip():
                continue
            try:
                yield Sample.from_dict(json.loads(line))
            except json.JSONDecodeError as exc:
                raise CorpusError(f"{path}: the line at byte {where}: not valid JSON ({exc.msg})") from None
            except (ValueError, UnicodeDecodeError) as exc:
                raise CorpusError(f"{path}: the line at byte {where}: {exc}") from None


def write_instruct(corpus_dir: str | Path, conversations: Iterable[Conversation]) -> Path:
    return write_jsonl(Path(corpus_dir) / INSTRUCT_FILE, (c.to_dict() for c in conversations))


def read_instruct(corpus_dir: str | Path, split: Optional[str] = None) -> list[Conversation]:
    """The instruction conversations, all of them or those of one split."""
    if split is not None and split not in SPLITS:
        raise CorpusError(f"unknown split '{split}'. Valid splits: {', '.join(SPLITS)}")
    path = _require(Path(corpus_dir) / INSTRUCT_FILE)
    out = []
    for lineno, record in iter_jsonl(path):
        try:
            conv = Conversation.from_dict(record)
        except ValueError as exc:
            raise CorpusError(f"{path}:{lineno}: {exc}") from None
        if split is None or conv.split == split:
            out.append(conv)
    return out


def write_meta(corpus_dir: str | Path, meta: dict) -> Path:
    path = Path(corpus_dir) / META_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(meta, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return path


def read_meta(corpus_dir: str | Path) -> dict:
    path = _require(Path(corpus_dir) / META_FILE)
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CorpusError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(meta, dict) or "source" not in meta:
        raise CorpusError(f"{path}: expected an object with at least 'source'")
    return meta


def corpus_counts(samples: dict[str, list[Sample]], convs: list[Conversation]) -> dict:
    """Flat counts: ``<split>_<kind>s``, ``qa_<type>``, ``instruct_conversations``."""
    counts: dict = {}
    for split, items in samples.items():
        for kind in KINDS:
            counts[f"{split}_{kind}s"] = sum(1 for s in items if s.kind == kind)
    for qa_type in QA_TYPES:
        counts[f"qa_{qa_type}"] = sum(1 for items in samples.values() for s in items for q in s.qa if q.type == qa_type)
    counts["instruct_conversations"] = len(convs)
    return counts
