"""Help a researcher can use: each stage's own --help, generate's tasks, sweep's options, config --changed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from videolavit.cli import main
from videolavit.config import STAGES

ROOT = Path(__file__).resolve().parents[1]


def _help(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--help"])
    assert exc.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("stage", STAGES)
def test_stage_help_says_purpose_inputs_outputs_keys_and_example(stage, capsys):
    from videolavit.runner import STAGE_IO

    text = _help(capsys, stage)
    spec = STAGE_IO[stage]
    assert f"`{stage}`" in text.split("positional arguments")[0]  # its module docstring, not a generic line
    for section in ("inputs (checked before the MLflow run opens):", "outputs:", "main keys", "example:"):
        assert section in text, section
    for key in spec.keys:
        assert f"  {key}  " in text or f"  {key} " in text, key
    assert spec.example in text and spec.example.startswith(f"videolavit {stage}")
    for out in spec.outputs:
        assert out in text


def test_stage_helps_differ_and_show_both_profiles(capsys):
    pretrain, motion = _help(capsys, "pretrain"), _help(capsys, "motion_tokenizer")
    assert "motion_tokenizer.model.codebook_size" not in pretrain  # the old help showed one example for every stage
    assert "pretrain.train.max_steps" in pretrain and "data/tokens/ (paths.tokens)" in pretrain
    row = next(line for line in motion.splitlines() if "motion_tokenizer.model.codebook_size" in line and "tiny:" in line)
    assert "tiny: 128" in row and "paper: 1024" in row


def test_generate_help_documents_every_task_with_an_example(capsys):
    text = _help(capsys, "generate")
    for task in ("text_to_video", "image_to_video", "long video", "qa"):
        assert task in text, task
    examples = [line.strip() for line in text.splitlines() if line.strip().startswith("videolavit generate")]
    assert len(examples) >= 4
    assert any("generate.task=image_to_video" in e and "generate.image=" in e for e in examples)
    assert any("generate.task=qa" in e and "generate.media=" in e for e in examples)
    assert any("generate.clips=" in e for e in examples)
    assert "generate.video_steps" in text  # main keys with their values


def test_sweep_help_lists_its_options(capsys):
    from videolavit.sweep import SWEEP_OPTIONS

    text = _help(capsys, "sweep")
    for option in SWEEP_OPTIONS:
        assert f"{option}=" in text, option
    assert "trials=" in text and "mode=" in text and "storage=" in text and "best.yaml" in text


def test_config_for_the_generate_command(capsys):
    assert main(["config", "--stage", "generate"]) == 0
    out = yaml.safe_load(capsys.readouterr().out)
    assert out["task"] == "text_to_video"


def test_config_changed_lists_only_non_defaults_with_their_source(tmp_path, monkeypatch, capsys):
    from videolavit.cli_help import changed_values

    monkeypatch.chdir(tmp_path)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["motion_tokenizer"]["optim"]["lr"] = 0.005
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    rows = {key: (value, default, source) for key, value, default, source in
            changed_values(None, None, ["motion_tokenizer.train.max_steps=7"])}
    assert rows["motion_tokenizer.train.max_steps"] == (7, 100000, "command line")
    assert rows["motion_tokenizer.optim.lr"] == (0.005, 0.0001, "params.yaml")
    assert rows["motion_tokenizer.model.codebook_size"] == (128, 1024, "profile tiny")
    assert "video.clip_frames" not in rows  # the tiny profile keeps the paper's 24 frames: not listed
    assert main(["config", "--changed", "motion_tokenizer.train.max_steps=7"]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("motion_tokenizer.train.max_steps "))
    assert "command line" in line and "100000" in line
    assert len(out.splitlines()) < 300


def test_config_changed_for_a_default_tree_names_no_source(tmp_path, monkeypatch):
    from videolavit.cli_help import changed_values

    monkeypatch.chdir(tmp_path)
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    sources = {source for *_, source in changed_values("paper", None, [])}
    assert sources <= {"conf/base.yaml", "profile paper"}


def test_every_key_the_helps_show_is_a_config_key():
    from omegaconf import OmegaConf

    from videolavit.cli_help import GENERATE_KEYS
    from videolavit.config import load_config
    from videolavit.runner import STAGE_IO

    cfg = load_config(profile="tiny", params_file=None)
    keys = [*GENERATE_KEYS, *(k for spec in STAGE_IO.values() for k in spec.keys)]
    assert [k for k in keys if OmegaConf.select(cfg, k, default="<absent>") == "<absent>"] == []
