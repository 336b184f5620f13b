"""One MLflow run per stage invocation, with the config as params and provenance tags."""

from __future__ import annotations

import json
import os

import pytest

from videolavit import tracking
from videolavit.runner import stage_entry, write_metrics


def test_stage_entry_opens_one_run_with_params_tags_and_metrics(tiny_cfg_factory, tmp_path, monkeypatch):
    import mlflow

    uri = f"sqlite:///{tmp_path}/m.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    cfg = tiny_cfg_factory("tracking.experiment=unit")

    @stage_entry("corpus")
    def run(cfg):
        assert tracking.active().enabled
        return {"videos": 3, "ratio": 0.5, "nan": float("nan")}

    metrics = run(cfg)
    assert metrics["videos"] == 3
    saved = json.loads((tmp_path / "metrics" / "corpus.json").read_text())
    assert saved["videos"] == 3.0 and saved["nan"] is None

    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("unit")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    r = runs[0]
    assert r.info.status == "FINISHED"
    assert r.data.tags["videolavit.stage"] == "corpus" and r.data.tags["videolavit.profile"] == "tiny"
    assert "git_sha" in r.data.tags
    assert r.data.params["video.fps"] == "6.0"
    assert r.data.metrics["videos"] == 3.0 and "nan" not in r.data.metrics


def test_failed_stage_marks_the_run_failed(tiny_cfg_factory, tmp_path, monkeypatch):
    import mlflow

    uri = f"sqlite:///{tmp_path}/m.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    cfg = tiny_cfg_factory("tracking.experiment=unitfail")

    @stage_entry("corpus")
    def run(cfg):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        run(cfg)
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("unitfail").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]
    assert not (tmp_path / "metrics" / "corpus.json").exists()


def test_tracking_disabled_is_a_no_op(tiny_cfg_factory, tmp_path):
    cfg = tiny_cfg_factory("tracking.enabled=false")

    @stage_entry("corpus")
    def run(cfg):
        assert not tracking.active().enabled
        tracking.active().log_metrics({"x": 1})
        return {"x": 1.0}

    assert run(cfg) == {"x": 1.0}


def test_uri_precedence(monkeypatch, tiny_cfg_factory):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = tiny_cfg_factory()
    assert tracking.tracking_uri(cfg) == "sqlite:///mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///x.db")
    assert tracking.tracking_uri(cfg) == "sqlite:///x.db"
    cfg = tiny_cfg_factory("tracking.uri=sqlite:///y.db")
    assert tracking.tracking_uri(cfg) == "sqlite:///y.db"


def test_write_metrics_sorted_and_null_for_nonfinite(tiny_cfg_factory, tmp_path):
    path = write_metrics(tiny_cfg_factory(), "x", {"b": 1, "a": float("inf")})
    assert json.loads(path.read_text()) == {"a": None, "b": 1.0}


def test_seeding_loads_no_torch_for_a_stage_without_it_and_seeds_it_when_loaded():
    """corpus, decompose and report never import torch; seeding must not either (it costs such a stage ~2.5 s)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from videolavit.runner import seed_everything\n"
        "seed_everything(3)\n"
        "print('torch' in sys.modules)\n"
        "import torch\n"
        "seed_everything(3); a = torch.rand(2)\n"
        "seed_everything(3); b = torch.rand(2)\n"
        "torch.manual_seed(4); c = torch.rand(2)\n"
        "print(torch.equal(a, b), torch.equal(a, c))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True", "False"]


def test_stage_processes_send_no_mlflow_telemetry_unless_the_user_asks(monkeypatch):
    from mlflow.telemetry.utils import is_telemetry_disabled

    from videolavit.runner import quiet_third_party

    monkeypatch.delenv("MLFLOW_DISABLE_TELEMETRY", raising=False)
    monkeypatch.delenv("DO_NOT_TRACK", raising=False)
    quiet_third_party(terminal=True)
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true" and is_telemetry_disabled()
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "false")
    quiet_third_party(terminal=True)
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "false"
