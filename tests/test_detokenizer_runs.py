"""detokenizer.runs=separate (the paper profile's): the keyframe and the video detokenizer trained as one run each, in
turn, with their own checkpoints; evaluated together on the training device."""

from __future__ import annotations

import numpy as np
import pytest

from test_detokenizer_stage import FAST, workspace  # noqa: F401  (the fixture: clips and tokenizers in tmp_path)


def test_separate_runs_train_each_model_with_its_own_checkpoints(tiny_cfg_factory, workspace):
    from videolavit.stages.detokenizer import fit

    cfg = tiny_cfg_factory(*FAST, "tracking.enabled=false", "detokenizer.runs=separate", "detokenizer.eval.clips=1")
    metrics = fit(cfg)
    runs = workspace / "runs" / "detokenizer"
    assert (runs / "keyframe" / "checkpoints" / "last.ckpt").is_file()
    assert (runs / "video" / "checkpoints" / "last.ckpt").is_file()
    assert not (runs / "checkpoints" / "last.ckpt").exists()
    for key in ("val/keyframe_psnr", "val/video_psnr", "train/keyframe_loss", "train/video_loss"):
        assert np.isfinite(metrics[key]), key
    assert (workspace / "models" / "detokenizer" / "keyframe").is_dir()
    assert (workspace / "models" / "detokenizer" / "video").is_dir()
    # each run resumes from its own checkpoint
    resumed = fit(tiny_cfg_factory(*FAST, "tracking.enabled=false", "detokenizer.runs=separate",
                                   "detokenizer.eval.clips=1", "detokenizer.train.max_steps=3",
                                   "detokenizer.train.resume=auto"))
    assert resumed["global_step"] == 3


def test_runs_must_be_known(tiny_cfg_factory, workspace):
    from videolavit.errors import ConfigError
    from videolavit.stages.detokenizer import fit

    with pytest.raises(ConfigError, match="detokenizer.runs"):
        fit(tiny_cfg_factory(*FAST, "tracking.enabled=false", "detokenizer.runs=both"))
