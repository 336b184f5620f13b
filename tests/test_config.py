"""Config merge order, validation errors, and the shipped YAML files (so configs cannot rot)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from videolavit.config import (
    CONF_DIR,
    PROFILES,
    apply_overrides,
    load_config,
    parse_overrides,
    to_flat_dict,
)
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
    # the tiny CPU recipes live in conf/profile/tiny.yaml only; the paper profile is the schemas' values
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


def _flat(tree: dict) -> dict:
    from videolavit.config import flatten

    return flatten(tree, keep_empty=True)


def _schema_values() -> dict:
    from videolavit.config import _schema

    return _flat(OmegaConf.to_container(_schema(), resolve=False))


def _yaml(path: Path) -> dict:
    return OmegaConf.to_container(OmegaConf.load(path), resolve=False) or {}


def test_paper_profile_is_the_schema_plus_paper_yaml_for_every_key():
    # one home per default: nothing but base.yaml and paper.yaml sits between the paper schemas and the paper profile
    expected = OmegaConf.merge(
        _unflatten(_schema_values()),
        _yaml(CONF_DIR / "base.yaml"),
        _yaml(CONF_DIR / "profile" / "paper.yaml"),
    )
    expected = _flat(OmegaConf.to_container(expected, resolve=False))
    actual = _flat(OmegaConf.to_container(load_config(profile="paper", params_file=None), resolve=False))
    actual.pop("profile"), actual.pop("stage"), expected.pop("profile")
    assert set(actual) == set(expected)
    differing = {key: (expected[key], actual[key]) for key in expected if expected[key] != actual[key]}
    assert differing == {}


def _unflatten(flat: dict) -> dict:
    tree: dict = {}
    for dotted, value in flat.items():
        node = tree
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


@pytest.mark.parametrize("profile", PROFILES)
def test_profile_files_set_only_schema_keys_and_never_repeat_a_schema_value(profile):
    # a key a profile sets to the schema's own value is a second home of that default (it would silently stay behind
    # when the schema changes); a key the schema lacks is a typo
    # a profile that extends another must not repeat the parent's value either
    from videolavit.config import profile_layers

    schema = _schema_values()
    layers = [_flat(layer) for _, layer in profile_layers(profile)]
    values, below = layers[-1], {**schema}
    for layer in layers[:-1]:
        below.update(layer)
    assert values, profile
    unknown = sorted(key for key in values if key not in schema)
    repeated = sorted(key for key, value in values.items() if key in below and below[key] == value)
    assert (unknown, repeated) == ([], [])


def test_a_profile_extends_another(tmp_path):
    from videolavit.config import profile_layers

    child = tmp_path / "child.yaml"
    child.write_text("extends: tiny\nmotion_tokenizer:\n  train:\n    max_steps: 7\n")
    cfg, tiny = load_config(profile=str(child), params_file=None), load_config(params_file=None)
    assert cfg.motion_tokenizer.train.max_steps == 7
    paper = load_config(profile="paper", params_file=None)
    assert cfg.video.encode_width == tiny.video.encode_width != paper.video.encode_width  # tiny's, not the schema's
    assert [label for label, _ in profile_layers("mini")] == ["profile 'tiny'", "profile 'mini'"]
    loop = tmp_path / "loop.yaml"
    loop.write_text(f"extends: {loop}\n")
    with pytest.raises(ConfigError, match="extends itself"):
        load_config(profile=str(loop), params_file=None)


def test_no_config_layer_besides_base_and_the_profiles():
    # the loader merges schema → base → profile → params → CLI: a stray folder of YAML merged before the profile
    # is how tiny recipes leaked into the paper profile
    layers = {path.relative_to(CONF_DIR).parts[0] for path in CONF_DIR.rglob("*.yaml")}
    assert layers == {"base.yaml", "paper_results.yaml", "profile", "eval", "sweep"}


def test_every_shipped_yaml_validates_against_its_schema():
    from videolavit.config import _check_keys, _schema
    from videolavit.evaluation.protocol import load_protocol
    from videolavit.metrics.paper_results import load_paper_results, paper_cells

    tiny = load_config(params_file=None)
    checked = []
    for path in sorted(CONF_DIR.rglob("*.yaml")):
        kind = path.relative_to(CONF_DIR).parts[0]
        if kind in ("base.yaml", "profile"):
            values = {k: v for k, v in _yaml(path).items() if k != "extends"}  # a profile's parent (profile_layers)
            _check_keys(_schema(), values, str(path))  # raises ConfigError on an unknown key
        elif kind == "eval":
            protocol, label = load_protocol(str(path))
            assert label == f"{protocol.name}@{protocol.version}", path
        elif kind == "sweep":
            spec = _yaml(path)
            assert spec["objective"] in spec["objectives"], path
            keys = dict(spec.get("fixed") or {})
            for key, dist in spec["space"].items():
                choices = dist.get("choices")
                if dist.get("expand"):
                    for choice in choices.values():
                        keys.update(choice)
                else:
                    keys[key] = choices[0] if isinstance(choices, list) else dist.get("low")
            apply_overrides(tiny, [f"{key}={json.dumps(value)}" for key, value in keys.items()], str(path))
        elif kind == "paper_results.yaml":
            assert paper_cells(load_paper_results(path)), path
        else:
            pytest.fail(f"{path}: a shipped YAML this test does not know how to validate")
        checked.append(path)
    assert len(checked) >= 10


def test_overrides_parse_lists_and_nesting():
    assert parse_overrides(["a.b=[1,2]", "a.c=x"]) == {"a": {"b": [1, 2], "c": "x"}}
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["novalue"])


def test_flat_dict_for_mlflow_params():
    flat = to_flat_dict(load_config(params_file=None))
    assert flat["video.fps"] == 6.0 and "motion_tokenizer.model.dim" in flat


def test_one_flattener_drops_or_keeps_empty_sections():
    from videolavit.config import flatten

    tree = {"a": {"b": 1, "c": {}, "d": {"e": None}}, "f": [1, 2]}
    assert flatten(tree) == {"a.b": 1, "a.d.e": None, "f": [1, 2]}  # MLflow params, checkpoint fingerprints
    assert flatten(tree, keep_empty=True) == {"a.b": 1, "a.c": {}, "a.d.e": None, "f": [1, 2]}  # config --changed
    assert flatten(tree["a"], "x.") == {"x.b": 1, "x.d.e": None}
    assert flatten(3, "x.") == {"x": 3}
