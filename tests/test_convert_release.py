"""import-official on a partial release: converts the parts it can, names the rest and why, and writes the report."""

from __future__ import annotations

import json

import pytest
import torch

from fixtures.released_weights import MOTION_SMALL, motion_state_small
from videolavit.convert.release import PART_NAMES, import_release
from videolavit.errors import ConfigError, MissingArtifactError


def test_a_partial_release_converts_its_parts_and_reports_the_rest(tmp_path):
    release = tmp_path / "release"
    (release / "video_detokenizer" / "unet").mkdir(parents=True)
    (release / "video_detokenizer" / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"never opened")
    (release / "visual_tokenizer").mkdir()
    torch.save(motion_state_small(), release / "motion_tokenizer.bin")
    out = tmp_path / "out"
    results = import_release(release, out, motion_heads=MOTION_SMALL["heads"], motion_grid=(8, 16))
    status = {r.part: r.status for r in results}
    assert status == {
        "motion_tokenizer": "converted", "language_model": "not_found", "video_detokenizer": "not_supported",
        "visual_tokenizer": "not_supported", "understanding_lm": "not_found", "image_detokenizer": "not_found",
    }
    report = json.loads((out / "import_report.json").read_text())
    assert [p["part"] for p in report["parts"]] == list(PART_NAMES)
    unet = next(p for p in report["parts"] if p["part"] == "video_detokenizer")
    assert "temporal context" in unet["detail"]
    text = (out / "import_report.txt").read_text()
    assert "1 part(s) converted" in text and "not_supported" in text
    assert sorted(p.name for p in out.iterdir()) == ["import_report.json", "import_report.txt", "motion_tokenizer"]


def test_bad_arguments_are_clear_errors(tmp_path):
    with pytest.raises(MissingArtifactError, match="does not exist"):
        import_release(tmp_path / "nowhere", tmp_path / "out")
    (tmp_path / "r").mkdir()
    with pytest.raises(ConfigError, match="unknown part.*motion"):
        import_release(tmp_path / "r", tmp_path / "out", parts=["motion"])
    with pytest.raises(ConfigError, match="--out must differ"):
        import_release(tmp_path / "r", tmp_path / "r")
