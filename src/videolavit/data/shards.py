"""Clip shards: WebDataset tar files, so any engine (SLURM array, Ray, plain processes) can write and stream them.

Layout under the clips directory: ``{split}-{i}of{n}-{k:05d}.tar`` (``i/n`` is the decompose shard, ``k`` counts tars).
Each sample is one clip: ``<key>.keyframe.npy`` (uint8 [S, S, 3]), ``<key>.motion.npy`` (float32 [2, T, h, w],
normalized tokenizer input), optionally ``<key>.frames.npy`` (uint8 [T, Hf, Wf, 3]) and ``<key>.json`` (video_id, clip,
start_time, split, caption). Keys are ``<video_id>__c<clip:03d>``.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np

SPLITS = ("train", "val", "test")
ARRAY_FIELDS = ("keyframe", "motion", "frames")


def clip_key(video_id: str, clip: int) -> str:
    safe = str(video_id).replace(".", "_").replace("/", "_")
    return f"{safe}__c{int(clip):03d}"


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


class ClipShardWriter:
    """Writes clip records to ``{split}-{shard_tag}-{k:05d}.tar`` files of at most ``clips_per_shard`` clips."""

    def __init__(self, out_dir: str | Path, split: str, shard_tag: str = "0of1", clips_per_shard: int = 512):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.split, self.shard_tag, self.clips_per_shard = split, shard_tag, int(clips_per_shard)
        self._tar: Optional[tarfile.TarFile] = None
        self._count_in_tar = 0
        self._tar_index = 0
        self.written = 0
        self.paths: list[Path] = []

    def _open_next(self) -> None:
        self.close()
        path = self.out_dir / f"{self.split}-{self.shard_tag}-{self._tar_index:05d}.tar"
        self._tar_index += 1
        self._tar = tarfile.open(path, "w")
        self._count_in_tar = 0
        self.paths.append(path)

    def _add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = 0  # reproducible tars
        self._tar.addfile(info, io.BytesIO(data))

    def write(self, record: dict) -> None:
        """``record``: {"key", "motion", "keyframe", optional "frames", "meta": dict}."""
        if self._tar is None or self._count_in_tar >= self.clips_per_shard:
            self._open_next()
        key = record["key"]
        if "." in key:
            raise ValueError(f"clip key {key!r} must not contain '.' (WebDataset splits names at dots)")
        for name in ARRAY_FIELDS:
            if record.get(name) is not None:
                self._add(f"{key}.{name}.npy", _npy_bytes(record[name]))
        self._add(f"{key}.json", json.dumps(record.get("meta", {}), sort_keys=True).encode())
        self._count_in_tar += 1
        self.written += 1

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar = None

    def __enter__(self) -> "ClipShardWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def clip_shard_paths(clips_dir: str | Path, split: str) -> list[Path]:
    """The tar shards of ``split``, in a stable order."""
    return sorted(Path(clips_dir).glob(f"{split}-*.tar"))


def iter_shard(path: str | Path, fields: Sequence[str] = ("keyframe", "motion", "meta")) -> Iterator[dict]:
    """Clip records of one tar, streaming (only the requested fields are decoded)."""
    want = set(fields)
    current: dict = {}
    with tarfile.open(path, "r") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, _, ext = member.name.partition(".")
            if current and current["key"] != key:
                yield current
                current = {}
            if not current:
                current = {"key": key}
            field = ext[:-4] if ext.endswith(".npy") else ext
            if field == "json":
                field = "meta"
            if field not in want:
                continue
            data = tar.extractfile(member).read()
            if field == "meta":
                current["meta"] = json.loads(data)
            else:
                current[field] = np.load(io.BytesIO(data), allow_pickle=False)
    if current:
        yield current


def iter_clip_records(
    clips_dir: str | Path, split: str, fields: Sequence[str] = ("keyframe", "motion", "meta"), paths: Iterable[Path] | None = None
) -> Iterator[dict]:
    """Every clip record of ``split`` (or of the given shard ``paths``), shard after shard."""
    for path in paths if paths is not None else clip_shard_paths(clips_dir, split):
        yield from iter_shard(path, fields)
