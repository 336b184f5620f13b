"""Stage detokenizer on tiny synthetic clips: end-to-end run with MLflow, resume, missing inputs, the metrics' contract."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from videolavit.data.shards import ClipShardWriter
from videolavit.errors import ConfigError, MissingArtifactError
from videolavit.models.motion_tokenizer import MotionTokenizer
from videolavit.models.visual_tokenizer import VisualTokenizer

T, H, W, S = 24, 16, 24, 16  # clip frames, frame size, keyframe size (the test renders at 16×24 to stay fast)


def moving_clip(rng: np.random.Generator, min_speed: int = 0) -> dict:
    """A textured frame translating at one velocity: frames [T, H, W, 3], its keyframe, and matching motion."""
    texture = rng.integers(0, 256, size=(H, 2 * W, 3), dtype=np.uint8)
    speed = int(rng.integers(min_speed, 2))
    frames = np.stack([np.roll(texture, speed * t, axis=1)[:, :W] for t in range(T)])  # [T, H, W, 3]
    motion = np.zeros((2, T, 8, 12), np.float32)
    motion[0, 1:] = speed
    keyframe = np.ascontiguousarray(frames[0][:S, :S])
    return {"frames": frames, "keyframe": keyframe, "motion": motion}


def write_clips(clips_dir: Path, counts=(("train", 6), ("val", 2)), seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for split, n in counts:
        with ClipShardWriter(clips_dir, split) as writer:
            for i in range(n):
                meta = {"video_id": f"{split}{i}", "clip": 0, "split": split, "caption": "", "start_time": 0.0}
                writer.write({"key": f"{split}{i:03d}__c000", "meta": meta, **moving_clip(rng, min_speed=1)})


def write_tokenizers(models_dir: Path) -> None:
    torch.manual_seed(0)
    VisualTokenizer(
        image_size=S, patch_size=8, width=32, depth=1, heads=2, mlp_ratio=2.0, merger_depth=1, decoder_depth=1,
        code_dim=8, codebook_size=16, kmeans_init=False,
    ).save_pretrained(models_dir / "visual_tokenizer")
    MotionTokenizer(
        frames=T, height=8, width=12, dim=16, depth=2, heads=2, downsample_after=[0, 1], downsample_strides=[[2, 2, 2], [2, 2, 2]],
        code_dim=8, codebook_size=16, kmeans_init=False,
    ).save_pretrained(models_dir / "motion_tokenizer")


FAST = (
    "video.keyframe_size=16",
    "video.frames_height=16",
    "video.frames_width=24",
    "detokenizer.video.unet.block_out_channels=[32,32]",
    "detokenizer.video.unet.num_attention_heads=[1,1]",
    "detokenizer.video.unet.cross_attention_dim=32",
    "detokenizer.video.motion_encoder.dim=16",
    "detokenizer.video.motion_encoder.depth=1",
    "detokenizer.video.motion_encoder.heads=2",
    "detokenizer.keyframe.unet.block_out_channels=[16,32]",
    "detokenizer.keyframe.unet.cross_attention_dim=32",
    "detokenizer.train.max_steps=2",
    "detokenizer.train.batch_size=1",
    "detokenizer.train.val_every_n_steps=2",
    "detokenizer.train.checkpoint_every_n_steps=1",
    "detokenizer.optim.warmup_steps=1",
    "detokenizer.eval.clips=2",
    "detokenizer.eval.batch_size=2",
    "detokenizer.eval.keyframe_steps=2",
    "detokenizer.eval.video_steps=1",
)
METRICS = (
    "val/keyframe_psnr", "val/keyframe_ssim", "val/video_psnr", "val/video_ssim", "val/video_psnr_true_motion",
    "val/video_psnr_static_baseline", "val/video_ssim_static_baseline", "val/video_psnr_warp_baseline",
    "train/keyframe_loss", "train/video_loss",
)


@pytest.fixture
def workspace(tmp_path):
    write_clips(tmp_path / "clips")
    write_tokenizers(tmp_path / "models")
    return tmp_path


def test_stage_trains_both_detokenizers_saves_them_and_logs_samples(tiny_cfg_factory, workspace):
    import mlflow

    from videolavit.models.keyframe_detokenizer import KeyframeDetokenizer
    from videolavit.models.video_detokenizer import VideoDetokenizer
    from videolavit.stages.detokenizer import run

    cfg = tiny_cfg_factory(*FAST, "tracking.experiment=detok-smoke")
    metrics = run(cfg)

    for key in METRICS:
        assert np.isfinite(metrics[key]), key
    assert metrics["global_step"] == 2 and metrics["val/clips"] == 2
    written = json.loads((workspace / "metrics" / "detokenizer.json").read_text())
    assert written["val/video_psnr"] == pytest.approx(metrics["val/video_psnr"])
    assert (workspace / "runs" / "detokenizer" / "checkpoints" / "last.ckpt").is_file()

    keyframe = KeyframeDetokenizer.from_pretrained(workspace / "models" / "detokenizer" / "keyframe")
    video = VideoDetokenizer.from_pretrained(workspace / "models" / "detokenizer" / "video")
    assert keyframe.config["cond_dim"] == 3 * 8 * 8  # the visual tokenizer's decoded features: pixels of 8×8 patches
    assert keyframe.config["image_size"] == [H, W]
    out = video.sample(torch.zeros(1, 3, H, W), torch.zeros(1, 2, T, 8, 12), steps=1, max_guidance=1.0)
    assert out.shape == (1, T, 3, H, W)

    run_id = mlflow.search_runs(experiment_names=["detok-smoke"]).iloc[0].run_id
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run_id, "samples")}
    assert {"samples/video_step000002.gif", "samples/keyframe_step000002.png"} <= artifacts


def test_resume_continues_from_the_last_checkpoint(tiny_cfg_factory, workspace):
    from videolavit.stages.detokenizer import fit

    fit(tiny_cfg_factory(*FAST, "tracking.enabled=false", "detokenizer.models=[video]", "detokenizer.eval.clips=1"))
    resumed = fit(
        tiny_cfg_factory(
            *FAST, "tracking.enabled=false", "detokenizer.models=[video]", "detokenizer.eval.clips=1",
            "detokenizer.train.max_steps=3", "detokenizer.train.resume=auto",
        )
    )
    assert resumed["global_step"] == 3
    assert "val/keyframe_psnr" not in resumed and np.isfinite(resumed["val/video_psnr"])


def test_missing_tokenizers_name_the_command_that_makes_them(tiny_cfg_factory, workspace):
    import shutil

    from videolavit.stages.detokenizer import fit

    shutil.rmtree(workspace / "models" / "motion_tokenizer")
    with pytest.raises(MissingArtifactError, match="videolavit motion_tokenizer"):
        fit(tiny_cfg_factory(*FAST, "tracking.enabled=false"))
    shutil.rmtree(workspace / "models" / "visual_tokenizer")
    with pytest.raises(MissingArtifactError, match="videolavit visual_tokenizer"):
        fit(tiny_cfg_factory(*FAST, "tracking.enabled=false"))


def test_bad_stage_settings_are_config_errors(tiny_cfg_factory, workspace):
    from videolavit.stages.detokenizer import fit

    with pytest.raises(ConfigError, match="condition_motion"):
        fit(tiny_cfg_factory(*FAST, "detokenizer.condition_motion=flow"))
    with pytest.raises(ConfigError, match="detokenizer.models"):
        fit(tiny_cfg_factory(*FAST, "detokenizer.models=[audio]"))


def test_tokens_condition_trains_on_the_motion_tokenizer_round_trip(tiny_cfg_factory, workspace):
    from videolavit.stages.detokenizer import load_tokenizers, video_kwargs
    from videolavit.training.detokenizer import DetokenizerModule

    cfg = tiny_cfg_factory(*FAST)
    tokenizers = load_tokenizers(cfg, ("video",), need_motion=True)
    module = DetokenizerModule(None, video_kwargs(cfg), {"lr": 1e-3}, 2, condition_motion="tokens").attach(tokenizers)
    seen = {}
    module.video.training_loss = lambda frames, keyframe, motion, generator=None: seen.update(
        motion=motion, keyframe=keyframe, frames=frames
    ) or torch.zeros(())
    clip = moving_clip(np.random.default_rng(3))
    batch = {"key": ["a"], "frames": torch.from_numpy(clip["frames"])[None], "motion": torch.from_numpy(clip["motion"])[None]}
    module.losses(module.on_after_batch_transfer(batch, 0))
    expected = tokenizers.motion_from_tokens(torch.from_numpy(clip["motion"])[None])
    torch.testing.assert_close(seen["motion"], expected)
    assert not torch.equal(expected, torch.from_numpy(clip["motion"])[None])  # the round trip is lossy
    assert seen["frames"].shape == (1, T, 3, H, W) and seen["frames"].min() >= -1 and seen["frames"].max() <= 1
    torch.testing.assert_close(seen["keyframe"], seen["frames"][:, 0])


def test_the_video_model_can_train_on_every_nth_step_and_fewer_clips(tiny_cfg_factory, workspace, monkeypatch):
    from videolavit.models.video_detokenizer import VideoDetokenizer
    from videolavit.stages.detokenizer import fit

    calls = []
    original = VideoDetokenizer.training_loss

    def counted(self, frames, keyframe, motion, generator=None):
        if self.training:
            calls.append(frames.shape[0])
        return original(self, frames, keyframe, motion, generator)

    monkeypatch.setattr(VideoDetokenizer, "training_loss", counted)
    metrics = fit(tiny_cfg_factory(
        *FAST, "tracking.enabled=false", "detokenizer.train.max_steps=4", "detokenizer.train.batch_size=2",
        "detokenizer.train.val_every_n_steps=4", "detokenizer.video_every_n_steps=2", "detokenizer.video_batch_size=1",
    ))
    assert metrics["global_step"] == 4 and calls == [1, 1]  # steps 0 and 2, one clip each; the keyframe model: 4 × 2
    assert np.isfinite(metrics["train/video_loss"]) and np.isfinite(metrics["val/video_psnr"])
    calls.clear()  # a video-only run has nothing else to train: every step is a video step (was: a loss of int 0)
    metrics = fit(tiny_cfg_factory(
        *FAST, "tracking.enabled=false", "detokenizer.models=[video]", "detokenizer.train.max_steps=3",
        "detokenizer.train.val_every_n_steps=3", "detokenizer.video_every_n_steps=4", f"paths.runs={workspace / 'runs_video_only'}",
    ))
    assert metrics["global_step"] == 3 and calls == [1, 1, 1] and np.isfinite(metrics["train/video_loss"])


class _Repeat:
    """A stand-in video detokenizer: frame 0 (the keyframe) repeated, or the true frames when given them."""

    def __init__(self, truth=None):
        self.config = {"height": H, "width": W}
        self.truth = truth

    def sample(self, keyframe, motion, steps, max_guidance, generator=None):
        if self.truth is not None:
            return self.truth
        return keyframe[:, None].expand(-1, motion.shape[2], -1, -1, -1)


def test_video_metrics_score_frames_after_the_keyframe_against_the_static_baseline(tmp_path):
    from videolavit.data.pixels import frames_to_unit
    from videolavit.evaluation.recon import score_detokenizers as evaluate
    from videolavit.training.detokenizer import FrozenTokenizers

    write_tokenizers(tmp_path)
    tokenizers = FrozenTokenizers(None, MotionTokenizer.from_pretrained(tmp_path / "motion_tokenizer"))
    rng = np.random.default_rng(1)
    records = [moving_clip(rng, min_speed=1) for _ in range(3)]
    eval_cfg = SimpleNamespace(batch_size=2, video_steps=1, video_guidance=1.0)

    static, _ = evaluate(None, _Repeat(), tokenizers, records, eval_cfg, seed=0)
    # the stand-in renders exactly the static baseline: equal scores, finite because frame 0 is not scored
    assert static["val/video_psnr"] == pytest.approx(static["val/video_psnr_static_baseline"])
    assert np.isfinite(static["val/video_psnr"]) and static["val/video_psnr_gain"] == pytest.approx(0.0, abs=1e-6)

    truth = frames_to_unit(torch.from_numpy(np.stack([r["frames"] for r in records[:2]])), (H, W))
    perfect, rendered = evaluate(None, _Repeat(truth), tokenizers, records[:2], eval_cfg, seed=0)
    assert perfect["val/video_psnr"] > 60 and perfect["val/video_ssim"] == pytest.approx(1.0, abs=1e-4)
    assert rendered["tokens"].shape == (2, T, H, W, 3) and rendered["tokens"].dtype == np.uint8


def test_a_motion_warp_detokenizer_beats_the_static_baseline_on_moving_clips(tmp_path):
    from videolavit.models.video_detokenizer import VideoDetokenizer
    from videolavit.evaluation.recon import score_detokenizers as evaluate
    from videolavit.training.detokenizer import FrozenTokenizers

    write_tokenizers(tmp_path)
    tokenizers = FrozenTokenizers(None, MotionTokenizer.from_pretrained(tmp_path / "motion_tokenizer"))
    std, rescale = [0.1, 0.1], 10.0
    records = [moving_clip(np.random.default_rng(i), min_speed=1) for i in range(2)]
    for record in records:  # px/frame at this size → the normalized units the model reads
        record["motion"] = record["motion"] / W / std[0] * rescale
    torch.manual_seed(0)
    video = VideoDetokenizer(
        frames=T, height=H, width=W, unet={"block_out_channels": [32, 32], "num_attention_heads": [1, 1]},
        motion_encoder={"grid": [8, 12], "dim": 16, "depth": 1, "heads": 2},
        keyframe_skip=True, motion_warp=True, motion_std=std, motion_rescale=rescale,
    ).eval()
    eval_cfg = SimpleNamespace(batch_size=2, video_steps=1, video_guidance=1.0)
    metrics, _ = evaluate(None, video, tokenizers, records, eval_cfg, seed=0)
    # untrained, it renders the keyframe carried along the motion: the texture moves, the static baseline does not
    assert metrics["val/video_psnr_true_motion"] > metrics["val/video_psnr_static_baseline"] + 3
    assert metrics["val/video_psnr_true_motion"] == pytest.approx(metrics["val/video_psnr_warp_baseline"], abs=0.5)


def test_paper_profile_gives_the_svd_and_sdxl_shapes():
    from videolavit.config import load_config
    from videolavit.models.video_detokenizer import PAPER_MOTION_ENCODER, PAPER_UNET
    from videolavit.stages.detokenizer import keyframe_kwargs, video_kwargs

    cfg = load_config(profile="paper", overrides=["detokenizer.video.vae_dir=/vae"], params_file=None)
    video = video_kwargs(cfg)
    assert video["unet"] == {k: v for k, v in PAPER_UNET.items()}
    assert {k: video["motion_encoder"][k] for k in PAPER_MOTION_ENCODER} == PAPER_MOTION_ENCODER
    assert (video["frames"], video["height"], video["width"], video["sigma_data"], video["sigma_max"]) == (24, 320, 576, 1.0, 700.0)
    assert video["vae_dir"] == "/vae"
    assert not video.get("keyframe_skip") and not video.get("motion_warp")  # the paper predicts whole frames
    keyframe = keyframe_kwargs(cfg, cond_dim=1408)
    assert keyframe["image_size"] == [320, 576] and keyframe["unet"]["cross_attention_dim"] == 2048
    assert keyframe["unet"]["addition_embed_type"] == "text_time" and keyframe["beta_schedule"] == "scaled_linear"
