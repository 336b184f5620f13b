"""Lightning DataModules over the clip shards written by the decompose stage.

``ClipDataModule`` serves the train / val / test splits of ``paths.clips``. A small split is loaded into memory; a large
one is streamed shard by shard (split across dataloader workers and ranks). The training stream is infinite and a pure
function of (seed, batch index), so a run resumed at step k sees exactly the batches an uninterrupted run would.
``ImageDataModule`` serves the clips' keyframes and the corpus images at the visual tokenizer's input size.
"""

from __future__ import annotations

import random
import tarfile
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from videolavit.data.clip_settings import check_clip_settings
from videolavit.data.image_index import ImageIndex, build_index, load_image_item
from videolavit.data.resumable import ResumableDataModule, batches_served, global_worker
from videolavit.data.shards import ARRAY_FIELDS, SPLITS, clip_shard_urls, is_remote, iter_clip_records, iter_shard
from videolavit.errors import MissingArtifactError

IN_MEMORY_MAX_BYTES = 1 << 30  # splits whose decoded records total less than this are loaded into memory
SHUFFLE_BUFFER_BYTES = 512 << 20  # compute.shuffle_buffer_bytes' default: decoded bytes a loader worker holds to mix


def record_bytes(record: dict) -> int:
    """Decoded size of a clip record's arrays (what it costs in a shuffle buffer or in memory)."""
    return sum(v.nbytes for v in record.values() if isinstance(v, np.ndarray)) + 512  # + key, meta, dict


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
        buffer_bytes: int = SHUFFLE_BUFFER_BYTES,
    ):
        self.paths, self.fields, self.seed, self.infinite = [str(p) for p in paths], tuple(fields), seed, infinite
        self.batch_size, self.start_batch, self.rank, self.world_size = batch_size, start_batch, rank, world_size
        self.buffer_bytes = int(buffer_bytes)

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
        """A seeded shuffle buffer bounded in decoded bytes (``buffer_bytes``), not in records: 1000 records were
        0.14 GB of motion but 13.6 GB with frames. A random record leaves once the buffer is full."""
        buffer: list[dict] = []
        sizes: list[int] = []
        held = 0
        for record in records:
            buffer.append(record)
            sizes.append(record_bytes(record))
            held += sizes[-1]
            while held >= self.buffer_bytes and buffer:
                i = rng.randrange(len(buffer))
                buffer[i], buffer[-1] = buffer[-1], buffer[i]
                sizes[i], sizes[-1] = sizes[-1], sizes[i]
                held -= sizes.pop()
                yield buffer.pop()
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


def _clip_count(clips_dir: str, split: str, paths: Sequence[str]) -> Optional[int]:
    """Clips of a split: decompose's ``stats.json`` count, else the ``.json`` members of local shards (headers only)."""
    import json

    if not str(clips_dir).startswith("pipe:"):
        try:
            from videolavit.data.shards import open_shard

            with open_shard(f"{str(clips_dir).rstrip('/')}/stats.json") as f:
                return int(json.load(f)["clips"][split])
        except (OSError, KeyError, TypeError, ValueError):
            pass
    if is_remote(clips_dir):
        return None
    count = 0
    for path in paths:
        with tarfile.open(path, "r") as tar:
            count += sum(1 for m in tar if m.isfile() and m.name.endswith(".json"))
    return count


def decoded_split_bytes(clips_dir: str, split: str, fields: Sequence[str], paths: Sequence[str]) -> Optional[int]:
    """The memory a split's records take once decoded (clips × the first clip's decoded fields), None if unknown.

    Shard bytes understate it: an H.264 clip is ~11x smaller on disk than its decoded frames."""
    first = next(iter_shard(paths[0], fields), None) if paths else None
    count = _clip_count(clips_dir, split, paths)
    if first is None or count is None:
        return None if count is None else 0
    return count * record_bytes(first)


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
        self.clips_dir = str(cfg.paths.clips)  # a local folder, an fsspec URL or a pipe: template (data/shards.py)
        self.fields = tuple(fields)
        check_clip_settings(cfg, self.fields)  # clips made with other video.* sizes would be read as wrong values
        self.buffer_bytes = int(getattr(cfg.compute, "shuffle_buffer_bytes", SHUFFLE_BUFFER_BYTES))
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.in_memory = in_memory
        self._memory: dict[str, list[dict]] = {}

    def shard_paths(self, split: str) -> list[str]:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        paths = clip_shard_urls(self.clips_dir, split)
        if not paths:
            raise MissingArtifactError(
                f"no '{split}' clip shards in '{self.clips_dir}' (expected {split}-*.tar). Run `videolavit decompose` first."
            )
        return paths

    def _use_memory(self, split: str) -> bool:
        if self.in_memory is not None:
            return self.in_memory
        estimate = decoded_split_bytes(self.clips_dir, split, self.fields, self.shard_paths(split))
        return estimate is not None and estimate <= IN_MEMORY_MAX_BYTES

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
            dataset = ShardStream(paths, self.fields, self.seed, True, self.batch_size, start, rank, world, self.buffer_bytes)
            workers = self.num_workers
        return DataLoader(
            dataset, batch_size=self.batch_size, collate_fn=collate_clips, num_workers=workers,
            generator=self._generator(), persistent_workers=False, pin_memory=self.pin_memory,
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
            generator=self._generator(), pin_memory=self.pin_memory,
        )

    def val_dataloader(self) -> DataLoader:
        return self._eval_dataloader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_dataloader("test")


