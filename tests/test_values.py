"""Config values checked on load (issue 15 item 5): ranges, NaN, interpolations, malformed overrides, null typos.

Each bad value is one ConfigError naming its dotted key, through ``load_config`` and through the CLI (exit 2, one
message line, no traceback); before, each ended in a torch/Lightning/omegaconf/yaml traceback or trained forever.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from videolavit.cli import main
from videolavit.config import apply_overrides, load_config
from videolavit.errors import ConfigError

# (stage the CLI runs, override, text the one error line must hold)
ROWS = [
    ("motion_tokenizer", "motion_tokenizer.model.codebook_size=0", "motion_tokenizer.model.codebook_size"),
    ("motion_tokenizer", "motion_tokenizer.model.codebook_size=-3", "motion_tokenizer.model.codebook_size"),
    ("motion_tokenizer", "motion_tokenizer.train.batch_size=0", "motion_tokenizer.train.batch_size"),
    ("pretrain", "pretrain.train.batch_size=0", "pretrain.train.batch_size"),
    ("motion_tokenizer", "motion_tokenizer.optim.lr=nan", "motion_tokenizer.optim.lr"),
    ("visual_tokenizer", "visual_tokenizer.optim.lr=-1", "visual_tokenizer.optim.lr"),
    ("motion_tokenizer", "motion_tokenizer.train.max_steps=-5", "motion_tokenizer.train.max_steps"),
    ("motion_tokenizer", "motion_tokenizer.train.max_steps=-1", "until stopped"),
    ("motion_tokenizer", "motion_tokenizer.train.max_steps=${missing}", "motion_tokenizer.train.max_steps"),
    ("motion_tokenizer", "motion_tokenizer.train.max_steps=[1,2", "motion_tokenizer.train.max_steps"),
    ("decompose", "video.encode_width=-16", "video.encode_width"),
    ("decompose", "video.motion_height=0", "video.motion_height"),
    ("motion_tokenizer", "motion_tokenizer.model.downsample_strides=[[2,0,2]]",
     "motion_tokenizer.model.downsample_strides[0][1]"),
    ("detokenizer", "detokenizer.optim.betas=[0.9,1.5]", "detokenizer.optim.betas[1]"),
    ("corpus", "video.fps=.inf", "video.fps"),
]


@pytest.fixture
def project(tmp_path, monkeypatch):
    """An empty project directory (no params.yaml: the rows' overrides alone decide)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("stage, override, named", ROWS, ids=[r[1] for r in ROWS])
def test_bad_value_is_a_config_error_naming_the_key(project, stage, override, named):
    with pytest.raises(ConfigError, match=named.replace("[", r"\[")):
        load_config(stage=stage, overrides=[override])


@pytest.mark.parametrize("stage, override, named", ROWS, ids=[r[1] for r in ROWS])
def test_bad_value_on_the_command_line_exits_2_with_one_line(project, capsys, stage, override, named):
    assert main([stage, override]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("videolavit: error: ") and named in err, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert not (project / "mlflow.db").exists()  # rejected before any run was opened


def test_the_installed_command_prints_no_traceback(project):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    code = "import sys; from videolavit.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-c", code, "motion_tokenizer", "motion_tokenizer.optim.lr=nan"],
                          capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "motion_tokenizer.optim.lr" in proc.stderr


def test_edge_values_that_mean_something_still_load(project):
    cfg = load_config(overrides=["motion_tokenizer.train.max_steps=0", "motion_tokenizer.optim.warmup_steps=0",
                                 "motion_tokenizer.train.val_batches=null", "video.max_clips=1", "seed=-1"])
    assert cfg.motion_tokenizer.train.max_steps == 0 and cfg.motion_tokenizer.train.val_batches is None
    assert load_config(profile="paper").lm.generate.top_p is None


def test_sweep_trial_overrides_are_checked_too(project):
    cfg = load_config()
    with pytest.raises(ConfigError, match="motion_tokenizer.optim.lr"):
        apply_overrides(cfg, ["motion_tokenizer.optim.lr=0"], "sweep trial")


def test_typo_set_to_null_in_params_is_rejected(project):
    (project / "params.yaml").write_text("motion_tokenizer:\n  train:\n    max_stepz: null\n")
    with pytest.raises(ConfigError, match=r"motion_tokenizer\.train\.max_stepz.*params\.yaml"):
        load_config()
    assert main(["motion_tokenizer"]) == 2


def test_valid_nulls_in_params_keep_the_profile_value(project):
    (project / "params.yaml").write_text("motion_tokenizer:\n  train:\n    max_steps: null\n    batch_size: 4\n")
    cfg = load_config()
    tiny = OmegaConf.load(os.path.join(os.path.dirname(__file__), "..", "src/videolavit/conf/profile/tiny.yaml"))
    assert cfg.motion_tokenizer.train.max_steps == tiny.motion_tokenizer.train.max_steps
    assert cfg.motion_tokenizer.train.batch_size == 4


def test_an_interpolation_that_resolves_is_fine(project):
    every = "motion_tokenizer.train.checkpoint_every_n_steps=${motion_tokenizer.train.val_every_n_steps}"
    cfg = load_config(overrides=[every])
    assert cfg.motion_tokenizer.train.checkpoint_every_n_steps == cfg.motion_tokenizer.train.val_every_n_steps
