"""``videolavit plan`` (training/plan.py) and the pretrained parts a paper-profile stage needs (training/required.py)."""

from __future__ import annotations

import json

import pytest

from videolavit.config import load_config
from videolavit.errors import ConfigError
from videolavit.training.required import missing_before_training, text_tokenizer_mismatch



def _torchrun(world: int) -> dict:
    """What torchrun sets in each worker (rank 0 of node 0 here)."""
    return {"TORCHELASTIC_RUN_ID": "job", "WORLD_SIZE": str(world), "RANK": "0", "LOCAL_RANK": "0",
            "LOCAL_WORLD_SIZE": "8", "GROUP_RANK": "0", "ROLE_RANK": "0", "MASTER_ADDR": "node0", "MASTER_PORT": "29500",
            "TORCHELASTIC_RESTART_COUNT": "0", "TORCHELASTIC_MAX_RESTARTS": "0"}


def _srun(nodes: int) -> dict:
    """What srun sets in each task (task 0 of node 0 here), --ntasks-per-node 8."""
    return {"SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "videolavit", "SLURM_NTASKS": str(8 * nodes), "SLURM_PROCID": "0",
            "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NNODES": str(nodes), "SLURM_NTASKS_PER_NODE": f"8(x{nodes})",
            "SLURM_GPUS_ON_NODE": "8", "SLURM_NODELIST": f"gpu[01-{nodes:02d}]"}


TORCHRUN64, TORCHRUN128, SLURM8, SLURM16 = _torchrun(64), _torchrun(128), _srun(8), _srun(16)
LAUNCHERS = {"torchrun64": (TORCHRUN64, "torchrun", 8), "torchrun128": (TORCHRUN128, "torchrun", 16),
             "slurm8x8": (SLURM8, "slurm", 8), "slurm16x8": (SLURM16, "slurm", 16)}
PAPER_GLOBAL = {"motion_tokenizer": 512, "detokenizer": 128, "pretrain": 2048}


def _plan(capsys, monkeypatch, env: dict, *args: str) -> list[dict]:
    from videolavit.cli import main

    for key in {*TORCHRUN64, *SLURM16}:
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert main(["plan", *args, "--profile", "paper", "--json", "--gpu-mem-gb", "80"]) == 0  # missing keys: still 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]


def _check_paper_row(row: dict, launcher: str, nodes: int) -> None:
    """The must-show of issue 18: the launcher's topology, the paper's global batch, and a run that fits 80 GB."""
    assert (row["launcher"], row["world_size"], row["num_nodes"], row["devices_per_node"]) == (launcher, nodes * 8, nodes, 8)
    assert row["global_batch"] == PAPER_GLOBAL[row["stage"]]
    assert row["micro_batch"] * row["accumulate_grad_batches"] * row["world_size"] == row["global_batch"]
    m = row["memory_gb"]
    parts = ("weights", "grads", "optimizer", "activations", "strategy_buffers", "frozen", "runtime")
    assert m["total"] == pytest.approx(sum(m[k] for k in parts), abs=0.05)
    assert m["activations"] > 0 and m["runtime"] > 0 and row["fits"] is True and m["total"] <= 80, row


@pytest.mark.parametrize("name", list(LAUNCHERS))
def test_plan_pretrain_under_the_launcher(name, capsys, monkeypatch):
    env, launcher, nodes = LAUNCHERS[name]
    (row,) = _plan(capsys, monkeypatch, env, "pretrain")
    _check_paper_row(row, launcher, nodes)
    assert (row["world_size"], row["num_nodes"], row["devices_per_node"]) == (nodes * 8, nodes, 8)
    assert (row["global_batch"], row["micro_batch"] * row["accumulate_grad_batches"] * row["world_size"]) == (2048, 2048)
    assert row["strategy"] == "fsdp" and row["params_total"] == 6_881_054_720
    # 32 blocks × 7 matrices + embedding + head decay; 65 RMSNorm weights do not
    assert row["optimizer_groups"] == {"decay": 226, "no_decay": 65}
    m = row["memory_gb"]
    assert m["weights"] == pytest.approx(4 * 6.881e9 / (nodes * 8) / 1e9, abs=0.01)  # FSDP shards the fp32 weights
    assert 1 < m["activations"] < 60 and row["fits"] is True and "depth cut" in row["activations_method"]
    assert 1 < m["strategy_buffers"] < 5  # FSDP: the root unit and two decoder blocks gathered in bf16
    assert any(x.startswith("lm.model.pretrained_path") for x in row["missing_before_training"])


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["motion_tokenizer", "detokenizer", "pretrain"])
@pytest.mark.parametrize("name", list(LAUNCHERS))
def test_every_paper_run_fits_under_every_launcher(name, stage, capsys, monkeypatch):
    """The full matrix (about a minute per detokenizer plan on a loaded CPU)."""
    env, launcher, nodes = LAUNCHERS[name]
    rows = _plan(capsys, monkeypatch, env, stage)
    assert [r["run"] for r in rows] == {"detokenizer": ["keyframe", "video"]}.get(stage, [stage])
    for row in rows:
        _check_paper_row(row, launcher, nodes)
    if stage == "pretrain":
        assert rows[0]["optimizer_groups"] == {"decay": 226, "no_decay": 65}


