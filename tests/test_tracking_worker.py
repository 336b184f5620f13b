"""A CLI-started stage keeps MLflow in a helper process (tracking_worker.prestart): the run it records is the
in-process one (params, tags, metric steps, artifacts, status), the stage process never imports MLflow, and a stage
process killed without ending its run leaves the run KILLED."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

STAGE = r"""
import json, sys, time
from pathlib import Path
from videolavit import tracking
from videolavit.tracking_worker import prestart
from videolavit.config import load_config
from videolavit.runner import stage_entry
root, mode = Path(sys.argv[1]), sys.argv[2]
paths = [f"paths.{k}={root}/{k}" for k in ("corpus", "clips", "tokens", "models", "metrics", "reports", "runs")]
cfg = load_config(profile="tiny", overrides=[*paths, "tracking.experiment=worker"], params_file=None)
started = prestart(cfg, "corpus")

def work(cfg):
    run = tracking.active()
    for step in (1, 2, 3):
        run.log_metrics({"train/loss": 1.0 / step}, step=step)
    run.set_tags({"probe.tag": "yes"})
    (root / "note.txt").write_text("artifact")
    run.log_artifact(root / "note.txt", "notes")
    histories = run.metric_histories()
    print(json.dumps({"started": started, "mlflow_loaded": "mlflow" in sys.modules,
                      "history": histories.get("train/loss")}), flush=True)
    if mode == "fail":
        raise RuntimeError("the stage failed")
    if mode == "hang":
        time.sleep(600)
    return {"x": 1.0}

stage_entry("corpus")(work)(cfg)
print(json.dumps({"mlflow_loaded_at_end": "mlflow" in sys.modules}), flush=True)
"""


def _client(tmp_path):
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    return client, client.get_experiment_by_name("worker")


def _env(tmp_path) -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/mlflow.db")


def _run(tmp_path, mode: str, **kwargs):
    return subprocess.run([sys.executable, "-c", STAGE, str(tmp_path / mode), mode], env=_env(tmp_path),
                          capture_output=True, text=True, timeout=300, check=False, **kwargs)


def test_a_prestarted_run_records_what_the_stage_logged_without_mlflow_in_the_stage(tmp_path):
    done = _run(tmp_path, "ok")
    assert done.returncode == 0, done.stderr[-2000:]
    inside, end = (json.loads(line) for line in done.stdout.strip().splitlines()[-2:])
    assert inside == {"started": True, "mlflow_loaded": False, "history": [[1, 1.0], [2, 0.5], [3, 1.0 / 3]]}
    assert end == {"mlflow_loaded_at_end": False}
    client, exp = _client(tmp_path)
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "corpus-tiny"
    assert len(run.data.params) > 100 and run.data.params["profile"] == "tiny"
    assert run.data.metrics["x"] == 1.0 and run.data.tags["probe.tag"] == "yes"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [1, 2, 3]
    assert run.data.tags["videolavit.stage"] == "corpus" and run.data.tags["videolavit.pid"].isdigit()
    assert [a.path for a in client.list_artifacts(run.info.run_id, "notes")] == ["notes/note.txt"]


def test_a_failing_stage_ends_its_prestarted_run_failed(tmp_path):
    done = _run(tmp_path, "fail")
    assert done.returncode != 0 and "the stage failed" in done.stderr
    client, exp = _client(tmp_path)
    assert [r.info.status for r in client.search_runs([exp.experiment_id])] == ["FAILED"]


@pytest.mark.slow
def test_a_sigkilled_stage_leaves_its_prestarted_run_killed(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", STAGE, str(tmp_path / "hang"), "hang"], env=_env(tmp_path),
                            stdout=subprocess.PIPE, text=True)
    assert json.loads(proc.stdout.readline())["started"] is True  # the run is open
    os.kill(proc.pid, signal.SIGKILL)  # the stage process only: its helper sees its requests end
    proc.wait()
    client, exp = _client(tmp_path)
    for _ in range(240):
        (run,) = client.search_runs([exp.experiment_id])
        if run.info.status != "RUNNING":
            break
        __import__("time").sleep(0.5)
    assert run.info.status == "KILLED" and "ended without ending its run" in run.data.tags["videolavit.killed_reason"]


def test_a_deleted_experiment_is_a_config_error_at_the_start(tmp_path):
    client = _client(tmp_path)[0]
    client.delete_experiment(client.create_experiment("worker"))
    done = _run(tmp_path, "ok")
    assert done.returncode != 0 and "ConfigError" in done.stderr and "experiment 'worker' is deleted" in done.stderr
    assert '"started": true' not in done.stdout  # the stage's work never ran
