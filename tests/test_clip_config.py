"""Clips are read with the video.* settings they were made with (issue 15 item 8).

Before, a training stage read clips made with other ``video.encode_*`` / motion / frame sizes without a word: the
EPE in px/frame scales with ``encode_width`` / ``encode_height`` of the config, so it silently doubled (or halved).
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from videolavit.cli import main
from videolavit.data.datamodules import ClipDataModule
from videolavit.errors import ConfigError
from videolavit.video.io import write_video


def _moving_square(seconds: float = 8.5, fps: float = 12.0, size=(96, 160)):
    rng = np.random.default_rng(0)
    background = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
    for t in range(int(seconds * fps)):
        frame = background.copy()
        frame[36:60, 20 + 2 * t : 44 + 2 * t] = 255
        yield frame


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A one-video corpus decomposed with the tiny profile: (project root, overrides that point at it)."""
    from videolavit.config import load_config
    from videolavit.stages.decompose import run

    root = tmp_path_factory.mktemp("project")
    corpus = root / "corpus"
    (corpus / "videos").mkdir(parents=True)
    write_video(corpus / "videos" / "a.mp4", _moving_square(), fps=12)
    row = {"id": "a", "path": "videos/a.mp4", "kind": "video", "caption": "a square", "qa": [], "attributes": {},
           "clips": []}
    (corpus / "train.jsonl").write_text(json.dumps(row) + "\n")
    for split in ("val", "test"):
        (corpus / f"{split}.jsonl").write_text("")
    paths = [f"paths.{k}={root / k}" for k in ("corpus", "clips", "tokens", "models", "metrics", "reports", "runs")]
    overrides = [*paths, "tracking.enabled=false", "decompose.workers=0"]
    run(load_config(overrides=overrides, params_file=None))
    assert json.loads((root / "clips" / "stats.json").read_text())["clips"]["train"] == 2
    return root, overrides


def _cfg(made, *extra):
    from videolavit.config import load_config

    return load_config(overrides=[*made[1], *extra], params_file=None)


@pytest.mark.parametrize("override, fields, now, made_with", [
    ("video.encode_width=384", ("motion",), "video.encode_width=384", "video.encode_width=192"),
    ("video.encode_height=64", ("motion",), "video.encode_height=64", "video.encode_height=128"),
    ("video.motion_std=[0.2,0.1130276]", ("motion",), "video.motion_std=[0.2, 0.1130276]",
     "video.motion_std=[0.0993703, 0.1130276]"),
    ("video.frames_height=64", ("frames", "meta"), "video.frames_height=64", "video.frames_height=32"),
    ("video.keyframe_size=32", ("keyframe",), "video.keyframe_size=32", "video.keyframe_size=64"),
])
def test_reading_clips_with_other_settings_names_the_key_and_both_values(made, override, fields, now, made_with):
    with pytest.raises(ConfigError, match=rf"{re.escape(now)} but the clips .* made with {re.escape(made_with)}"):
        ClipDataModule(_cfg(made, override), fields=fields)


def test_the_motion_tokenizer_stage_stops_before_training(made, capsys):
    code = main(["motion_tokenizer", *made[1], "video.encode_width=384", "motion_tokenizer.train.max_steps=1"])
    err = capsys.readouterr().err
    assert code == 2 and "video.encode_width=384" in err and "video.encode_width=192" in err, err
    assert not (made[0] / "models" / "motion_tokenizer").exists()


def test_the_evaluate_stage_does_not_score_motion_read_at_other_sizes(made):
    from videolavit.evaluation.recon import evaluate_recon

    with pytest.raises(ConfigError, match="video.encode_height=256 but the clips"):  # before any model is needed
        evaluate_recon(_cfg(made, "video.encode_height=256"), protocol=None, results=None, pipe=None, ext=None)


def test_settings_a_field_is_not_read_with_may_differ(made):
    ClipDataModule(_cfg(made), fields=("motion", "frames", "keyframe", "meta"))  # as made
    ClipDataModule(_cfg(made, "video.frames_height=64", "video.keyframe_size=32"), fields=("motion",))
    ClipDataModule(_cfg(made, "video.max_clips=1", "video.clip_policy=max"), fields=("motion",))  # which clips, not how


def test_clips_without_recorded_settings_are_read_as_before(tmp_path):
    from videolavit.config import load_config

    (tmp_path / "clips").mkdir()
    cfg = load_config(overrides=[f"paths.clips={tmp_path / 'clips'}", "video.encode_width=384"], params_file=None)
    ClipDataModule(cfg, fields=("motion",))


def test_a_sharded_run_not_merged_yet_is_checked_from_its_parts(tmp_path, made):
    from videolavit.config import load_config

    (tmp_path / "clips" / "parts").mkdir(parents=True)
    recorded = json.loads((made[0] / "clips" / "stats.json").read_text())["video"]
    (tmp_path / "clips" / "parts" / "config-0of2.json").write_text(json.dumps({"video": recorded}))
    cfg = load_config(overrides=[f"paths.clips={tmp_path / 'clips'}", "video.motion_width=24"], params_file=None)
    with pytest.raises(ConfigError, match="video.motion_width=24 .*video.motion_width=12"):
        ClipDataModule(cfg, fields=("motion",))


def test_tokenize_refuses_a_motion_tokenizer_of_another_grid_than_the_clips(tmp_path):
    """Clips recorded at 24x20x36 motion, a motion tokenizer trained on 24x4x6: a ConfigError naming the key."""
    from test_tokenize_stage import FRAMES, write_corpus, write_tokenizers

    from videolavit.config import load_config
    from videolavit.stages import tokenize

    write_corpus(tmp_path)
    write_tokenizers(tmp_path / "models")
    video = load_config(profile="paper", params_file=None).video  # 20x36 motion
    recorded = {"clip_frames": FRAMES, "motion_height": int(video.motion_height), "motion_width": int(video.motion_width)}
    (tmp_path / "clips" / "stats.json").write_text(json.dumps({"video": recorded}))
    paths = [f"paths.{k}={tmp_path / k}" for k in ("corpus", "clips", "tokens", "models", "metrics", "reports", "runs")]
    cfg = load_config(overrides=[*paths, "tracking.enabled=false", "tokenize.text_vocab_size=300"], params_file=None)
    with pytest.raises(ConfigError, match=rf"tokenize\.motion_tokenizer_path.*reads {FRAMES}x4x6 .*hold {FRAMES}x20x36"):
        tokenize.run(cfg)
    assert not list((tmp_path / "tokens").glob("*.jsonl"))
