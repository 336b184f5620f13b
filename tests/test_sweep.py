"""Optuna sweeps: search-space sampling, one MLflow run per trial, best parameters and the Pareto front."""

from __future__ import annotations

import optuna
import pytest
import yaml

from videolavit.config import load_config
from videolavit.errors import ConfigError
from videolavit.sweep import _sample, load_sweep_spec, run_sweep


@pytest.mark.parametrize("stage", ["motion_tokenizer", "visual_tokenizer"])
def test_every_choice_of_the_shipped_space_is_a_valid_config(stage):
    """Each categorical choice (incl. expanded grids) must load, or a sweep would die mid-study."""
    spec = load_sweep_spec(stage)
    for key, dist in spec["space"].items():
        choices = dist["choices"]
        for choice in choices.values() if isinstance(choices, dict) else choices:
            values = choice if dist.get("expand") else {key: choice}
            cfg = load_config(overrides=[f"{k}={v}" for k, v in {**spec["fixed"], **values}.items()], params_file=None)
            if stage == "motion_tokenizer":
                from videolavit.models.motion_tokenizer import MotionTokenizer
                import torch

                with torch.device("meta"):
                    model = MotionTokenizer(**cfg.motion_tokenizer.model)
                assert model.tokens_per_clip > 0


def test_expanded_grid_choice_sets_several_keys():
    spec = load_sweep_spec("motion_tokenizer")
    trial = optuna.create_study().ask()
    values = _sample(trial, spec["space"])
    assert "motion_tokenizer.model.downsample_after" in values and "motion_tokenizer.model.downsample_strides" in values
    assert trial.params["grid"] in spec["space"]["grid"]["choices"]


def test_unknown_option_and_mode_are_errors(tiny_cfg_factory):
    with pytest.raises(ConfigError, match="unknown sweep option"):
        run_sweep("motion_tokenizer", tiny_cfg_factory(), ["trails=3"])
    with pytest.raises(ConfigError, match="mode"):
        run_sweep("motion_tokenizer", tiny_cfg_factory(), ["mode=both"])


@pytest.mark.slow
def test_three_trial_multi_objective_sweep_leaves_three_runs_and_a_pareto_image(tiny_cfg_factory, tmp_path, monkeypatch):
    import mlflow

    from test_motion_tokenizer_stage import write_clips

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    write_clips(tmp_path / "clips")
    cfg = tiny_cfg_factory("tracking.experiment=sweep-test", "motion_tokenizer.train.batch_size=4")
    out = tmp_path / "sweeps"
    summary = run_sweep(
        "motion_tokenizer",
        cfg,
        ["trials=3", "mode=multi", f"storage=sqlite:///{tmp_path}/optuna.db", "study=t", f"out={out}"],
    )
    assert summary["complete"] == 3
    assert (out / "t" / "pareto.png").stat().st_size > 1000
    best = yaml.safe_load((out / "t" / "best.yaml").read_text())
    assert best["pareto_front"] and set(best["pareto_front"][0]["values"]) == {"val/epe", "tokens_per_clip"}

    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("sweep-test").experiment_id], "tags.`optuna.trial` != ''")
    assert len(runs) == 3
    assert sorted(int(r.data.tags["optuna.trial"]) for r in runs) == [0, 1, 2]
    assert {r.data.tags["optuna.study"] for r in runs} == {"t"}
    # a second process joining the same study adds trials instead of starting over
    again = run_sweep("motion_tokenizer", cfg, ["trials=1", "mode=multi", f"storage=sqlite:///{tmp_path}/optuna.db", "study=t", f"out={out}"])
    assert again["trials"] == 4