# --------------------------------------------------------------------------------------------------------------------
# Keyframes and images: the visual tokenizer's data (resized by data/images.py, as the tokenize stage does)


class ImageItems(Dataset):
    """Keyframes and images as ``{"key", "image": uint8 [S, S, 3]}``; decoded once into memory when ``in_memory``."""

    def __init__(self, items: ImageIndex, size: int, in_memory: bool):
        self.items, self.size = items, int(size)
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
        self.clips_dir, self.corpus_dir = str(cfg.paths.clips), Path(cfg.paths.corpus)
        self.image_size, self.batch_size = int(image_size), int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.keyframes, self.images, self.in_memory = keyframes, images, in_memory
        self._datasets: dict[str, ImageItems] = {}

    def _share(self, split: str) -> tuple[int, int]:
        """(share, shares) of the shards and manifest this rank indexes: its own 1/world for training when every rank
        gets at least one shard; all of it for val/test (a DistributedSampler splits those)."""
        rank, world = self._rank()
        if split != "train" or world == 1:
            return 0, 1
        if self.keyframes and len(clip_shard_urls(self.clips_dir, split)) < world:
            return 0, 1
        return rank, world

    def items(self, split: str, share: int = 0, shares: int = 1) -> ImageIndex:
        """The index of share ``share`` of ``shares`` of a split (tar headers and manifest lines of that share only)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        paths: list[str] = []
        if self.keyframes:
            paths = clip_shard_urls(self.clips_dir, split)
            if not paths:
                raise MissingArtifactError(
                    f"no '{split}' clip shards in '{self.clips_dir}' (expected {split}-*.tar). Run `videolavit decompose` "
                    "first, or set visual_tokenizer.keyframes=false to train on images only."
                )
        index = build_index(paths[share::shares], self.corpus_dir if self.images else None, split, share, shares)
        if not len(index) and shares > 1:  # this rank's share is empty (fewer images than ranks): take all
            return self.items(split)
        if not len(index):
            raise MissingArtifactError(
                f"no '{split}' keyframes or images for the visual tokenizer (clips '{self.clips_dir}', corpus '{self.corpus_dir}')"
            )
        return index

    def dataset(self, split: str) -> ImageItems:
        if split not in self._datasets:
            items = self.items(split, *self._share(split))
            in_memory = self.in_memory
            if in_memory is None:
                in_memory = len(items) * self.image_size**2 * 3 <= IN_MEMORY_MAX_BYTES
            self._datasets[split] = ImageItems(items, self.image_size, in_memory)
        return self._datasets[split]

    def train_loader(self, start_batch: int = 0) -> DataLoader:
        """The endless training stream from batch ``start_batch`` on (what a run resumed at that step sees)."""
        dataset = self.dataset("train")
        rank, world = self._rank()
        if self._share("train")[1] > 1:  # this rank's own index: a stream of its own (rank 0 keeps the seed)
            rank, world, seed = 0, 1, self.seed + self._share("train")[0]
        else:
            seed = self.seed
        stream = ImageTrainStream(dataset, seed, self.batch_size, start_batch, rank, world)
        workers = 0 if dataset.cache is not None else self.num_workers  # decoded already: workers would only copy
        return DataLoader(
            stream, batch_size=self.batch_size, collate_fn=collate_images, num_workers=workers, generator=self._generator(),
            pin_memory=self.pin_memory,
        )

    def _eval_dataloader(self, split: str) -> DataLoader:
        dataset = self.dataset(split)
        workers = 0 if dataset.cache is not None else self.num_workers
        return DataLoader(
            dataset, batch_size=self.eval_batch_size, shuffle=False, collate_fn=collate_images, num_workers=workers,
            generator=self._generator(), pin_memory=self.pin_memory,
        )

    def val_dataloader(self) -> DataLoader:
        return self._eval_dataloader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_dataloader("test")