def test_plan_motion_tokenizer_under_slurm(capsys, monkeypatch):
    (row,) = _plan(capsys, monkeypatch, SLURM8, "motion_tokenizer")
    _check_paper_row(row, "slurm", 8)
    assert row["micro_batch"] == 8 and row["strategy"] == "ddp"
    assert row["memory_gb"]["strategy_buffers"] == pytest.approx(row["memory_gb"]["grads"], abs=0.01)  # DDP buckets


def test_plan_detokenizer_has_two_runs_with_their_own_missing_keys(capsys, monkeypatch):
    rows = _plan(capsys, monkeypatch, TORCHRUN64, "detokenizer")
    assert [r["run"] for r in rows] == ["keyframe", "video"]
    assert {r["global_batch"] for r in rows} == {128}
    assert all(r["memory_gb"]["activations"] > 0 and "FakeTensorMode" in r["activations_method"] for r in rows)
    assert rows[1]["params_trainable"] == 1_575_748_458  # the 3D U-Net + motion condition encoder (VAE frozen)
    keyframe, video = (r["missing_before_training"] for r in rows)
    assert [x.split(":")[0] for x in keyframe] == ["detokenizer.keyframe.vae_dir"]
    assert [x.split(":")[0] for x in video] == ["detokenizer.video.vae_dir", "detokenizer.video.svd_dir"]


def test_paper_profile_names_every_missing_pretrained_part():
    paper = load_config(profile="paper", params_file=None)
    assert [x.split(":")[0] for x in missing_before_training(paper, "pretrain")] == ["lm.model.pretrained_path"]
    assert [x.split(":")[0] for x in missing_before_training(paper, "visual_tokenizer")] == [
        "visual_tokenizer.model.teacher_path"]
    assert len(missing_before_training(paper, "detokenizer")) == 3
    svd_only = load_config(profile="paper", params_file=None, overrides=["detokenizer.video.svd_dir=/models/svd",
                                                                          "detokenizer.keyframe.vae_dir=/models/vae"])
    (only,) = missing_before_training(svd_only, "detokenizer")
    assert only.startswith("detokenizer.video.vae_dir: SVD's U-Net works in its VAE's latent space")
    opted = load_config(profile="paper", params_file=None, overrides=[
        "lm.model.from_scratch=true", "visual_tokenizer.from_scratch=true", "detokenizer.from_scratch=true"])
    assert all(missing_before_training(opted, s) == [] for s in ("pretrain", "visual_tokenizer", "detokenizer"))


def test_tiny_profile_is_unaffected():
    tiny = load_config(profile="tiny", params_file=None)
    assert all(missing_before_training(tiny, s) == [] for s in ("pretrain", "visual_tokenizer", "detokenizer"))


@pytest.mark.parametrize("stage,key", [("pretrain", "lm.model.pretrained_path"),
                                       ("visual_tokenizer", "visual_tokenizer.model.teacher_path"),
                                       ("detokenizer", "detokenizer.keyframe.vae_dir")])
def test_the_stage_refuses_to_start(stage, key, tmp_path):
    """Old code: pretrain trained a random 6.88 B LM (the ??? merged into null), the others pixel-space models."""
    import importlib

    cfg = load_config(profile="paper", params_file=None, overrides=[f"paths.tokens={tmp_path}/tokens",
                                                                     f"paths.clips={tmp_path}/clips"])
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        importlib.import_module(f"videolavit.stages.{stage}").fit(cfg)


