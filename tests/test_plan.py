"""``videolavit plan`` (training/plan.py) and the pretrained parts a paper-profile stage needs (training/required.py)."""

from __future__ import annotations

import json

import pytest

from videolavit.config import load_config
from videolavit.errors import ConfigError
from videolavit.training.required import missing_before_training, text_tokenizer_mismatch

TORCHRUN64 = {"TORCHELASTIC_RUN_ID": "job", "WORLD_SIZE": "64", "LOCAL_WORLD_SIZE": "8", "GROUP_RANK": "0"}
SLURM16 = {"SLURM_NTASKS": "128", "SLURM_NNODES": "16", "SLURM_NTASKS_PER_NODE": "8", "SLURM_GPUS_ON_NODE": "8",
           "SLURM_JOB_NAME": "videolavit"}


def _plan(capsys, monkeypatch, env: dict, *args: str) -> list[dict]:
    from videolavit.cli import main

    for key in ("TORCHELASTIC_RUN_ID", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "SLURM_NTASKS", "SLURM_JOB_NAME"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert main(["plan", *args, "--profile", "paper", "--json", "--gpu-mem-gb", "80"]) == 0  # missing keys: still 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]


@pytest.mark.parametrize("env,nodes", [(TORCHRUN64, 8), (SLURM16, 16)])
def test_plan_pretrain_under_the_launcher(env, nodes, capsys, monkeypatch):
    (row,) = _plan(capsys, monkeypatch, env, "pretrain")
    assert (row["world_size"], row["num_nodes"], row["devices_per_node"]) == (nodes * 8, nodes, 8)
    assert (row["global_batch"], row["micro_batch"] * row["accumulate_grad_batches"] * row["world_size"]) == (2048, 2048)
    assert row["strategy"] == "fsdp" and row["params_total"] == 6_881_054_720
    # 32 blocks × 7 matrices + embedding + head decay; 65 RMSNorm weights do not
    assert row["optimizer_groups"] == {"decay": 226, "no_decay": 65}
    m = row["memory_gb"]
    assert m["weights"] == pytest.approx(4 * 6.881e9 / (nodes * 8) / 1e9, abs=0.01)  # FSDP shards the fp32 weights
    assert 1 < m["activations"] < 60 and row["fits"] is True and "depth cut" in row["activations_method"]
    assert any(x.startswith("lm.model.pretrained_path") for x in row["missing_before_training"])


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
