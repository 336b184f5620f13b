"""The command line: help, config printing, clear errors instead of tracebacks."""

from __future__ import annotations

import subprocess
import sys

import pytest

from videolavit.cli import build_parser, main
from videolavit.config import STAGES


def test_every_stage_is_a_subcommand():
    parser = build_parser()
    for stage in STAGES:
        assert parser.parse_args([stage]).command == stage
    assert parser.parse_args(["decompose", "--shard", "1/4"]).shard == "1/4"


def test_config_prints_the_merged_yaml(capsys):
    assert main(["config", "video.fps=12", "--profile", "paper"]) == 0
    out = capsys.readouterr().out
    assert "fps: 12.0" in out and "encode_width: 576" in out


def test_unknown_key_is_a_one_line_error_not_a_traceback(capsys):
    assert main(["config", "video.nope=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("videolavit: error: unknown config key 'video.nope'") and "Traceback" not in err


def test_console_script_starts_without_heavy_imports():
    code = "import sys, videolavit.cli; bad = [m for m in ('torch', 'lightning', 'mlflow', 'transformers', 'diffusers') if m in sys.modules]; print(bad)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


@pytest.mark.parametrize("argv", [["sweep", "nosuchstage"]])
def test_sweep_of_an_unknown_stage_is_a_clear_error(argv, capsys):
    assert main(argv) == 2
    assert "no sweep is defined" in capsys.readouterr().err


def test_overrides_may_follow_options(capsys, tmp_path):
    assert main(["config", "--profile", "paper", "video.fps=12"]) == 0
    # (a corpus folder, so that the stage gets past its input check to the shard's)
    assert main(["decompose", "--shard", "9/4", "tracking.enabled=false", f"paths.corpus={tmp_path}"]) == 2
    assert "decompose.shard" in capsys.readouterr().err
