"""Scale-out: the pretrain stage under DDP with two CPU processes (gloo), launched the way a user would (the CLI)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_pretrain_stage import SMALL_LM, make_toy_tokens


@pytest.mark.slow
def test_pretrain_runs_under_ddp_on_two_cpu_processes(tiny_cfg_factory, tmp_path):
    cfg = tiny_cfg_factory()
    make_toy_tokens(cfg)
    paths = [f"paths.{key}={tmp_path / key}" for key in ("corpus", "clips", "tokens", "models", "metrics", "reports", "runs")]
    command = [
        sys.executable, "-m", "videolavit.cli", "pretrain", *paths, *SMALL_LM,
        "compute.strategy=ddp", "compute.devices=2", "pretrain.train.max_steps=3", "pretrain.train.batch_size=2",
        "pretrain.train.val_every_n_steps=3", "pretrain.train.checkpoint_every_n_steps=3",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    metrics = json.loads((tmp_path / "metrics" / "pretrain.json").read_text())
    assert metrics["world_size"] == 2
    assert metrics["global_step"] == 3
    assert metrics["val/loss"] > 0
    assert (tmp_path / "models" / "lm_pretrain" / "model.safetensors").is_file()
    assert (tmp_path / "runs" / "pretrain" / "checkpoints" / "last.ckpt").is_file()
    assert not list(Path(tmp_path).glob("mlflow.db"))  # tracking off: nothing written beside the run
