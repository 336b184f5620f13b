"""Shared fixtures: every test writes under its own tmp dir and its own MLflow store, never into the project."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _isolated_tracking(tmp_path_factory):
    """A session-wide SQLite MLflow store in a temp dir, so tests never touch the project's mlflow.db."""
    store = tmp_path_factory.mktemp("mlflow")
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{store}/mlflow.db"
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    yield
    if old is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = old


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny models are dominated by per-op overhead, where a second intra-op thread costs more than it gives."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def tiny_cfg_factory(tmp_path):
    """``make(*overrides)`` → the tiny config with every path under tmp_path (params.yaml ignored)."""
    from videolavit.config import load_config

    def make(*overrides: str, profile: str = "tiny"):
        paths = [f"paths.{key}={tmp_path / key}" for key in ("corpus", "clips", "tokens", "models", "metrics", "reports", "runs")]
        return load_config(profile=profile, overrides=[*paths, *overrides], params_file=None)

    return make
