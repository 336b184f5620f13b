"""DVC experiments that carry their metrics: the ``check`` stage first, effective params, tracked flat metrics, plots,
and inputs checked before an MLflow run opens."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from videolavit.config import STAGES

ROOT = Path(__file__).resolve().parents[1]
DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
EFFECTIVE = "params.effective.yaml"


def _params(spec: dict) -> list:
    return [next(iter(p)) if isinstance(p, dict) else p for p in spec.get("params", [])]


def test_check_runs_first_and_every_stage_reads_the_effective_params():
    assert next(iter(DVC)) == "check" and STAGES[0] == "check"
    check = DVC["check"]
    assert check["params"] == [{"params.yaml": None}]  # the whole file: a `-S +new.key=...` re-runs it too
    (out,) = check["outs"]
    assert out == {EFFECTIVE: {"cache": False, "persist": True}}  # git-tracked; kept when the check fails
    for stage, spec in DVC.items():
        if stage != "check":
            # one params file, the generated one: DVC orders `check` before the stage and compares real values
            assert [next(iter(p)) for p in spec["params"]] == [EFFECTIVE], stage
            assert "profile" not in spec["params"][0][EFFECTIVE], stage  # a profile switch re-runs what it changes


def test_metrics_and_plots_are_tracked_by_git_not_ignored():
    files = [next(iter(m)) for spec in DVC.values() for m in spec.get("metrics", [])]
    files += [next(iter(p)) + "/x.csv" for spec in DVC.values() for p in spec.get("plots", [])]
    files += [EFFECTIVE, "metrics/evaluate.notes.json"]
    ignored = subprocess.run(["git", "check-ignore", "--no-index", *files], cwd=ROOT, capture_output=True, text=True,
                             check=False)
    assert (ignored.returncode, ignored.stdout.split()) == (1, [])  # 1: none of them is ignored
    for spec in DVC.values():
        for entry in spec.get("metrics", []) + spec.get("plots", []):
            assert next(iter(entry.values()))["cache"] is False


def test_training_stages_declare_their_curves_as_plots():
    from videolavit.runner import PLOT_STAGES

    declared = {s for s, spec in DVC.items() if spec.get("plots")}
    assert declared == set(PLOT_STAGES)
    for stage in PLOT_STAGES:
        assert DVC[stage]["plots"] == [{f"metrics/plots/{stage}": {"cache": False, "x": "step"}}]


def test_stage_inputs_are_dvc_deps():
    """runner.STAGE_IO's data folders and models (checked before a run opens) are the stage's DVC deps."""
    from videolavit.artifacts import ARTIFACTS
    from videolavit.config import PathsConfig
    from videolavit.runner import STAGE_IO

    assert set(STAGE_IO) == set(STAGES)
    for stage, spec in STAGE_IO.items():
        deps = [d if isinstance(d, str) else next(iter(d)) for d in DVC[stage].get("deps", [])]
        for item in spec.inputs:
            if item.key.startswith("artifact:"):
                path = f"models/{ARTIFACTS[item.key.split(':', 1)[1]].directory}"
            else:
                path = getattr(PathsConfig, item.key.split(".", 1)[1])
            assert path in deps, (stage, path)


def test_write_metrics_keeps_numbers_only_and_puts_strings_in_notes(tiny_cfg_factory):
    from videolavit.runner import read_metrics, write_metrics

    cfg = tiny_cfg_factory()
    path = write_metrics(cfg, "evaluate", {"qa/video_acc": 0.5, "t2v/fvd": float("nan"), "count": 3,
                                          "protocol": "tiny_v3@3", "notes": {"t2v/fvd": "no extractor"}})
    assert json.loads(path.read_text()) == {"count": 3.0, "qa/video_acc": 0.5, "t2v/fvd": None}
    notes = Path(cfg.paths.metrics) / "evaluate.notes.json"
    assert json.loads(notes.read_text()) == {"notes": {"t2v/fvd": "no extractor"}, "protocol": "tiny_v3@3"}
    assert read_metrics(cfg.paths.metrics, "evaluate")["protocol"] == "tiny_v3@3"
    write_metrics(cfg, "evaluate", {"qa/video_acc": 0.5})
    assert not notes.exists()  # no stale notes from an earlier run


def test_check_writes_the_effective_values_and_a_bad_key_leaves_them(tmp_path, monkeypatch, capsys):
    from videolavit.cli import main

    monkeypatch.chdir(tmp_path)
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    assert main(["check", "motion_tokenizer.model.codebook_size=64"]) == 0
    written = (tmp_path / EFFECTIVE).read_text()
    values = yaml.safe_load(written)
    assert values["motion_tokenizer"]["model"]["codebook_size"] == 64  # params.yaml says null: the effective value
    assert values["motion_tokenizer"]["train"]["max_steps"] == 300 and values["profile"] == "tiny"
    assert "paths" not in values and "tracking" not in values
    assert main(["check", "motion_tokenizer.model.codebok_size=64"]) == 2
    assert "codebok_size" in capsys.readouterr().err
    assert (tmp_path / EFFECTIVE).read_text() == written  # untouched by the failed check
    assert main(["check", "--profile", "paper"]) == 2  # no teacher / VAE / SVD paths: named before anything runs
    assert "visual_tokenizer.model.teacher_path" in capsys.readouterr().err


def test_missing_inputs_open_no_mlflow_run(tiny_cfg_factory, tmp_path):
    """A stage whose inputs are missing fails before its MLflow run opens (it used to leave a FAILED run)."""
    import mlflow

    from videolavit.errors import MissingArtifactError
    from videolavit.runner import run_stage

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = tiny_cfg_factory(f"tracking.uri={uri}", "tracking.experiment=inputs")
    called = []
    with pytest.raises(MissingArtifactError, match=r"the clip shards not found .*videolavit decompose"):
        run_stage(cfg, "motion_tokenizer", lambda: called.append(1) or {})
    assert called == []
    if (tmp_path / "mlflow.db").exists():
        exp = mlflow.MlflowClient(uri).get_experiment_by_name("inputs")
        assert exp is None or mlflow.MlflowClient(uri).search_runs([exp.experiment_id]) == []
    with pytest.raises(MissingArtifactError, match="the pretrained LM not found"):
        run_stage(tiny_cfg_factory(f"tracking.uri={uri}", f"paths.tokens={tmp_path}", f"paths.corpus={tmp_path}"),
                  "instruct", dict)


def test_plots_hold_the_curves_the_run_logged(tiny_cfg_factory, tmp_path):
    """metrics/plots/<stage>/<metric>.csv: each metric logged at 2+ steps, not the final values (logged at step 0
    after the stage returns), not Lightning's epoch counter; the folder holds only this run's curves."""
    from videolavit import tracking
    from videolavit.runner import run_stage

    cfg = tiny_cfg_factory(f"tracking.uri=sqlite:///{tmp_path / 'plots.db'}", f"paths.clips={tmp_path}")
    folder = Path(cfg.paths.metrics) / "plots" / "motion_tokenizer"
    folder.mkdir(parents=True)
    (folder / "stale.csv").write_text("step,old\n")

    def fn():
        for step in (10, 20, 40):
            tracking.active().log_metrics({"train/loss": 1.0 / step, "epoch": 0.0}, step=step)
        tracking.active().log_metrics({"val/epe": 0.5}, step=40)
        return {"train/loss": 0.01, "val/epe": 0.5}

    run_stage(cfg, "motion_tokenizer", fn)
    assert sorted(p.name for p in folder.iterdir()) == ["train_loss.csv"]
    assert (folder / "train_loss.csv").read_text().splitlines() == ["step,train/loss", "10,0.1", "20,0.05", "40,0.025"]


@pytest.mark.slow
def test_dvc_experiment_carries_metrics_and_a_typo_deletes_nothing(tmp_path):
    """A trimmed pipeline (check + corpus, 2 videos) under a real `dvc exp run`."""
    repo = tmp_path / "repo"
    repo.mkdir()
    stages = {"check": DVC["check"], "corpus": {**DVC["corpus"], "deps": []}}
    stages["check"] = {**stages["check"], "deps": []}
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    params = {"profile": "tiny", "seed": 0, "corpus": {"train_videos": 2, "val_videos": 1, "test_videos": 1,
                                                        "images": 2}}
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    (repo / ".gitignore").write_text((ROOT / ".gitignore").read_text())
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "PYTHONPATH": str(ROOT / "src")}

    def sh(*cmd, check=True):
        return subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, check=check)

    sh("git", "init", "-q")
    sh("git", "config", "user.email", "t@t")
    sh("git", "config", "user.name", "t")
    sh("dvc", "init", "-q")
    sh("dvc", "repro")
    sh("git", "add", "-A")
    sh("git", "commit", "-qm", "baseline")
    before = {p: p.read_bytes() for p in [repo / "metrics/corpus.json", repo / EFFECTIVE, repo / "data/corpus/train.jsonl"]}
    bad = sh("dvc", "exp", "run", "-S", "+corpus.train_videoz=3", check=False)
    assert bad.returncode != 0 and "train_videoz" in bad.stdout + bad.stderr
    assert {p: p.read_bytes() for p in before} == before  # check failed first: nothing deleted
    sh("git", "checkout", "params.yaml")
    sh("dvc", "exp", "run", "-n", "three", "-S", "corpus.train_videos=3")
    shown = json.loads(sh("dvc", "exp", "show", "--json").stdout)
    baseline = next(r for r in shown if r["rev"] != "workspace")
    rows = [baseline] + [e["revs"][0] for e in baseline["experiments"]]
    values = [r["data"]["metrics"]["metrics/corpus.json"]["data"]["train_videos"] for r in rows]
    assert values == [2.0, 3.0]  # numeric for the baseline and the experiment
    assert [r["data"]["params"][EFFECTIVE]["data"]["corpus"]["train_videos"] for r in rows] == [2, 3]
    diff = json.loads(sh("dvc", "metrics", "diff", "--json").stdout)
    assert diff["metrics/corpus.json"]["train_videos"] == {"old": 2.0, "new": 3.0, "diff": 1.0}