def test_token_shards_made_with_another_text_tokenizer(tmp_path):
    from videolavit.data.text_tokenizer import train_bpe_tokenizer

    train_bpe_tokenizer(["a red cube moves left"] * 20, 300, tmp_path / "tokens" / "text_tokenizer")
    train_bpe_tokenizer(["the blue sphere spins fast"] * 20, 300, tmp_path / "llama")
    cfg = load_config(profile="paper", params_file=None, overrides=[
        f"paths.tokens={tmp_path}/tokens", f"lm.model.pretrained_path={tmp_path}/llama"])
    message = text_tokenizer_mismatch(cfg)
    assert message and message.startswith("tokenize.text_tokenizer_path") and str(tmp_path / "llama") in message
    train_bpe_tokenizer(["a red cube moves left"] * 20, 300, tmp_path / "same")
    same = load_config(profile="paper", params_file=None, overrides=[
        f"paths.tokens={tmp_path}/tokens", f"lm.model.pretrained_path={tmp_path}/same"])
    assert text_tokenizer_mismatch(same) is None


def _tiny_detokenizer_plan(*overrides: str) -> list[dict]:
    from videolavit.stages.detokenizer import keyframe_kwargs, video_kwargs
    from videolavit.stages.visual_tokenizer import model_kwargs
    from videolavit.training.plan import plan_stage

    cfg = load_config(profile="tiny", params_file=None, overrides=list(overrides))
    builders = {"visual_tokenizer": model_kwargs, "keyframe": keyframe_kwargs, "video": video_kwargs}
    return plan_stage(cfg, "detokenizer", 80.0, env={}, model_kwargs=builders)


def test_a_joint_detokenizer_run_adds_both_models_up():
    """detokenizer.runs=joint trains both in one module: one row with both models' memory (the old plan showed two
    rows that each fit, for a stage that held both at once: 119 GB per GPU at paper scale)."""
    (joint,) = _tiny_detokenizer_plan("detokenizer.runs=joint")
    keyframe, video = _tiny_detokenizer_plan("detokenizer.runs=separate")
    assert (joint["run"], keyframe["run"], video["run"]) == ("keyframe+video", "keyframe", "video")
    assert joint["params_trainable"] == keyframe["params_trainable"] + video["params_trainable"]
    assert joint["memory_gb"]["activations"] >= max(keyframe["memory_gb"]["activations"], video["memory_gb"]["activations"])
    (small,) = _tiny_detokenizer_plan("detokenizer.runs=joint", "detokenizer.train.batch_size=4")
    assert small["fits"] is True and small["advice"] == []


def _peak(model_cls, kwargs: dict, step) -> int:
    from videolavit.training.plan import activation_peak

    return activation_peak(lambda: model_cls(**kwargs).train(), step)


def test_activation_measurement_sees_gradient_checkpointing():
    """The fake forward + backward runs the models' own checkpointing: recomputed blocks keep fewer live bytes."""
    import torch

    from videolavit.models.keyframe_detokenizer import KeyframeDetokenizer
    from videolavit.stages.detokenizer import keyframe_kwargs

    cfg = load_config(profile="tiny", params_file=None)
    kwargs = keyframe_kwargs(cfg, 32)
    H, W = kwargs["image_size"]

    def step(model):
        return model.training_loss(torch.zeros(2, 3, H, W), torch.zeros(2, 4, 32))
    on = _peak(KeyframeDetokenizer, {**kwargs, "gradient_checkpointing": True}, step)
    off = _peak(KeyframeDetokenizer, {**kwargs, "gradient_checkpointing": False}, step)
    assert on < 0.8 * off  # measured 2.5 MB vs 6.2 MB


@pytest.mark.slow
def test_video_activation_measurement_sees_gradient_checkpointing():
    import torch

    from videolavit.models.video_detokenizer import VideoDetokenizer
    from videolavit.stages.detokenizer import video_kwargs

    cfg = load_config(profile="tiny", params_file=None)
    kwargs = video_kwargs(cfg)
    T, H, W, h, w = kwargs["frames"], kwargs["height"], kwargs["width"], int(cfg.video.motion_height), int(cfg.video.motion_width)

    def step(model):
        return model.training_loss(torch.zeros(2, T, 3, H, W), torch.zeros(2, 3, H, W), torch.zeros(2, 2, T, h, w))
    on = _peak(VideoDetokenizer, {**kwargs, "gradient_checkpointing": True}, step)
    off = _peak(VideoDetokenizer, {**kwargs, "gradient_checkpointing": False}, step)
    assert on < 0.8 * off  # measured 301 MB vs 475 MB
