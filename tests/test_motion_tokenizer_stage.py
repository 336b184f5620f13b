"""Stage motion_tokenizer on synthetic clip shards: smoke run with MLflow, exact resume after a kill, the quality bar."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from videolavit.data.shards import ClipShardWriter
from videolavit.models.motion_tokenizer import MotionTokenizer

FINAL_KEYS = ("val/rec_loss", "val/epe", "val/epe_zero_baseline", "val/codebook_usage", "val/perplexity", "train/loss")


def smooth_motion(rng: np.random.Generator, frames: int = 24, height: int = 8, width: int = 12) -> np.ndarray:
    """A clip's normalized motion: the background translates at one velocity, a box at another; frame 0 is still."""
    motion = np.zeros((2, frames, height, width), np.float32)  # [2, T, h, w]
    motion[:, 1:] = rng.uniform(-1.5, 1.5, size=(2, 1, 1, 1))
    bh, bw = rng.integers(2, 5), rng.integers(2, 6)
    y, x = rng.integers(0, height - bh), rng.integers(0, width - bw)
    motion[:, 1:, y : y + bh, x : x + bw] = rng.uniform(-3, 3, size=(2, 1, 1, 1))
    return motion


def write_clips(clips_dir: Path, counts=(("train", 48), ("val", 12)), seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for split, n in counts:
        with ClipShardWriter(clips_dir, split) as writer:
            for i in range(n):
                meta = {"video_id": f"{split}{i}", "clip": 0, "split": split, "caption": "", "start_time": 0.0}
                writer.write(
                    {"key": f"{split}{i:03d}__c000", "motion": smooth_motion(rng), "keyframe": np.zeros((8, 8, 3), np.uint8), "meta": meta}
                )


SHORT = (
    "motion_tokenizer.train.max_steps=6",
    "motion_tokenizer.train.batch_size=4",
    "motion_tokenizer.train.val_every_n_steps=3",
    "motion_tokenizer.train.checkpoint_every_n_steps=2",
    "motion_tokenizer.optim.warmup_steps=2",
)


def test_stage_trains_saves_and_tracks(tiny_cfg_factory, tmp_path):
    import mlflow

    from videolavit.stages.motion_tokenizer import run

    write_clips(tmp_path / "clips")
    cfg = tiny_cfg_factory(*SHORT, "tracking.experiment=motion-smoke")
    metrics = run(cfg)

    for key in FINAL_KEYS:
        assert np.isfinite(metrics[key]), key
    assert metrics["tokens_per_clip"] == 144 and metrics["global_step"] == 6
    assert 0 < metrics["val/codebook_usage"] <= 1 and metrics["val/epe_zero_baseline"] > 0
    written = json.loads((tmp_path / "metrics" / "motion_tokenizer.json").read_text())
    assert written["val/epe"] == pytest.approx(metrics["val/epe"])
    assert (tmp_path / "runs" / "motion_tokenizer" / "checkpoints" / "last.ckpt").is_file()
    assert sorted(p.name for p in (tmp_path / "runs" / "motion_tokenizer" / "samples").glob("*.png")) == [
        "val_step000003.png",
        "val_step000006.png",
    ]

    model = MotionTokenizer.from_pretrained(tmp_path / "models" / "motion_tokenizer")
    assert model.encode(torch.from_numpy(smooth_motion(np.random.default_rng(5)))[None]).shape == (1, 144)

    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("motion-smoke")
    (mlrun,) = client.search_runs([experiment.experiment_id])
    assert mlrun.info.status == "FINISHED"
    assert "val/epe" in mlrun.data.metrics and "train/loss" in mlrun.data.metrics
    assert [a.path for a in client.list_artifacts(mlrun.info.run_id, "samples")] == [
        "samples/val_step000003.png",
        "samples/val_step000006.png",
    ]


class Killed(RuntimeError):
    pass


class KillAfter(L.Callback):
    """Simulates a kill: raises once training has done ``steps`` optimizer steps."""

    def __init__(self, steps: int):
        self.steps = steps

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.steps:
            raise Killed(f"killed after step {trainer.global_step}")


def test_resume_after_a_kill_matches_an_uninterrupted_run(tiny_cfg_factory, tmp_path):
    from videolavit.stages.motion_tokenizer import fit

    write_clips(tmp_path / "clips")
    common = (*SHORT, "tracking.enabled=false", f"paths.clips={tmp_path / 'clips'}")
    whole = fit(tiny_cfg_factory(*common, f"paths.runs={tmp_path / 'a'}", f"paths.models={tmp_path / 'a_models'}"))

    interrupted = (*common, f"paths.runs={tmp_path / 'b'}", f"paths.models={tmp_path / 'b_models'}")
    with pytest.raises(Killed):
        fit(tiny_cfg_factory(*interrupted), callbacks=[KillAfter(5)])  # last.ckpt is from step 4
    resumed = fit(tiny_cfg_factory(*interrupted, "motion_tokenizer.train.resume=auto"))

    assert resumed["global_step"] == whole["global_step"] == 6
    for key in FINAL_KEYS:
        assert resumed[key] == pytest.approx(whole[key], rel=1e-4, abs=1e-6), key
    a = MotionTokenizer.from_pretrained(tmp_path / "a_models" / "motion_tokenizer")
    b = MotionTokenizer.from_pretrained(tmp_path / "b_models" / "motion_tokenizer")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.allclose(x.float(), y.float(), atol=1e-5), name


def test_cli_without_clips_says_to_run_decompose(tmp_path, monkeypatch, capsys):
    from videolavit.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["motion_tokenizer", "tracking.enabled=false", f"paths.clips={tmp_path / 'none'}"]) == 2
    assert "videolavit decompose" in capsys.readouterr().err


