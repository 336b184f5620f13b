"""The motion condition encoder in the released video detokenizer, imported: the official encoder's features within 1e-4.

Goldens: tests/fixtures/goldens/make_motion_condition_golden.py ran the official module on the same seeded tensors.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fixtures.released_weights import ENCODER_SMALL, encoder_input_small, encoder_state_small
from videolavit.convert.motion_condition import convert_motion_encoder, split_motion_encoder
from videolavit.convert.release import import_release
from videolavit.errors import ConfigError
from videolavit.models.motion_condition import MotionConditionEncoder

GOLDEN = json.loads((Path(__file__).parent / "fixtures" / "goldens" / "motion_condition_small.json").read_text())


def _check(features: torch.Tensor) -> None:
    assert list(features.shape) == GOLDEN["shape"]
    assert (features.flatten()[:: GOLDEN["sample_stride"]] - torch.tensor(GOLDEN["sample"])).abs().max() < 1e-4
    assert (features.mean(dim=(2, 3)) - torch.tensor(GOLDEN["mean_per_frame"])).abs().max() < 1e-4


def test_imported_encoder_gives_the_official_features(tmp_path):
    release = tmp_path / "release"
    (release / "video_detokenizer" / "unet").mkdir(parents=True)
    torch.save(encoder_state_small(), release / "video_detokenizer" / "unet" / "diffusion_pytorch_model.bin")
    (result,) = [r for r in import_release(release, tmp_path / "out", encoder_heads=ENCODER_SMALL["heads"],
                                           encoder_grid=ENCODER_SMALL["grid"]) if r.part == "video_detokenizer"]
    assert result.status == "partial"
    folder = Path(result.output)
    model = MotionConditionEncoder(**json.loads((folder / "config.json").read_text()))
    model.load_state_dict(load_file(folder / "model.safetensors"))
    with torch.no_grad():
        _check(model.eval()(encoder_input_small()))
    assert torch.equal(model.temporal_embedding, torch.zeros_like(model.temporal_embedding))  # none in the release


def test_the_renames_matter():
    state = split_motion_encoder(encoder_state_small())
    model, _ = convert_motion_encoder(state, heads=ENCODER_SMALL["heads"], grid=ENCODER_SMALL["grid"])
    with torch.no_grad():
        _check(model(encoder_input_small()))
        model.blocks[0].norm_spatial.weight.copy_(state["blocks.0.norm1.weight"])  # norm0 ↔ norm1 swapped
        with pytest.raises(AssertionError):
            _check(model(encoder_input_small()))
    with pytest.raises(ConfigError, match="does not fit the 64 positions"):
        convert_motion_encoder(state, heads=4, grid=(16, 16))
