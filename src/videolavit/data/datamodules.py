"""Lightning DataModules over the clip shards written by the decompose stage.

``ClipDataModule`` serves the train / val / test splits of ``paths.clips``. A small split is loaded into memory; a large
one is streamed shard by shard (split across dataloader workers and ranks). The training stream is infinite and a pure
function of (seed, batch index), so a run resumed at step k sees exactly the batches an uninterrupted run would.
``ImageDataModule`` serves the clips' keyframes and the corpus images at the visual tokenizer's input size.
"""

from __future__ import annotations

import io
import random
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from videolavit.data.images import read_image, resize_images
from videolavit.data.resumable import ResumableDataModule, batches_served, global_worker
from videolavit.data.shards import ARRAY_FIELDS, SPLITS, clip_shard_paths, iter_clip_records
from videolavit.errors import MissingArtifactError

IN_MEMORY_MAX_BYTES = 1 << 30  # splits whose shards total less than this are loaded into memory
SHUFFLE_BUFFER = 1000


def collate_clips(records: Sequence[dict]) -> dict[str, Any]:
    """Stack array fields into tensors ([B, 2, T, h, w] motion, [B, S, S, 3] keyframe, ...); keys and meta as lists."""
    batch: dict[str, Any] = {"key": [r["key"] for r in records]}
    for field in records[0]:
        if field in ARRAY_FIELDS:
            batch[field] = torch.stack([torch.as_tensor(r[field]) for r in records])
        elif field == "meta":
            batch["meta"] = [r["meta"] for r in records]
    return batch


def _epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


class InMemoryClips(Dataset):
    """Every record of a split, in shard order (for validation and test)."""

    def __init__(self, records: list[dict]):
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        return self.records[index]


class InMemoryTrainStream(IterableDataset):
    """Endless clips from memory: epoch e is a seeded permutation; starts at sample ``start``."""

    def __init__(self, records: list[dict], seed: int, start: int = 0):
        self.records, self.seed, self.start = records, seed, start

    def __iter__(self) -> Iterator[dict]:
        n = len(self.records)
        epoch, offset = divmod(self.start, n)
        while True:
            order = _epoch_order(n, self.seed, epoch)
            for i in order[offset:]:
                yield self.records[i]
            epoch, offset = epoch + 1, 0


