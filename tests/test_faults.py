"""Faults a stage must survive (issue 15): a corrupted or foreign checkpoint, SIGTERM, a second run of the same stage,
a run killed outright, many stages opening a fresh MLflow store at once. ``-m slow`` runs the real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from videolavit.errors import ConfigError, StageBusyError, StageInterrupted
from videolavit.runner import stage_entry

STAGE = "motion_tokenizer"
KEY = f"{STAGE}.train.resume"


def _fake_checkpoint(cfg, tmp_path) -> Path:
    """A torch-saved dict in last.ckpt with its integrity record, as the checkpoint callback leaves them."""
    import torch

    from videolavit.training.checkpoints import write_record
    from videolavit.training.trainer import checkpoint_dir

    path = checkpoint_dir(cfg, STAGE) / "last.ckpt"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": {"w": torch.arange(4096, dtype=torch.float32)}, "global_step": 7}, path)
    write_record(path, cfg, STAGE, 7)
    return path


def _resume_error(cfg) -> str:
    from videolavit.training.trainer import resume_checkpoint

    with pytest.raises(ConfigError) as info:
        resume_checkpoint(cfg, STAGE, "auto")
    return str(info.value)


def test_intact_checkpoint_resumes_and_faulty_ones_name_the_key_and_file(tiny_cfg_factory, tmp_path):
    from videolavit.training.trainer import resume_checkpoint

    cfg = tiny_cfg_factory()
    path = _fake_checkpoint(cfg, tmp_path)
    assert resume_checkpoint(cfg, STAGE, "auto") == str(path)
    good = path.read_bytes()

    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0x10  # one bit in the tensor data: torch would load it silently
    path.write_bytes(bytes(flipped))
    message = _resume_error(cfg)
    assert KEY in message and str(path) in message and "sha256" in message and f"{KEY}=never" in message

    path.write_bytes(good[: len(good) // 3])
    message = _resume_error(cfg)
    assert KEY in message and "truncated" in message and str(path) in message

    path.write_bytes(b"")
    assert "empty" in _resume_error(cfg)

    path.write_bytes(good)
    other = tiny_cfg_factory("motion_tokenizer.model.codebook_size=64")
    message = _resume_error(other)
    assert KEY in message and "motion_tokenizer.model.codebook_size" in message and "64" in message

    Path(str(path) + ".integrity.json").unlink()
    assert "no integrity record" in _resume_error(cfg)


def test_explicit_resume_path_is_checked_too(tiny_cfg_factory, tmp_path):
    from videolavit.training.trainer import resume_checkpoint

    cfg = tiny_cfg_factory()
    path = _fake_checkpoint(cfg, tmp_path)
    copy = tmp_path / "copied.ckpt"
    copy.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ConfigError, match="no integrity record"):
        resume_checkpoint(cfg, STAGE, str(copy))


def _tiny_module():
    import lightning as L
    import torch

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch, batch_idx):
            return self.layer(batch[0]).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    return Tiny()


def _loader():
    import torch

    data = torch.utils.data.TensorDataset(torch.randn(64, 4))
    return torch.utils.data.DataLoader(data, batch_size=4)


def _datamodule():
    import lightning as L

    class DM(L.LightningDataModule):
        def train_dataloader(self):
            return _loader()

    return DM()


def _trainer(cfg, max_steps: int, callbacks=()):
    from videolavit.training.trainer import make_trainer

    train_cfg = cfg.motion_tokenizer.train.copy()
    train_cfg.max_steps, train_cfg.checkpoint_every_n_steps, train_cfg.val_batches = max_steps, 1000, 0
    return make_trainer(cfg, STAGE, train_cfg, callbacks=list(callbacks), enable_progress_bar=False, limit_val_batches=0)


def test_sigterm_saves_a_checkpoint_and_raises_stage_interrupted_and_auto_resume_continues(tiny_cfg_factory, tmp_path):
    import lightning as L
    import torch

    from videolavit.training.checkpoints import fit
    from videolavit.training.trainer import resume_checkpoint

    class SigtermAt(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == 5:
                os.kill(os.getpid(), signal.SIGTERM)  # through Lightning's own handler, as docker stop / SLURM send it

    cfg = tiny_cfg_factory("tracking.enabled=false")
    trainer = _trainer(cfg, 50, [SigtermAt()])
    with pytest.raises(StageInterrupted) as info:
        fit(trainer, _tiny_module(), _datamodule(), None, STAGE)
    assert info.value.exit_code == 128 + signal.SIGTERM == 143 and f"{KEY}=auto" in str(info.value)
    last = resume_checkpoint(cfg, STAGE, "auto")  # saved on SIGTERM (periodic saving is every 1000 steps) and intact
    assert last is not None and torch.load(last, weights_only=True)["global_step"] == 5

    resumed = _trainer(cfg, 8)
    fit(resumed, _tiny_module(), _datamodule(), last, STAGE)
    assert resumed.global_step == 8  # 3 more steps, not 8 from scratch
    assert torch.load(last, weights_only=True)["global_step"] == 8


SLURM_ENV = {"SLURM_JOB_ID": "4242", "SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_JOB_NAME": "train",
             "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost"}


def test_under_slurm_the_requeue_signal_then_sigterm_leave_a_resumable_checkpoint(tiny_cfg_factory, tmp_path, monkeypatch):
    """SLURM preemption: SIGUSR1 (Lightning's auto-requeue: hpc checkpoint, scontrol requeue) then SIGTERM."""
    import lightning as L
    import torch
    from lightning.fabric.plugins.environments import SLURMEnvironment

    from videolavit.training.checkpoints import fit
    from videolavit.training.trainer import resume_checkpoint

    for key, value in SLURM_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("PATH", str(tmp_path))  # no scontrol here: the requeue call fails, training goes on

    class Preempt(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == 3:
                os.kill(os.getpid(), signal.SIGUSR1)
            if trainer.global_step == 6:
                os.kill(os.getpid(), signal.SIGTERM)

    cfg = tiny_cfg_factory("tracking.enabled=false")
    trainer = _trainer(cfg, 50, [Preempt()])
    assert isinstance(trainer._accelerator_connector.cluster_environment, SLURMEnvironment)
    with pytest.raises(StageInterrupted) as info:
        fit(trainer, _tiny_module(), _datamodule(), None, STAGE)
    assert info.value.exit_code == 143
    assert list((tmp_path / "runs" / STAGE).glob("hpc_ckpt_*.ckpt"))  # Lightning's requeue checkpoint (step 3)
    last = resume_checkpoint(cfg, STAGE, "auto")  # ours, newer: where SIGTERM stopped training
    assert torch.load(last, weights_only=True)["global_step"] == 6


def test_a_checkpoint_with_a_pickled_object_is_refused_not_run(tiny_cfg_factory, tmp_path):
    import torch

    from videolavit.training.checkpoints import fit, write_record
    from videolavit.training.trainer import resume_checkpoint

    cfg = tiny_cfg_factory("tracking.enabled=false")
    _trainer_ = _trainer(cfg, 2)
    fit(_trainer_, _tiny_module(), _datamodule(), None, STAGE)
    last = resume_checkpoint(cfg, STAGE, "auto")
    marker = tmp_path / "payload-ran"
    state = torch.load(last, weights_only=True)
    state["extra"] = _Payload(str(marker))
    torch.save(state, last)
    write_record(last, cfg, STAGE, 2)  # a matching record: only weights_only=True stands between it and the payload
    with pytest.raises(ConfigError) as info:
        fit(_trainer(cfg, 4), _tiny_module(), _datamodule(), resume_checkpoint(cfg, STAGE, "auto"), STAGE)
    assert KEY in str(info.value) and str(last) in str(info.value)
    assert not marker.exists()


class _Payload:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_second_run_of_a_stage_fails_fast_naming_the_holder(tiny_cfg_factory):
    from videolavit.runner import output_lock

    cfg = tiny_cfg_factory("tracking.enabled=false")
    ran = []

    @stage_entry("corpus")
    def run(cfg):
        ran.append(1)
        return {}

    with output_lock(cfg, "corpus"):
        with pytest.raises(StageBusyError) as info:
            run(cfg)
    assert f"PID {os.getpid()}" in str(info.value) and "corpus.lock" in str(info.value) and not ran
    run(cfg)  # released with the holder
    assert ran == [1]
    other_shard = tiny_cfg_factory("tracking.enabled=false", "decompose.shard=1/4")
    with output_lock(other_shard, "decompose"):
        with output_lock(tiny_cfg_factory("decompose.shard=2/4"), "decompose"):  # shards write disjoint outputs
            pass


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_runs_left_running_by_a_dead_process_are_marked_killed(tiny_cfg_factory, tmp_path, monkeypatch):
    import socket

    import mlflow

    uri = f"sqlite:///{tmp_path}/m.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    cfg = tiny_cfg_factory("tracking.experiment=stale")
    client = mlflow.MlflowClient(uri)
    experiment_id = client.create_experiment("stale")
    host = {"videolavit.host": socket.gethostname()}
    dead = client.create_run(experiment_id, tags={"videolavit.stage": "corpus", "videolavit.pid": str(_dead_pid()), **host})
    alive = client.create_run(experiment_id, tags={"videolavit.stage": "corpus", "videolavit.pid": str(os.getpid()), **host})
    other_stage = client.create_run(experiment_id, tags={"videolavit.stage": "report", "videolavit.pid": str(_dead_pid()), **host})

    @stage_entry("corpus")
    def run(cfg):
        return {"x": 1.0}

    run(cfg)
    status = {r.info.run_id: r.info.status for r in client.search_runs([experiment_id])}
    assert status[dead.info.run_id] == "KILLED"
    assert status[alive.info.run_id] == "RUNNING" and status[other_stage.info.run_id] == "RUNNING"
    mine = [r for r in client.search_runs([experiment_id]) if r.data.tags.get("videolavit.pid") == str(os.getpid())]
    assert [r.info.status for r in mine if r.info.run_id != alive.info.run_id] == ["FINISHED"]
    assert mlflow.MlflowClient(uri).get_run(mine[0].info.run_id).data.params["video.fps"] == "6.0"


def test_interrupted_stage_exits_with_the_signal_code_and_its_run_is_killed(tiny_cfg_factory, tmp_path, monkeypatch):
    import mlflow

    from videolavit import cli

    uri = f"sqlite:///{tmp_path}/m.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    cfg = tiny_cfg_factory("tracking.experiment=sigterm")

    @stage_entry("corpus")
    def run(cfg):
        raise StageInterrupted(signal.SIGTERM, "corpus: stopped by SIGTERM")

    monkeypatch.setattr(cli, "run_stage", lambda stage, overrides, profile=None: run(cfg))
    assert cli.main(["corpus"]) == 143
    client = mlflow.MlflowClient(uri)
    (mlrun,) = client.search_runs([client.get_experiment_by_name("sigterm").experiment_id])
    assert mlrun.info.status == "KILLED"


# ---------------------------------------------------------------- slow: real processes -------------------------------


def _env(tmp_path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/fresh/mlflow.db")
    env.pop("SLURM_JOB_ID", None)
    return env


NOOP = """
import sys
from videolavit.config import load_config
from videolavit.runner import stage_entry
root = sys.argv[1]
paths = [f"paths.{k}={root}/{k}" for k in ("corpus", "clips", "tokens", "models", "metrics", "reports", "runs")]
cfg = load_config(profile="tiny", overrides=[*paths, "tracking.experiment=concurrent"], params_file=None)
stage_entry("corpus")(lambda cfg: {"x": 1.0})(cfg)
"""


@pytest.mark.slow
def test_six_stages_on_a_fresh_store_at_once_all_succeed_and_are_recorded(tmp_path):
    import mlflow

    env = _env(tmp_path)
    procs = [
        subprocess.Popen([sys.executable, "-c", NOOP, str(tmp_path / f"p{i}")], env=env, stderr=subprocess.PIPE, text=True)
        for i in range(6)
    ]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, "\n".join(e[-800:] for e in errors)
    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("concurrent").experiment_id])
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * 6
    assert all(len(r.data.params) > 100 and r.data.metrics["x"] == 1.0 for r in runs)


def _stage_cmd(tmp_path, *overrides: str) -> list[str]:
    paths = [f"paths.{k}={tmp_path / k}" for k in ("corpus", "clips", "tokens", "models", "metrics", "reports", "runs")]
    return [sys.executable, "-m", "videolavit.cli", STAGE, *paths, "tracking.experiment=faults", *overrides]


TRAIN = (
    "motion_tokenizer.train.batch_size=4",
    "motion_tokenizer.train.val_every_n_steps=4",
    "motion_tokenizer.train.val_batches=1",
    "motion_tokenizer.train.checkpoint_every_n_steps=100000",
    "motion_tokenizer.optim.warmup_steps=2",
)


def _wait_for(path_glob, root: Path, proc, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not list(root.glob(path_glob)):
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < deadline, f"no {path_glob} after {timeout} s"
        time.sleep(0.5)


@pytest.mark.slow
def test_sigterm_mid_training_exits_143_with_a_checkpoint_that_resume_auto_continues(tmp_path):
    import mlflow
    import torch

    from tests.test_motion_tokenizer_stage import write_clips

    write_clips(tmp_path / "clips")
    env = _env(tmp_path)
    first = subprocess.Popen(_stage_cmd(tmp_path, *TRAIN, "motion_tokenizer.train.max_steps=100000"), env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for("runs/motion_tokenizer/samples/val_step000004.png", tmp_path, first)

    second = subprocess.run(_stage_cmd(tmp_path, *TRAIN, "motion_tokenizer.train.max_steps=3"), env=env,
                            capture_output=True, text=True, timeout=120, check=False)  # the same stage's outputs: refused
    assert second.returncode == 2 and f"PID {first.pid}" in second.stderr, second.stderr[-2000:]

    first.send_signal(signal.SIGTERM)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 143, err[-2000:]
    assert "stopped by SIGTERM" in err and f"{KEY}=auto" in err
    last = tmp_path / "runs" / STAGE / "checkpoints" / "last.ckpt"
    record = json.loads(Path(str(last) + ".integrity.json").read_text())
    step = torch.load(last, weights_only=True, map_location="cpu")["global_step"]
    assert step >= 4 and record["global_step"] == step
    assert not (tmp_path / "models" / STAGE / "model.safetensors").exists()

    resumed = subprocess.run(_stage_cmd(tmp_path, *TRAIN, f"motion_tokenizer.train.max_steps={step + 2}", f"{KEY}=auto"),
                             env=env, capture_output=True, text=True, timeout=300, check=False)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming from {last}" in resumed.stdout
    assert json.loads((tmp_path / "metrics" / f"{STAGE}.json").read_text())["global_step"] == step + 2

    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("faults").experiment_id], order_by=["attributes.start_time ASC"])
    assert [r.info.status for r in runs] == ["KILLED", "FINISHED"]  # the refused second run opened no run

    data = bytearray(last.read_bytes())
    data[len(data) // 2] ^= 0x01
    last.write_bytes(bytes(data))
    flipped = subprocess.run(_stage_cmd(tmp_path, *TRAIN, f"motion_tokenizer.train.max_steps={step + 4}", f"{KEY}=auto"),
                             env=env, capture_output=True, text=True, timeout=300, check=False)
    assert flipped.returncode == 2 and KEY in flipped.stderr and str(last) in flipped.stderr, flipped.stderr[-2000:]
    assert "Traceback" not in flipped.stderr


@pytest.mark.slow
def test_a_sigkilled_run_is_marked_killed_when_the_stage_next_starts(tmp_path):
    import mlflow

    env = _env(tmp_path)
    # the victim says when its run is open: opening the store here before then would race its creation
    script = NOOP.replace('lambda cfg: {"x": 1.0}', '(lambda cfg: (print("in run", flush=True), __import__("time").sleep(600)))')
    victim = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "a")], env=env, stdout=subprocess.PIPE, text=True)
    assert victim.stdout.readline().strip() == "in run"
    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    found = client.get_experiment_by_name("concurrent")
    victim.kill()
    victim.wait()
    assert client.search_runs([found.experiment_id])[0].info.status == "RUNNING"
    subprocess.run([sys.executable, "-c", NOOP, str(tmp_path / "b")], env=env, check=True, timeout=120)
    statuses = {r.data.tags["videolavit.pid"]: r.info.status for r in client.search_runs([found.experiment_id])}
    assert statuses[str(victim.pid)] == "KILLED" and sorted(statuses.values()) == ["FINISHED", "KILLED"]
