"""Clip shards: WebDataset tar files, so any engine (SLURM array, Ray, plain processes) can write and stream them.

Layout under the clips directory: ``{split}-{i}of{n}-{k:05d}.tar`` (``i/n`` is the decompose shard, ``k`` counts tars).
Each sample is one clip: ``<key>.json`` (video_id, clip, start_time, split, caption), ``<key>.keyframe.npy`` (uint8
[S, S, 3]), ``<key>.motion.npy`` (normalized tokenizer input [2, T, h, w], float32 or float16) and optionally the frames
(uint8 [T, Hf, Wf, 3]) as ``.frames.npy``, ``.frames.mkv`` (lossless FFV1) or ``.frames.mp4`` (H.264); see
``data/clip_codec.py``. Readers get float32 motion and uint8 frame arrays whatever was stored. Keys are
``<video_id>__c<clip:03d>``. A tar is written as ``<name>.partial`` and renamed when complete
(:class:`PartialTar`), so a name ending in ``.tar`` always reads to its end.
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

from videolavit.data.clip_codec import decode_member, encode_clip

SPLITS = ("train", "val", "test")
ARRAY_FIELDS = ("keyframe", "motion", "frames")
PARTIAL = ".partial"  # suffix of a tar still being written; readers never glob it


def clip_key(video_id: str, clip: int) -> str:
    safe = str(video_id).replace(".", "_").replace("/", "_")
    return f"{safe}__c{int(clip):03d}"


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # reproducible tars
    tar.addfile(info, io.BytesIO(data))


class PartialTar:
    """A tar written under ``<path>.partial``, renamed to ``path`` by :meth:`finish` (atomic on one filesystem).

    ``resume_at``: reopen an existing partial file and cut it at that byte offset (one :meth:`sync` returned after a
    complete video), so a killed writer resumes without a torn member."""

    def __init__(self, path: str | Path, resume_at: Optional[int] = None):
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + PARTIAL)
        if resume_at is not None and self.tmp.is_file():
            self._file = open(self.tmp, "r+b")
            self._file.truncate(resume_at)
            self._file.seek(resume_at)
        else:
            self._file = open(self.tmp, "wb")
        self._tar = tarfile.open(fileobj=self._file, mode="w")

    def write(self, members: Sequence[tuple[str, bytes]]) -> None:
        for name, data in members:
            _add(self._tar, name, data)

    def sync(self) -> int:
        """Flush and fsync; → the bytes written so far (an offset a later run may resume at)."""
        self._file.flush()
        os.fsync(self._file.fileno())
        return self._tar.offset

    def rollback(self, offset: int) -> None:
        """Take back everything after ``offset`` (the clips of a video that turned out to be a reject)."""
        self._file.flush()
        self._file.truncate(offset)
        self._file.seek(offset)
        self._tar.offset = offset
        self._tar.members = [m for m in self._tar.members if m.offset < offset]

    def finish(self, keep_empty: bool = False) -> Optional[Path]:
        """Close (end-of-archive blocks), fsync and rename; an empty tar is removed unless ``keep_empty``."""
        empty = self._tar.offset == 0
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        if empty and not keep_empty:
            self.tmp.unlink()
            return None
        os.replace(self.tmp, self.path)
        return self.path

    def abandon(self) -> None:
        """Close without finishing: the partial file stays for a later resume."""
        self._file.close()


class ClipShardWriter:
    """Writes clip records to ``{split}-{shard_tag}-{k:05d}.tar`` files of at most ``clips_per_shard`` clips."""

    def __init__(
        self, out_dir: str | Path, split: str, shard_tag: str = "0of1", clips_per_shard: int = 512,
        frame_codec: str = "npy", motion_dtype: str = "float32", frame_crf: int = 18,
    ):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.split, self.shard_tag, self.clips_per_shard = split, shard_tag, int(clips_per_shard)
        self.codec = (frame_codec, motion_dtype, int(frame_crf))
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

    def write(self, record: dict) -> None:
        """``record``: {"key", "motion", "keyframe", optional "frames", "meta": dict}."""
        if self._tar is None or self._count_in_tar >= self.clips_per_shard:
            self._open_next()
        for name, data in encode_clip(record, *self.codec):
            _add(self._tar, name, data)
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
    """The tar shards of ``split`` in a local folder, in a stable order."""
    return sorted(Path(clips_dir).glob(f"{split}-*.tar"))


def is_remote(clips: str | Path) -> bool:
    """``clips`` is an fsspec URL (``s3://…``, ``file://…``) or a ``pipe:`` command, not a local folder."""
    return str(clips).startswith("pipe:") or "://" in str(clips)


def clip_shard_urls(clips: str | Path, split: str) -> list[str]:
    """The shards of ``split`` as WebDataset URLs, in a stable order. ``clips`` is a local folder, an fsspec URL of a
    folder (listed with fsspec), or a ``pipe:`` command template with ``{split}`` and brace ranges, e.g.
    ``pipe:cat /data/clips/{split}-0of1-{00000..00009}.tar`` (expanded, not listed)."""
    text = str(clips)
    if text.startswith("pipe:"):
        from webdataset.shardlists import expand_urls

        return expand_urls(text.replace("{split}", split))
    if "://" in text:
        import fsspec

        fs, root = fsspec.core.url_to_fs(text)
        return sorted(fs.unstrip_protocol(p) for p in fs.glob(f"{root.rstrip('/')}/{split}-*.tar"))
    return [str(p) for p in clip_shard_paths(text, split)]


def open_shard(url: str | Path):
    """A binary stream of one shard: a local file, a ``pipe:`` command's stdout (WebDataset's gopen) or an fsspec URL."""
    text = str(url)
    if text.startswith("pipe:"):
        from webdataset.gopen import gopen

        return gopen(text, "rb")
    if "://" in text:
        import fsspec

        return fsspec.open(text, "rb").open()
    return open(text, "rb")


def _field(name: str) -> tuple[str, str, str]:
    """``<key>.<field>.<suffix>`` → (key, field, suffix); ``<key>.json`` is the field ``meta``."""
    key, _, ext = name.partition(".")
    field, _, suffix = ext.partition(".")
    return key, ("meta" if field == "json" else field), suffix


def iter_shard(path: str | Path, fields: Sequence[str] = ("keyframe", "motion", "meta")) -> Iterator[dict]:
    """Clip records of one shard (path or URL, see :func:`open_shard`), streamed through WebDataset's tar iterator:
    only the requested fields are read into memory and decoded (float32 motion, uint8 frames, however stored)."""
    from webdataset.tariterators import tar_file_iterator

    want = set(fields)

    def selected(name: str) -> bool:  # the small .json of every clip too, so each clip yields a record
        _, field, _ = _field(name)
        return field in want or field == "meta"

    current: dict = {}
    stream = open_shard(path)
    try:
        for member in tar_file_iterator(stream, select_files=selected):
            key, field, suffix = _field(member["fname"])
            if current and current["key"] != key:
                yield current
                current = {}
            if not current:
                current = {"key": key}
            if field in want:
                current[field] = decode_member(field, suffix, member["data"])
    finally:
        stream.close()
    if current:
        yield current


def iter_clip_records(
    clips_dir: str | Path, split: str, fields: Sequence[str] = ("keyframe", "motion", "meta"),
    paths: Iterable[str | Path] | None = None,
) -> Iterator[dict]:
    """Every clip record of ``split`` (or of the given shard ``paths``/URLs), shard after shard."""
    for path in paths if paths is not None else clip_shard_urls(clips_dir, split):
        yield from iter_shard(path, fields)