class ShardStream(IterableDataset):
    """Clips streamed from tar shards, split across ranks and dataloader workers.

    Training (``infinite``): each epoch shuffles the shard list, then a seeded shuffle buffer mixes clips. Each global
    worker skips the batches it already served before step ``start_batch``, so resumption is exact.
    """

    def __init__(
        self,
        paths: Sequence[Path],
        fields: Sequence[str],
        seed: int,
        infinite: bool,
        batch_size: int = 1,
        start_batch: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.paths, self.fields, self.seed, self.infinite = [Path(p) for p in paths], tuple(fields), seed, infinite
        self.batch_size, self.start_batch, self.rank, self.world_size = batch_size, start_batch, rank, world_size

    def _worker(self) -> tuple[int, int, int]:
        """(global worker index, global worker count, workers per rank).

        The DataLoader takes batches from its workers round-robin starting at worker 0, so a loader resumed at batch
        ``start_batch`` relabels worker w as (w + start_batch) % workers: the one that served that batch originally.
        """
        return global_worker(self.rank, self.world_size, self.start_batch if self.infinite else 0)

    def _records(self, epoch: int, me: int, total: int) -> Iterator[dict]:
        paths = list(self.paths)
        if self.infinite:
            random.Random(f"{self.seed}-{epoch}").shuffle(paths)
        if len(paths) >= total:  # whole shards per worker; else every worker reads all and keeps every total-th clip
            yield from iter_clip_records(None, "", self.fields, paths=paths[me::total])
        else:
            for i, record in enumerate(iter_clip_records(None, "", self.fields, paths=paths)):
                if i % total == me:
                    yield record

    def _shuffled(self, records: Iterator[dict], rng: random.Random) -> Iterator[dict]:
        buffer: list[dict] = []
        for record in records:
            buffer.append(record)
            if len(buffer) >= SHUFFLE_BUFFER:
                yield buffer.pop(rng.randrange(len(buffer)))
        rng.shuffle(buffer)
        yield from buffer

    def __iter__(self) -> Iterator[dict]:
        me, total, workers = self._worker()
        if not self.infinite:
            yield from self._records(0, me, total)
            return
        skip = batches_served(self.start_batch, me - self.rank * workers, workers) * self.batch_size
        epoch, served = 0, 0
        while True:
            for record in self._shuffled(self._records(epoch, me, total), random.Random(f"{self.seed}-{epoch}-{me}")):
                served += 1
                if served > skip:
                    yield record
            if served == 0:
                return  # no clips reach this worker
            epoch += 1


class ClipDataModule(ResumableDataModule):
    """Batches of clip records from ``cfg.paths.clips``: ``{"key", <fields> as tensors, optional "meta"}``."""

    def __init__(
        self,
        cfg: Any,
        fields: Sequence[str] = ("motion",),
        batch_size: int = 8,
        eval_batch_size: Optional[int] = None,
        in_memory: Optional[bool] = None,
    ):
        super().__init__(cfg)
        self.clips_dir = Path(cfg.paths.clips)
        self.fields = tuple(fields)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.in_memory = in_memory
        self._memory: dict[str, list[dict]] = {}

    def shard_paths(self, split: str) -> list[Path]:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        paths = clip_shard_paths(self.clips_dir, split)
        if not paths:
            raise MissingArtifactError(
                f"no '{split}' clip shards in '{self.clips_dir}' (expected {split}-*.tar). Run `videolavit decompose` first."
            )
        return paths

    def _use_memory(self, split: str) -> bool:
        if self.in_memory is not None:
            return self.in_memory
        return sum(p.stat().st_size for p in self.shard_paths(split)) <= IN_MEMORY_MAX_BYTES

    def records(self, split: str) -> list[dict]:
        """All records of a split, loaded once and kept (in-memory mode)."""
        if split not in self._memory:
            records = list(iter_clip_records(self.clips_dir, split, self.fields, paths=self.shard_paths(split)))
            if not records:
                raise MissingArtifactError(f"the '{split}' clip shards in '{self.clips_dir}' hold no clips")
            self._memory[split] = records
        return self._memory[split]

    def train_loader(self, start_batch: int = 0) -> DataLoader:
        """The endless training stream from batch ``start_batch`` on (what a run resumed at that step sees)."""
        start = int(start_batch)
        rank, world = self._rank()
        if self._use_memory("train"):
            records = self.records("train")[rank::world] or self.records("train")
            dataset: IterableDataset = InMemoryTrainStream(records, self.seed + rank, start * self.batch_size)
            workers = 0  # already decoded; worker processes would only copy it
        else:
            paths = self.shard_paths("train")
            dataset = ShardStream(paths, self.fields, self.seed, True, self.batch_size, start, rank, world)
            workers = self.num_workers
        return DataLoader(
            dataset, batch_size=self.batch_size, collate_fn=collate_clips, num_workers=workers,
            generator=self._generator(), persistent_workers=False,
        )

    def _eval_dataloader(self, split: str) -> DataLoader:
        if self._use_memory(split):
            dataset: Any = InMemoryClips(self.records(split))  # Lightning adds a DistributedSampler under DDP
            workers = 0
        else:
            rank, world = self._rank()
            dataset = ShardStream(self.shard_paths(split), self.fields, self.seed, False, rank=rank, world_size=world)
            workers = self.num_workers
        return DataLoader(
            dataset, batch_size=self.eval_batch_size, shuffle=False, collate_fn=collate_clips, num_workers=workers,
            generator=self._generator(),
        )

    def val_dataloader(self) -> DataLoader:
        return self._eval_dataloader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_dataloader("test")


# --------------------------------------------------------------------------------------------------------------------
# Keyframes and images: the visual tokenizer's data (resized by data/images.py, as the tokenize stage does)


@dataclass(frozen=True)
class ImageItem:
    """One training image: a keyframe (a ``.keyframe.npy`` member at ``offset`` in the tar ``path``) or an image file."""

    key: str
    path: str
    offset: int = -1  # ≥ 0: keyframe inside a tar; -1: an image file
    size: int = 0


def keyframe_items(tar_paths: Sequence[Path]) -> list[ImageItem]:
    """Where every keyframe of the given clip shards is (headers only: nothing is decoded)."""
    items = []
    for path in tar_paths:
        with tarfile.open(path, "r") as tar:
            for member in tar:
                if member.isfile() and member.name.endswith(".keyframe.npy"):
                    items.append(ImageItem(member.name.partition(".")[0], str(path), member.offset_data, member.size))
    return items


def corpus_image_items(corpus_dir: str | Path, split: str) -> list[ImageItem]:
    """The image samples of a corpus split (manifest order)."""
    from videolavit.data.manifest import read_manifest

    return [
        ImageItem(s.id, str(s.media_path(corpus_dir))) for s in read_manifest(corpus_dir, split) if s.kind == "image"
    ]


def load_image_item(item: ImageItem, size: int) -> np.ndarray:
    """uint8 RGB [size, size, 3]."""
    if item.offset < 0:
        return read_image(item.path, size)
    with open(item.path, "rb") as f:
        f.seek(item.offset)
        data = f.read(item.size)
    return resize_images(np.load(io.BytesIO(data), allow_pickle=False), size)


class ImageItems(Dataset):
    """Keyframes and images as ``{"key", "image": uint8 [S, S, 3]}``; decoded once into memory when ``in_memory``."""

    def __init__(self, items: Sequence[ImageItem], size: int, in_memory: bool):
        self.items, self.size = list(items), int(size)
        self.cache = np.stack([load_image_item(i, self.size) for i in self.items]) if in_memory and self.items else None

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        image = self.cache[index] if self.cache is not None else load_image_item(self.items[index], self.size)
        return {"key": self.items[index].key, "image": torch.from_numpy(np.ascontiguousarray(image))}


def collate_images(records: Sequence[dict]) -> dict[str, Any]:
    """``{"key": [B], "image": uint8 [B, S, S, 3]}``."""
    return {"key": [r["key"] for r in records], "image": torch.stack([r["image"] for r in records])}


class ImageTrainStream(IterableDataset):
    """Endless seeded epochs over a map dataset. This rank's batch b is global batch b·world + rank, a pure function
    of (seed, b), and dataloader worker w computes batches w, w + workers, …: so any resume point and any worker count
    give the batches an uninterrupted single-process run gives."""

    def __init__(self, dataset: Dataset, seed: int, batch_size: int, start_batch: int = 0, rank: int = 0, world_size: int = 1):
        self.dataset, self.seed, self.batch_size = dataset, int(seed), int(batch_size)
        self.start_batch, self.rank, self.world_size = int(start_batch), int(rank), int(world_size)

    def __iter__(self) -> Iterator[dict]:
        me, _, workers = global_worker(self.rank, self.world_size)
        worker = me - self.rank * workers
        n = len(self.dataset)
        epoch, order = -1, None
        batch = self.start_batch + worker
        while True:
            first = (batch * self.world_size + self.rank) * self.batch_size
            for sample in range(first, first + self.batch_size):
                e, position = divmod(sample, n)
                if e != epoch:
                    epoch, order = e, _epoch_order(n, self.seed, e)
                yield self.dataset[int(order[position])]
            batch += workers


class ImageDataModule(ResumableDataModule):
    """uint8 [B, S, S, 3] batches of the clips' keyframes (``paths.clips``) and the corpus images (``paths.corpus``)."""

    def __init__(
        self,
        cfg: Any,
        image_size: int,
        batch_size: int = 16,
        eval_batch_size: Optional[int] = None,
        keyframes: bool = True,
        images: bool = True,
        in_memory: Optional[bool] = None,
    ):
        super().__init__(cfg)
        from videolavit.errors import ConfigError

        if not (keyframes or images):
            raise ConfigError("the visual tokenizer needs keyframes or images (both are switched off)")
        self.clips_dir, self.corpus_dir = Path(cfg.paths.clips), Path(cfg.paths.corpus)
        self.image_size, self.batch_size = int(image_size), int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.keyframes, self.images, self.in_memory = keyframes, images, in_memory
        self._datasets: dict[str, ImageItems] = {}

    def items(self, split: str) -> list[ImageItem]:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        items: list[ImageItem] = []
        if self.keyframes:
            paths = clip_shard_paths(self.clips_dir, split)
            if not paths:
                raise MissingArtifactError(
                    f"no '{split}' clip shards in '{self.clips_dir}' (expected {split}-*.tar). Run `videolavit decompose` "
                    "first, or set visual_tokenizer.keyframes=false to train on images only."
                )
            items += keyframe_items(paths)
        if self.images:
            items += corpus_image_items(self.corpus_dir, split)
        if not items:
            raise MissingArtifactError(
                f"no '{split}' keyframes or images for the visual tokenizer (clips '{self.clips_dir}', corpus '{self.corpus_dir}')"
            )
        return items

    def dataset(self, split: str) -> ImageItems:
        if split not in self._datasets:
            items = self.items(split)
            in_memory = self.in_memory
            if in_memory is None:
                in_memory = len(items) * self.image_size**2 * 3 <= IN_MEMORY_MAX_BYTES
            self._datasets[split] = ImageItems(items, self.image_size, in_memory)
        return self._datasets[split]

    def train_loader(self, start_batch: int = 0) -> DataLoader:
        """The endless training stream from batch ``start_batch`` on (what a run resumed at that step sees)."""
        dataset = self.dataset("train")
        rank, world = self._rank()
        stream = ImageTrainStream(dataset, self.seed, self.batch_size, start_batch, rank, world)
        workers = 0 if dataset.cache is not None else self.num_workers  # decoded already: workers would only copy
        return DataLoader(
            stream, batch_size=self.batch_size, collate_fn=collate_images, num_workers=workers, generator=self._generator()
        )

    def _eval_dataloader(self, split: str) -> DataLoader:
        dataset = self.dataset(split)
        workers = 0 if dataset.cache is not None else self.num_workers
        return DataLoader(
            dataset, batch_size=self.eval_batch_size, shuffle=False, collate_fn=collate_images, num_workers=workers,
            generator=self._generator(),
        )

    def val_dataloader(self) -> DataLoader:
        return self._eval_dataloader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_dataloader("test")
