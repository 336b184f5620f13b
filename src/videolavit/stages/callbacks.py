"""Lightning callbacks the training stages share (a module of its own: ``stages/common.py`` stays free of Lightning)."""

from __future__ import annotations

import time

import lightning as L


class SampleThroughput(L.Callback):
    """Training samples (``len(batch["key"])``) per second of the training steps this process ran."""

    def __init__(self):
        self.samples, self.seconds, self._started = 0, 0.0, 0.0

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self._started = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.seconds += time.perf_counter() - self._started
        self.samples += len(batch["key"])

    @property
    def per_second(self) -> float:
        return self.samples / self.seconds if self.seconds else float("nan")
