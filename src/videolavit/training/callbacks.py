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


def _fmt_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class PipeProgress(L.Callback):
    """One line per quarter of the steps, and one at least every ``every_seconds`` in between, for logs that are not
    a terminal (pipes, SLURM): ``<stage> step 50/200 (25%) loss 2.531 | 12.3 steps/s | elapsed 4s, eta 12s``, flushed
    at once. Quarters keep a whole tiny ``dvc repro`` readable (about four lines a stage); the time rule gives a long
    paper-scale run a line a minute."""

    def __init__(self, stage: str, every_steps: int | None = None, every_seconds: float = 60.0, stream=None):
        self.stage, self.every_steps, self.every_seconds, self.stream = stage, every_steps, every_seconds, stream
        self._t0 = self._last_t = 0.0
        self._first = self._last_step = 0

    def _print(self, line: str) -> None:
        import sys

        stream = self.stream or sys.stdout
        print(line, file=stream, flush=True)

    def on_train_start(self, trainer, module) -> None:
        self._t0 = self._last_t = time.perf_counter()
        self._first = self._last_step = int(trainer.global_step)  # a resumed run starts past 0

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if not trainer.is_global_zero:
            return
        step, total = int(trainer.global_step), int(trainer.max_steps)
        if step == self._last_step:  # gradient accumulation: no optimizer step yet
            return
        every = self.every_steps or max(1, total // 4)
        now = time.perf_counter()
        if step % every and step != total and now - self._last_t < self.every_seconds:
            return
        self._last_step, self._last_t = step, now
        self._print(self.line(trainer, step, total, now - self._t0))

    def line(self, trainer, step: int, total: int, elapsed: float) -> str:
        done = step - self._first
        rate = done / elapsed if elapsed > 0 else float("nan")
        parts = [f"{self.stage} step {step}/{total} ({100 * step / max(1, total):.0f}%)"]
        loss = _train_loss(trainer.callback_metrics)
        if loss is not None:
            parts[0] += f" loss {loss:.4g}"
        eta = (total - step) / rate if rate and rate == rate and rate > 0 else None
        parts.append(f"{rate:.3g} steps/s" if rate == rate else "- steps/s")
        parts.append(f"elapsed {_fmt_seconds(elapsed)}" + (f", eta {_fmt_seconds(eta)}" if eta is not None else ""))
        return " | ".join(parts)


def _train_loss(metrics) -> float | None:
    """``train/loss`` (or the first training ``*loss`` logged) as a float; None before it is logged."""
    keys = ["train/loss", *sorted(k for k in metrics if k.startswith("train") and k.endswith("loss"))]
    for key in keys:
        if key in metrics:
            try:
                return float(metrics[key])
            except (TypeError, ValueError):
                return None
    return None


def step_progress_bar(stage: str):
    """A terminal progress bar counted in optimizer steps of the whole run (``<stage>: 40/200``); Lightning's own
    counts epochs of an epoch-less run (``Epoch 0/-2``) or resets every pass over a small dataset."""
    from lightning.pytorch.callbacks import TQDMProgressBar

    class StepProgressBar(TQDMProgressBar):
        def on_train_start(self, trainer, module) -> None:
            super().on_train_start(trainer, module)
            bar = self.train_progress_bar
            bar.reset(total=int(trainer.max_steps))
            bar.n = bar.initial = int(trainer.global_step)
            bar.set_description(stage)

        def on_train_epoch_start(self, trainer, *_) -> None:
            pass  # one bar for the run, not one per epoch

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            bar = self.train_progress_bar
            if bar is not None and bar.n != trainer.global_step:
                bar.n = int(trainer.global_step)
                bar.set_postfix(self.get_metrics(trainer, module), refresh=False)
                bar.refresh()

        def on_train_epoch_end(self, trainer, module) -> None:
            pass  # the bar ends with the run (on_train_end), not with a pass over the data

    return StepProgressBar()
