"""artifacts.artifact: one resolver per trained artifact, and an error that names the stage and the key."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from videolavit.artifacts import ARTIFACTS, artifact, artifact_dir
from videolavit.errors import MissingArtifactError


def _cfg(tmp_path, **sections):
    return SimpleNamespace(paths=SimpleNamespace(models=str(tmp_path / "models")), **sections)


def test_the_default_is_under_paths_models_and_the_first_set_key_wins(tmp_path):
    cfg = _cfg(tmp_path, evaluate=SimpleNamespace(generation_lm_path=None), generate=SimpleNamespace(lm_path=None))
    assert artifact_dir(cfg, "lm_pretrain") == tmp_path / "models" / "lm_pretrain"
    artifact_dir(cfg, "lm_pretrain").mkdir(parents=True)
    keys = ("evaluate.generation_lm_path", "generate.lm_path")
    assert artifact(cfg, "lm_pretrain", keys) == tmp_path / "models" / "lm_pretrain"
    other = tmp_path / "elsewhere"
    other.mkdir()
    cfg.generate.lm_path = str(other)
    assert artifact(cfg, "lm_pretrain", keys) == other
    cfg.evaluate.generation_lm_path = str(tmp_path / "absent")
    with pytest.raises(MissingArtifactError, match="absent"):
        artifact(cfg, "lm_pretrain", keys)


def test_a_missing_artifact_names_its_stage_dvc_and_the_key(tmp_path):
    cfg = _cfg(tmp_path, tokenize=SimpleNamespace(visual_tokenizer_path=None))
    with pytest.raises(MissingArtifactError) as err:
        artifact(cfg, "visual_tokenizer", "tokenize.visual_tokenizer_path")
    message = str(err.value)
    assert "the visual tokenizer not found at" in message and str(tmp_path / "models" / "visual_tokenizer") in message
    assert "`videolavit visual_tokenizer`" in message and "`dvc repro visual_tokenizer`" in message
    assert "set tokenize.visual_tokenizer_path" in message
    with pytest.raises(MissingArtifactError, match="`videolavit pretrain`"):
        artifact(cfg, "lm_pretrain")
    with pytest.raises(KeyError, match="known: visual_tokenizer"):
        artifact(cfg, "lm")


def test_a_part_is_checked_inside_the_artifact(tmp_path):
    cfg = _cfg(tmp_path)
    (artifact_dir(cfg, "detokenizer") / "keyframe").mkdir(parents=True)
    assert artifact(cfg, "detokenizer", part="keyframe").name == "keyframe"
    with pytest.raises(MissingArtifactError, match="the video detokenizer not found at .*video'.*`videolavit detokenizer`"):
        artifact(cfg, "detokenizer", what="the video detokenizer", part="video")


def test_every_artifact_is_made_by_a_known_stage():
    from videolavit.config import STAGES

    assert {a.stage for a in ARTIFACTS.values()} <= set(STAGES)