def test_model_shape_must_match_the_clips(tiny_cfg_factory):
    from videolavit.errors import ConfigError
    from videolavit.stages.motion_tokenizer import fit

    with pytest.raises(ConfigError, match="video.motion_height"):
        fit(tiny_cfg_factory("tracking.enabled=false", "motion_tokenizer.model.height=16"))


@pytest.mark.slow
def test_tiny_default_meets_the_quality_bar(tiny_cfg_factory, tmp_path):
    """The tiny profile as shipped: held-out EPE at most half of predicting zero motion, over half the codebook used."""
    from videolavit.stages.motion_tokenizer import fit

    write_clips(tmp_path / "clips", counts=(("train", 192), ("val", 32)))
    metrics = fit(tiny_cfg_factory("tracking.enabled=false"))
    assert metrics["val/epe"] <= 0.5 * metrics["val/epe_zero_baseline"]
    assert metrics["val/codebook_usage"] > 0.5


def test_reconstruction_losses_match_their_definitions(tiny_cfg_factory):
    from videolavit.errors import ConfigError
    from videolavit.metrics.motion import MotionEPE
    from videolavit.training.motion_tokenizer import reconstruction_loss
    from videolavit.video.motion import denormalize_motion

    cfg = tiny_cfg_factory("tracking.enabled=false")
    assert cfg.motion_tokenizer.loss == "mse_epe"  # the tiny default
    rng = np.random.default_rng(3)
    motion = torch.from_numpy(np.stack([smooth_motion(rng) for _ in range(2)]))
    rec = motion + 0.1 * torch.randn_like(motion)
    mse = reconstruction_loss(rec, motion, "mse", cfg.video)
    epe = reconstruction_loss(rec, motion, "epe", cfg.video)
    metric = MotionEPE()
    metric.update(denormalize_motion(rec, cfg.video, axis=1), denormalize_motion(motion, cfg.video, axis=1))
    assert mse == pytest.approx(float(torch.nn.functional.mse_loss(rec, motion)))
    assert epe == pytest.approx(float(metric.compute()), rel=1e-4)
    assert reconstruction_loss(rec, motion, "mse_epe", cfg.video) == pytest.approx(float(mse + epe), rel=1e-5)
    with pytest.raises(ConfigError, match="motion_tokenizer.loss"):
        reconstruction_loss(rec, motion, "l3", cfg.video)