def test_pruning_callback_is_a_lightning_callback_that_prunes_when_the_trial_says_so():
    import lightning as L
    from types import SimpleNamespace

    from videolavit.training.callbacks import PruningCallback

    class Trial:
        def __init__(self, prune: bool):
            self.reports, self.prune = [], prune

        def report(self, value, step):
            self.reports.append((value, step))

        def should_prune(self):
            return self.prune

    keep, stop = Trial(False), Trial(True)
    trainer = SimpleNamespace(sanity_checking=False, global_step=3, callback_metrics={"val/epe": 0.5})
    callback = PruningCallback(keep, "val/epe")
    assert isinstance(callback, PruningCallback) and isinstance(callback, L.Callback)
    callback.on_validation_end(trainer, None)
    assert keep.reports == [(0.5, 3)]
    PruningCallback(keep, "val/other").on_validation_end(trainer, None)  # not logged yet: nothing reported
    assert keep.reports == [(0.5, 3)]
    with pytest.raises(optuna.TrialPruned, match="step 3"):
        PruningCallback(stop, "val/epe").on_validation_end(trainer, None)


def test_single_objective_sweep_hands_the_pruning_callback_to_fit(tiny_cfg_factory, tmp_path, monkeypatch):
    """Callbacks reach the stage as an argument of ``fit`` (no module-level registry), and the metrics file is written."""
    from videolavit.stages import motion_tokenizer
    from videolavit.training.callbacks import PruningCallback

    seen = []

    def fake_fit(cfg, callbacks=None):
        seen.append(list(callbacks or []))
        return {"val/epe": 1.0 + len(seen), "tokens_per_clip": 8.0}

    monkeypatch.setattr(motion_tokenizer, "fit", fake_fit)
    cfg = tiny_cfg_factory("tracking.enabled=false")
    (tmp_path / "clips").mkdir()  # the stage's input, checked before each trial's run opens (fit itself is faked)
    out = tmp_path / "sweeps"
    summary = run_sweep("motion_tokenizer", cfg, ["trials=2", f"storage=sqlite:///{tmp_path}/optuna.db", f"out={out}"])
    assert summary["complete"] == 2 and summary["best"]["val/epe"] == 2.0
    assert [len(cbs) for cbs in seen] == [1, 1] and all(isinstance(cbs[0], PruningCallback) for cbs in seen)
    assert yaml.safe_load((out / "motion_tokenizer-single" / "trial_0000" / "metrics" / "motion_tokenizer.json").read_text())["val/epe"] == 2.0


def test_sweep_has_a_parent_run_and_best_yaml_holds_overrides_a_stage_accepts(tiny_cfg_factory, tmp_path, monkeypatch):
    import mlflow

    from videolavit.cli import overrides_from_file
    from videolavit.config import load_config
    from videolavit.stages import motion_tokenizer

    calls = []

    def fake_fit(cfg, callbacks=None):
        calls.append(1)
        return {"val/epe": 3.0 - len(calls), "tokens_per_clip": 8.0}

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setattr(motion_tokenizer, "fit", fake_fit)
    cfg = tiny_cfg_factory("tracking.experiment=sweep-parent")
    (tmp_path / "clips").mkdir()  # the stage's input, checked before each trial's run opens (fit itself is faked)
    out = tmp_path / "sweeps"
    run_sweep("motion_tokenizer", cfg, ["trials=2", f"storage=sqlite:///{tmp_path}/optuna.db", "study=p", f"out={out}"])

    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("sweep-parent").experiment_id])
    parents = [r for r in runs if r.data.tags["videolavit.stage"] == "sweep"]
    assert len(parents) == 1 and parents[0].info.run_name == "p"
    trials = [r for r in runs if r is not parents[0] and "optuna.trial" in r.data.tags]
    assert len(trials) == 2 and {r.data.tags["mlflow.parentRunId"] for r in trials} == {parents[0].info.run_id}
    assert parents[0].data.metrics["val/epe"] == 1.0

    best = yaml.safe_load((out / "p" / "best.yaml").read_text())
    spec = load_sweep_spec("motion_tokenizer")
    assert best["overrides"] and not set(best["overrides"]) & set(spec.get("fixed") or {})
    overrides = overrides_from_file(str(out / "p" / "best.yaml"))
    applied = load_config(stage="motion_tokenizer", overrides=overrides, params_file=None)  # every key is a config key
    from omegaconf import OmegaConf

    for key, value in best["overrides"].items():
        assert OmegaConf.select(applied, key) == value or list(OmegaConf.select(applied, key)) == value
