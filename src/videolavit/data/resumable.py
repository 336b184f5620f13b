"""What exact resume needs from every DataModule: rank, the batch to start from, a loader generator, the worker split.

A training stream is a pure function of (seed, rank, worker, batch index); a DataModule built on
``ResumableDataModule`` starts it at ``global_step · accumulate_grad_batches``, so a run resumed at step k sees the
batches an uninterrupted run would.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, get_worker_info


def uses_cuda(accelerator: Any) -> bool:
    """Whether Lightning will train on CUDA for ``compute.accelerator`` (gpu/cuda, or auto with a visible GPU)."""
    name = str(accelerator).lower()
    return name in ("gpu", "cuda") or (name == "auto" and torch.cuda.is_available())


def global_worker(rank: int, world: int, shift: int = 0) -> tuple[int, int, int]:
    """(this worker's index among all, how many in all, dataloader workers per rank).

    ``shift`` relabels dataloader worker w as (w + shift) % workers (a stream that lets worker 0 serve batch ``shift``).
    """
    info = get_worker_info()
    workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
    worker = (worker + shift) % workers
    return rank * workers + worker, world * workers, workers


def batches_served(start_batch: int, worker: int, workers: int) -> int:
    """How many batches a rank's dataloader worker ``worker`` served before batch ``start_batch``.

    The DataLoader takes batches from its workers in turn: worker w serves batches w, w + workers, …
    """
    return max(0, -(-(start_batch - worker) // workers))


class ResumableDataModule(L.LightningDataModule):
    """Seed, workers, rank and resume position from the trainer; subclasses give ``train_loader(start_batch)``."""

    def __init__(self, cfg: Any):
        super().__init__()
        self.seed = int(cfg.seed)
        self.num_workers = int(cfg.compute.num_workers or 0)
        # page-locked host batches: the host-to-GPU copy runs asynchronously (no use, and a cost, without CUDA)
        self.pin_memory = uses_cuda(cfg.compute.accelerator)

    def _rank(self) -> tuple[int, int]:
        trainer = self.trainer
        return (int(trainer.global_rank), int(trainer.world_size)) if trainer is not None else (0, 1)

    def _start_batch(self) -> int:
        trainer = self.trainer
        if trainer is None:
            return 0
        return int(trainer.global_step) * int(getattr(trainer, "accumulate_grad_batches", 1) or 1)

    def _generator(self) -> torch.Generator:
        # Loaders get their own generator: without one every loader iterator draws its base seed from the global
        # RNG, which training uses.
        return torch.Generator().manual_seed(self.seed)

    def train_dataloader(self) -> DataLoader:
        return self.train_loader(self._start_batch())

    def train_loader(self, start_batch: int = 0) -> DataLoader:
        """The endless training stream from batch ``start_batch`` on (what a run resumed at that step sees)."""
        raise NotImplementedError
