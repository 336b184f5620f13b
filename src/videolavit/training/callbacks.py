"""Lightning callbacks the training stages and the sweep pass to ``fit(cfg, callbacks=...)``."""

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


class PruningCallback(L.Callback):
    """Reports the monitored metric to an Optuna trial after each validation and stops a trial the pruner gives up on."""

    def __init__(self, trial, monitor: str):
        self.trial, self.monitor = trial, monitor

    def on_validation_end(self, trainer, pl_module) -> None:
        import optuna

        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[self.monitor])
        self.trial.report(value, step=trainer.global_step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {trainer.global_step}: {self.monitor}={value:.4f}")
