"""MLflow runs that say what they are: a training experiment, the commit, the stage's inputs now, the DVC experiment."""

from __future__ import annotations

import subprocess

from videolavit import tracking
from videolavit.runner import stage_entry


def _git(cwd, *args):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                   env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@t", "PATH": "/usr/bin:/bin"})


def test_git_sha_is_clean_when_only_dvc_lock_and_metrics_changed(tmp_path, monkeypatch):
    (tmp_path / "metrics").mkdir()
    for name in ("dvc.lock", "metrics/a.json", "params.effective.yaml", "code.py"):
        (tmp_path / name).write_text("0\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-qm", "x")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dvc.lock").write_text("1\n")  # DVC between two stages of one repro
    (tmp_path / "metrics/a.json").write_text("1\n")
    (tmp_path / "params.effective.yaml").write_text("1\n")  # the check stage's output
    assert not tracking.git_sha().endswith("-dirty")
    (tmp_path / "code.py").write_text("1\n")
    assert tracking.git_sha().endswith("-dirty")


def test_lock_hash_follows_the_stage_inputs_now(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data/x.bin").write_bytes(b"a")
    (tmp_path / "dvc.yaml").write_text("stages:\n  s:\n    cmd: run s\n    deps: [data]\n")
    (tmp_path / "dvc.lock").write_text("stages: {}\n")
    before = tracking.dvc_lock_hash("s")
    (tmp_path / "data/x.bin").write_bytes(b"b")  # a new input; dvc.lock is rewritten only after the stage
    after = tracking.dvc_lock_hash("s")
    assert before and after and before != after
    assert tracking.dvc_lock_hash("missing") is None


def test_runs_land_in_a_training_experiment_named_by_dvc_experiment(tiny_cfg_factory, tmp_path, monkeypatch):
    import mlflow

    uri = f"sqlite:///{tmp_path}/m.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("DVC_EXP_NAME", "wide-codebook")
    cfg = tiny_cfg_factory("tracking.experiment=unit")

    @stage_entry("corpus")
    def run(cfg):
        return {"videos": 1}

    run(cfg)
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("unit")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    r = client.search_runs([exp.experiment_id])[0]
    assert r.info.run_name == "corpus-tiny@wide-codebook" and r.data.tags["dvc.experiment"] == "wide-codebook"


def test_a_copied_project_writes_its_artifacts_into_the_copy(tiny_cfg_factory, tmp_path, monkeypatch):
    import shutil

    import mlflow

    original, copy = tmp_path / "original", tmp_path / "copy"
    original.mkdir()
    monkeypatch.chdir(original)  # MLflow's default artifact root: ./mlruns, recorded as an absolute path
    cfg = tiny_cfg_factory("tracking.experiment=unit", f"tracking.uri=sqlite:///{original}/mlflow.db")
    with tracking.start_run(cfg, "corpus") as run:
        (original / "a.txt").write_text("a")
        run.log_artifact(original / "a.txt")
    shutil.copytree(original, copy)
    monkeypatch.chdir(copy)
    cfg = tiny_cfg_factory("tracking.experiment=unit", f"tracking.uri=sqlite:///{copy}/mlflow.db")
    with tracking.start_run(cfg, "corpus") as run:
        (copy / "b.txt").write_text("b")
        run.log_artifact(copy / "b.txt")
        second = run.run_id
    client = mlflow.MlflowClient(f"sqlite:///{copy}/mlflow.db")
    assert client.get_run(second).info.artifact_uri.startswith(str(copy / "mlruns"))
    assert not list((original / "mlruns").rglob("b.txt")) and list((copy / "mlruns").rglob("b.txt"))
    first = [r for r in client.search_runs([run.experiment_id]) if r.info.run_id != second][0]
    assert [a.path for a in client.list_artifacts(first.info.run_id)] == ["a.txt"]  # the copied run reads the copy
    assert first.info.artifact_uri.startswith(str(copy / "mlruns"))
