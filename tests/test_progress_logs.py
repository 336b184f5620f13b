"""Training progress for pipes and terminals: periodic step/loss/throughput/ETA lines, a bar counted in steps."""

from __future__ import annotations

import io
import re

import pytest

torch = pytest.importorskip("torch")
L = pytest.importorskip("lightning")


class _Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        loss = self.w(batch[0]).pow(2).mean()
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _fit(callbacks, max_steps=20, **kw):
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 2)), batch_size=2)  # 4 a pass
    trainer = L.Trainer(max_steps=max_steps, max_epochs=-1, logger=False, enable_checkpointing=False,
                        enable_model_summary=False, callbacks=callbacks, accelerator="cpu", **kw)
    trainer.fit(_Tiny(), data)
    return trainer


def test_pipe_progress_prints_steps_loss_throughput_and_eta():
    from videolavit.training.callbacks import PipeProgress

    out = io.StringIO()
    _fit([PipeProgress("pretrain", stream=out)], enable_progress_bar=False)
    lines = out.getvalue().splitlines()
    assert len(lines) == 4  # every quarter of 20 steps, across 5 passes over the data
    assert lines[0].startswith("pretrain step 5/20 (25%) loss ")
    assert lines[-1].startswith("pretrain step 20/20 (100%)")
    assert all(re.search(r"\d steps/s \| elapsed \d+s, eta \d+s$", line) for line in lines), lines


def test_pipe_progress_prints_a_line_a_minute_between_quarters(monkeypatch):
    from videolavit.training import callbacks

    clock = iter(float(t) for t in range(0, 10_000, 61))  # every step 61 s after the last
    monkeypatch.setattr(callbacks.time, "perf_counter", lambda: next(clock))
    out = io.StringIO()
    _fit([callbacks.PipeProgress("pretrain", stream=out)], enable_progress_bar=False)
    assert len(out.getvalue().splitlines()) == 20  # a long step: a line each, not only at the quarters


def test_progress_callbacks_in_a_pipe_are_lines_not_a_bar(monkeypatch):
    from videolavit.training.callbacks import PipeProgress
    from videolavit.training.trainer import progress_callbacks

    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setattr("os.isatty", lambda fd: False)
    assert [type(c) for c in progress_callbacks("pretrain")] == [PipeProgress]
    assert progress_callbacks("pretrain", enable_progress_bar=False) == []


def test_terminal_bar_counts_steps_of_the_whole_run():
    from videolavit.training.callbacks import step_progress_bar

    bar = step_progress_bar("motion_tokenizer")
    _fit([bar], max_steps=10, enable_progress_bar=True)
    assert bar.train_progress_bar.total == 10 and bar.train_progress_bar.n == 10
    assert bar.train_progress_bar.desc.startswith("motion_tokenizer")  # not Lightning's "Epoch 0/-2"


def test_batch_transfer_hook_warnings_are_filtered_at_the_source():
    """The visual tokenizer and detokenizer move their batches in ``on_before/after_batch_transfer`` on purpose; with a
    DataModule Lightning warns about it once per stage, two lines of every ``dvc repro`` log."""
    import warnings

    from videolavit.runner import quiet_third_party

    class _Hooked(_Tiny):
        def on_before_batch_transfer(self, batch, dataloader_idx):
            return batch

        def on_after_batch_transfer(self, batch, dataloader_idx):
            return batch

    class _Data(L.LightningDataModule):
        def train_dataloader(self):
            return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 2)), batch_size=2)

    def hook_warnings():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            quiet_third_party(terminal=True)  # inside: catch_warnings restores the filters afterwards
            L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_model_summary=False,
                      enable_progress_bar=False, accelerator="cpu").fit(_Hooked(), datamodule=_Data())
        return [str(w.message) for w in caught if "batch_transfer" in str(w.message)]

    assert hook_warnings() == []
