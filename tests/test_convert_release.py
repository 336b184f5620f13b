"""import-official on a partial release: converts the parts it can, names the rest and why, and writes the report."""

from __future__ import annotations

import json

import pytest
import torch

from fixtures.released_weights import ENCODER_SMALL, MOTION_SMALL, encoder_state_small, motion_state_small
from videolavit.convert.release import PART_NAMES, import_release
from videolavit.errors import ConfigError, MissingArtifactError


def test_a_partial_release_converts_its_parts_and_reports_the_rest(tmp_path):
    release = tmp_path / "release"
    (release / "video_detokenizer" / "unet").mkdir(parents=True)
    unet = {**encoder_state_small(), "unet.conv_in.weight": torch.zeros(4, 8, 3, 3)}  # the official file holds both
    torch.save(unet, release / "video_detokenizer" / "unet" / "diffusion_pytorch_model.bin")
    (release / "visual_tokenizer").mkdir()  # empty: no tokenizer_encoder.bin, so not found
    (release / "image_detokenizer").mkdir()
    torch.save(motion_state_small(), release / "motion_tokenizer.bin")
    out = tmp_path / "out"
    results = import_release(release, out, motion_heads=MOTION_SMALL["heads"], motion_grid=(8, 16),
                             encoder_heads=ENCODER_SMALL["heads"], encoder_grid=ENCODER_SMALL["grid"])
    status = {r.part: r.status for r in results}
    assert status == {
        "motion_tokenizer": "converted", "language_model": "not_found", "video_detokenizer": "partial",
        "visual_tokenizer": "not_found", "understanding_lm": "not_found", "image_detokenizer": "not_supported",
    }
    report = json.loads((out / "import_report.json").read_text())
    assert [p["part"] for p in report["parts"]] == list(PART_NAMES)
    unet = next(p for p in report["parts"] if p["part"] == "video_detokenizer")
    assert "the other 1 tensors (the U-Net) not" in unet["detail"] and "1427 missing" in unet["detail"]
    text = (out / "import_report.txt").read_text()
    assert "1 part(s) converted, 1 partly" in text and "not_supported" in text
    written = sorted(p.name for p in out.iterdir())
    assert written == ["import_report.json", "import_report.txt", "motion_condition_encoder", "motion_tokenizer"]


def test_bad_arguments_are_clear_errors(tmp_path):
    with pytest.raises(MissingArtifactError, match="does not exist"):
        import_release(tmp_path / "nowhere", tmp_path / "out")
    (tmp_path / "r").mkdir()
    with pytest.raises(ConfigError, match="unknown part.*motion"):
        import_release(tmp_path / "r", tmp_path / "out", parts=["motion"])
    with pytest.raises(ConfigError, match="--out must differ"):
        import_release(tmp_path / "r", tmp_path / "r")
