"""Config merge order, validation errors, and the shipped YAML files (so configs cannot rot)."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from videolavit.config import CONF_DIR, PROFILES, load_config, parse_overrides, to_flat_dict
from videolavit.errors import ConfigError


@pytest.mark.parametrize("profile", PROFILES)
def test_every_profile_loads_and_validates(profile):
    cfg = load_config(profile=profile, params_file=None)
    assert cfg.profile == profile
    assert cfg.video.clip_frames == 24 and cfg.video.fps == 6.0
    assert cfg.video.encode_width % 16 == 0 and cfg.video.encode_height % 16 == 0


def test_paper_profile_has_the_paper_decomposition_sizes():
    cfg = load_config(profile="paper", params_file=None)
    assert (cfg.video.encode_width, cfg.video.encode_height) == (576, 320)
    assert (cfg.video.motion_height, cfg.video.motion_width) == (20, 36)
    assert cfg.video.keyframe_size == 224
    assert cfg.motion_tokenizer.model.codebook_size == 1024 and cfg.motion_tokenizer.model.code_dim == 32


def test_tiny_recipes_do_not_leak_into_the_paper_profile():
    # conf/stage/*.yaml hold the tiny CPU recipes and merge before the profile: the paper profile must undo them
    tiny, paper = load_config(params_file=None), load_config(profile="paper", params_file=None)
    recipes = {
        "detokenizer.video.keyframe_skip": (True, False),
        "detokenizer.video.motion_warp": (True, False),
        "visual_tokenizer.model.train_selection": ("deterministic", "gumbel"),
        "visual_tokenizer.model.saliency_prior": (4.0, 0.0),
        "video.fast_decode": (False, False),
    }
    for key, (tiny_value, paper_value) in recipes.items():
        assert (OmegaConf.select(tiny, key), OmegaConf.select(paper, key)) == (tiny_value, paper_value), key


def test_cli_override_wins_and_is_typed():
    cfg = load_config(overrides=["video.fps=12", "motion_tokenizer.train.max_steps=7"], params_file=None)
    assert cfg.video.fps == 12.0 and isinstance(cfg.video.fps, float)
    assert cfg.motion_tokenizer.train.max_steps == 7


def test_unknown_key_lists_the_valid_keys():
    with pytest.raises(ConfigError) as err:
        load_config(overrides=["video.fsp=6"], params_file=None)
    message = str(err.value)
    assert "video.fsp" in message and "fps" in message and "encode_width" in message


def test_unknown_top_level_section_is_an_error():
    with pytest.raises(ConfigError, match="unknown config key 'nosuchstage'"):
        load_config(overrides=["nosuchstage.x=1"], params_file=None)


def test_wrong_type_is_a_clear_error():
    with pytest.raises(ConfigError, match="video.fps"):
        load_config(overrides=["video.fps=fast"], params_file=None)


def test_unknown_profile_and_stage():
    with pytest.raises(ConfigError, match="Valid profiles"):
        load_config(profile="huge", params_file=None)
    with pytest.raises(ConfigError, match="Valid stages"):
        load_config(stage="nope", params_file=None)


def test_params_file_sits_between_profile_and_cli(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("profile: tiny\nvideo:\n  fps: 8\n  gop: null\ncorpus:\n  images: 5\n")
    cfg = load_config(params_file=params)
    assert cfg.video.fps == 8.0  # params over profile
    assert cfg.video.gop == 12  # null in params keeps the profile's value
    assert cfg.corpus.images == 5
    cfg = load_config(params_file=params, overrides=["video.fps=10"])
    assert cfg.video.fps == 10.0  # CLI over params


def test_params_file_unknown_key_names_the_file(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("video:\n  fpz: 8\n")
    with pytest.raises(ConfigError, match="params.yaml"):
        load_config(params_file=params)


def test_profile_from_params_file(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("profile: paper\n")
    assert load_config(params_file=params).profile == "paper"


def test_shipped_params_yaml_is_valid():
    root = Path(__file__).resolve().parents[1]
    cfg = load_config(params_file=root / "params.yaml")
    assert cfg.profile in PROFILES


def test_every_shipped_yaml_parses():
    for path in sorted(CONF_DIR.rglob("*.yaml")):
        assert OmegaConf.load(path) is not None or path.stat().st_size == 0, path


def test_overrides_parse_lists_and_nesting():
    assert parse_overrides(["a.b=[1,2]", "a.c=x"]) == {"a": {"b": [1, 2], "c": "x"}}
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["novalue"])


def test_flat_dict_for_mlflow_params():
    flat = to_flat_dict(load_config(params_file=None))
    assert flat["video.fps"] == 6.0 and "motion_tokenizer.model.dim" in flat
