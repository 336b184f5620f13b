"""Token shards: every corpus sample as unified-vocabulary ids, written once by the ``tokenize`` stage and read by the
LM stages (pretrain, instruct, evaluate) without re-running the tokenizers.

Layout under ``paths.tokens``:
- ``meta.json``: {"vocab": {"text_size", "visual_codes", "motion_codes"}, "motion_tokens_per_clip", "counts", ...}
- ``text_tokenizer/``: the text tokenizer the ids were made with (transformers ``AutoTokenizer`` directory)
- ``{split}-{k:05d}.jsonl``: one record per sample (video or image), in corpus order:

  ``{"id", "kind": "video"|"image", "split",
     "media": [ids]            # video: per clip [IMG] keyframe [/IMG] [MOV] motion [/MOV], clips in time order;
                               # image: [IMG] visual [/IMG]
     "clip_spans": [[s, e]]    # each clip's [s, e) inside media (video; [] for images)
     "frames_media": [ids]     # video only: uniformly sampled frames as images, [IMG] … [/IMG] each (no-motion ablation)
     "caption": [ids], "caption_text": str,
     "qa": [{"question": [ids], "answer": [ids], "question_text", "answer_text", "type"}]}``

JSON lines keep the shards readable and streamable; a sample is one line, so any number of readers can split them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, Optional

SPLITS = ("train", "val", "test")


class TokenShardWriter:
    """Writes token records of one split to ``{split}-{k:05d}.jsonl`` shards of at most ``records_per_shard`` lines."""

    def __init__(self, out_dir: str | Path, split: str, records_per_shard: int = 10_000):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.split, self.records_per_shard = split, int(records_per_shard)
        self._file = None
        self._count = 0
        self._index = 0
        self.written = 0

    def write(self, record: dict) -> None:
        if self._file is None or self._count >= self.records_per_shard:
            self.close()
            self._file = open(self.out_dir / f"{self.split}-{self._index:05d}.jsonl", "w")
            self._index += 1
            self._count = 0
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._count += 1
        self.written += 1

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> "TokenShardWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def token_shard_paths(tokens_dir: str | Path, split: str) -> list[Path]:
    return sorted(Path(tokens_dir).glob(f"{split}-*.jsonl"))


def iter_token_records(tokens_dir: str | Path, split: str, kind: Optional[str] = None) -> Iterator[dict]:
    """Every record of ``split`` (optionally only ``kind`` = video | image), shard after shard."""
    for path in token_shard_paths(tokens_dir, split):
        with open(path) as f:
            for line in f:
                if line.strip():
                    record = json.loads(line)
                    if kind is None or record["kind"] == kind:
                        yield record


def write_token_meta(tokens_dir: str | Path, meta: dict) -> Path:
    path = Path(tokens_dir) / "meta.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return path


def read_token_meta(tokens_dir: str | Path) -> dict:
    from videolavit.errors import MissingArtifactError

    path = Path(tokens_dir) / "meta.json"
    if not path.is_file():
        raise MissingArtifactError(f"token shards not found at '{tokens_dir}'. Run `videolavit tokenize` first.")
    return json.loads(path.read_text())


def vocab_from_meta(meta: dict):
    from videolavit.vocab import Vocab

    v = meta["vocab"]
    return Vocab(text_size=int(v["text_size"]), visual_codes=int(v["visual_codes"]), motion_codes=int(v["motion_codes"]))
