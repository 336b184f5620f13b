"""Where the visual tokenizer's training images are: clip keyframes inside tar shards and corpus image files.

The index is columnar (fixed-width byte keys, int arrays) instead of one Python object per image: ~50 bytes an image
instead of ~350 (benchmarks/data_scale.py), and a training rank indexes only its share of the shards and of the
manifest, so at 136 M images each rank holds 1/world of it.
"""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

from videolavit.data.images import read_image, resize_images

KEYFRAME_SUFFIX = ".keyframe.npy"


@dataclass(frozen=True)
class ImageItem:
    """One training image: a keyframe (a ``.keyframe.npy`` member at ``offset`` in the tar ``path``) or an image file."""

    key: str
    path: str
    offset: int = -1  # ≥ 0: keyframe inside a tar; -1: an image file
    size: int = 0


def _bytes_column(values: list[str]) -> np.ndarray:
    return np.asarray([v.encode() for v in values], dtype=np.bytes_) if values else np.zeros(0, dtype="S1")


class ImageIndex:
    """Keyframes (tar, offset, size) then image files, as arrays; ``index[i]`` → :class:`ImageItem`."""

    def __init__(self, tars: Sequence[str], kf_keys: np.ndarray, kf_tar: np.ndarray, kf_offset: np.ndarray,
                 kf_size: np.ndarray, image_keys: np.ndarray, image_paths: np.ndarray):
        self.tars = [str(t) for t in tars]
        self.kf_keys, self.kf_tar, self.kf_offset, self.kf_size = kf_keys, kf_tar, kf_offset, kf_size
        self.image_keys, self.image_paths = image_keys, image_paths

    def __len__(self) -> int:
        return len(self.kf_keys) + len(self.image_keys)

    def __getitem__(self, i: int) -> ImageItem:
        i = int(i)
        n = len(self.kf_keys)
        if i < 0 or i >= len(self):
            raise IndexError(i)
        if i < n:
            return ImageItem(self.kf_keys[i].decode(), self.tars[self.kf_tar[i]], int(self.kf_offset[i]), int(self.kf_size[i]))
        return ImageItem(self.image_keys[i - n].decode(), self.image_paths[i - n].decode())

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def nbytes(self) -> int:
        """Bytes the index's arrays take (the per-rank memory benchmarks/data_scale.py reports)."""
        arrays = (self.kf_keys, self.kf_tar, self.kf_offset, self.kf_size, self.image_keys, self.image_paths)
        return sum(a.nbytes for a in arrays) + sum(len(t) + 49 for t in self.tars)


def keyframe_columns(headers: Iterable[tuple[int, str, int, int]]) -> tuple[np.ndarray, ...]:
    """(tar index, member name, data offset, size) of tar members → the keyframe columns (other members dropped).
    Built tar by tar, so the Python objects of only one tar's headers exist at a time."""
    chunks: list[tuple[np.ndarray, ...]] = []
    keys, tar_ids, offsets, sizes = [], [], [], []

    def flush() -> None:
        if keys:
            chunks.append((_bytes_column(keys), np.asarray(tar_ids, dtype=np.int32), np.asarray(offsets, dtype=np.int64),
                           np.asarray(sizes, dtype=np.int64)))
            keys.clear(), tar_ids.clear(), offsets.clear(), sizes.clear()

    for tar_id, name, offset, size in headers:
        if tar_ids and tar_id != tar_ids[-1]:
            flush()
        if name.endswith(KEYFRAME_SUFFIX):
            keys.append(name.partition(".")[0])
            tar_ids.append(tar_id)
            offsets.append(offset)
            sizes.append(size)
    flush()
    if not chunks:
        return np.zeros(0, dtype="S1"), np.zeros(0, np.int32), np.zeros(0, np.int64), np.zeros(0, np.int64)
    return tuple(np.concatenate([c[i] for c in chunks]) for i in range(4))


def tar_headers(tar_paths: Sequence[str]) -> Iterable[tuple[int, str, int, int]]:
    """Every regular member's header of the given local tars (nothing is read past the headers)."""
    for tar_id, path in enumerate(tar_paths):
        with tarfile.open(path, "r") as tar:
            for member in tar:
                if member.isfile():
                    yield tar_id, member.name, member.offset_data, member.size
                tar.members = []  # headers are consumed one at a time, not kept (tarfile keeps them otherwise)


def build_index(tar_paths: Sequence[str], corpus_dir: Optional[str | Path], split: str,
                share: int = 0, shares: int = 1) -> ImageIndex:
    """The keyframes of ``tar_paths`` and (when ``corpus_dir``) the image samples of share ``share``/``shares`` of the
    corpus manifest (``iter_manifest_share``: that share's bytes only), in tar order then manifest order."""
    columns = keyframe_columns(tar_headers(tar_paths))
    keys, paths = [], []
    if corpus_dir is not None:
        from videolavit.data.manifest import iter_manifest_share

        for sample in iter_manifest_share(corpus_dir, split, share, shares):
            if sample.kind == "image":
                keys.append(sample.id)
                paths.append(str(sample.media_path(corpus_dir)))
    return ImageIndex(tar_paths, *columns, _bytes_column(keys), _bytes_column(paths))


def load_image_item(item: ImageItem, size: int) -> np.ndarray:
    """uint8 RGB [size, size, 3]."""
    if item.offset < 0:
        return read_image(item.path, size)
    from videolavit.data.shards import open_shard

    with open_shard(item.path) as f:  # a local file or an fsspec URL (seekable); pipes cannot seek
        f.seek(item.offset)
        data = f.read(item.size)
    return resize_images(np.load(io.BytesIO(data), allow_pickle=False), size)
