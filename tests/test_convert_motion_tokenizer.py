"""The released motion tokenizer, imported: the official code's codes exactly and its reconstructions within 1e-4.

The goldens were made by running the official module on the same seeded weights (tests/fixtures/README.md); this test
needs no official code: it rebuilds the released-layout state dict from the seed and converts it with ours.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fixtures.released_weights import MOTION_SMALL, motion_input_small, motion_state_small
from videolavit.cli import main
from videolavit.convert.motion_tokenizer import convert_state_dict, infer_config
from videolavit.errors import ConfigError, ReleaseFormatError

GOLDEN = json.loads((Path(__file__).parent / "fixtures" / "goldens" / "motion_tokenizer_small.json").read_text())
GRID = f"{MOTION_SMALL['height']}x{MOTION_SMALL['width']}"


def _fingerprint(tensors) -> list[float]:
    tensors = list(tensors)
    return [sum(float(t.double().sum()) for t in tensors), sum(float(t.double().pow(2).sum()) for t in tensors)]


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """``videolavit import-official`` on a release folder holding only the seeded ``motion_tokenizer.bin``."""
    from videolavit.models.motion_tokenizer import MotionTokenizer

    root = tmp_path_factory.mktemp("release")
    state = motion_state_small()
    torch.save(state, root / "motion_tokenizer.bin")
    out = root / "converted"
    rc = main(["import-official", str(root), "--out", str(out), "--motion-heads", str(MOTION_SMALL["heads"]),
               "--motion-grid", GRID])
    assert rc == 0
    return state, MotionTokenizer.from_pretrained(out / "motion_tokenizer"), out


def test_seeded_weights_and_input_are_the_goldens_ones():
    state = motion_state_small()
    assert _fingerprint(state[k] for k in sorted(state)) == pytest.approx(GOLDEN["state_fingerprint"], rel=1e-9)
    assert _fingerprint([motion_input_small()]) == pytest.approx(GOLDEN["input_fingerprint"], rel=1e-9)


def test_codes_equal_the_official_ones(imported):
    _, model, _ = imported
    assert model.quantizer.vq._codebook.initted  # else k-means would replace the released codebook on this call
    assert model.encode(motion_input_small()).tolist() == GOLDEN["codes"]


def test_reconstruction_matches_the_official_one(imported):
    _, model, _ = imported
    gold = GOLDEN["reconstruction"]
    recon = model.decode(model.encode(motion_input_small()))  # [B, 2, T, H, W]
    assert list(recon.shape) == gold["shape"]
    sample = recon.flatten()[:: gold["sample_stride"]]
    assert (sample - torch.tensor(gold["sample"])).abs().max() < 1e-4
    assert (recon.mean(dim=(2, 3, 4)) - torch.tensor(gold["mean_per_clip_channel"])).abs().max() < 1e-4
    assert float(recon.pow(2).mean().sqrt()) == pytest.approx(gold["rms"], abs=1e-4)
    with torch.no_grad():
        assert model(motion_input_small())["codes"].tolist() == GOLDEN["codes"]


def test_every_released_tensor_lands_in_our_model(imported):
    state, model, _ = imported
    ours = model.state_dict()
    # qkv.bias = cat(q_bias, 0, v_bias): the official k has no bias
    dim = MOTION_SMALL["dim"]
    bias = ours["encoder_blocks.0.spatial_attention.qkv.bias"]
    assert torch.equal(bias[:dim], state["encoder.blocks.0.spatial_attention.q_bias"])
    assert torch.equal(bias[dim : 2 * dim], torch.zeros(dim))
    assert torch.equal(bias[2 * dim :], state["encoder.blocks.0.spatial_attention.v_bias"])
    # official decoder block k (coarsest grid first) is our block (3 - k//3)*3 + k%3
    for k, mine in ((0, 9), (2, 11), (3, 6), (11, 2)):
        assert torch.equal(ours[f"decoder_blocks.{mine}.mlp.0.weight"], state[f"decoder.blocks.{k}.mlp.fc1.weight"])
    pos = state["encoder.pos_embed"][0]  # [H·W, D], row-major over (H, W)
    assert torch.equal(ours["spatial_pos"][0, 0, 1, 3], pos[1 * MOTION_SMALL["width"] + 3])


def test_the_report_names_what_was_converted(imported):
    _, _, out = imported
    report = {p["part"]: p for p in json.loads((out / "import_report.json").read_text())["parts"]}
    assert report["motion_tokenizer"]["status"] == "converted"
    assert report["motion_tokenizer"]["tensors"] == len(motion_state_small())
    assert report["language_model"]["status"] == "not_found"
    assert "motion_tokenizer" in (out / "import_report.txt").read_text()


def test_a_grid_that_does_not_fit_pos_embed_is_a_clear_error(tmp_path, capsys):
    torch.save(motion_state_small(), tmp_path / "motion_tokenizer.bin")
    rc = main(["import-official", str(tmp_path), "--out", str(tmp_path / "out"), "--motion-heads", "4"])  # 20x36
    assert rc == 2
    err = capsys.readouterr().err
    assert "20x36" in err and "pos_embed" in err and "--motion-grid" in err
    assert not (tmp_path / "out" / "motion_tokenizer").exists()


def test_a_state_dict_of_another_layout_is_refused_with_the_key():
    state = motion_state_small()
    config = infer_config(state, heads=4, grid=(8, 16))
    del state["decoder.blocks.5.norm1.bias"]
    with pytest.raises(ReleaseFormatError, match=r"motion_tokenizer\.bin.*decoder\.blocks\.5\.norm1\.bias"):
        convert_state_dict(state, config, where="release/motion_tokenizer.bin")
    with pytest.raises(ConfigError, match="divisible by heads=5"):
        infer_config(motion_state_small(), heads=5, grid=(8, 16))


def test_a_fine_tuning_step_moves_the_released_codebook_gradually(imported):
    """No k-means re-init and no mass dead-code restart on the first training step of the imported tokenizer."""
    from videolavit.models.motion_tokenizer import MotionTokenizer

    _, model, out = imported
    model = MotionTokenizer.from_pretrained(out / "motion_tokenizer").train()
    before = model.quantizer.codebook.detach().clone()  # [K, D]
    model(motion_input_small())
    after = model.quantizer.codebook.detach()
    used = torch.zeros(before.shape[0], dtype=torch.bool)
    used[torch.tensor(GOLDEN["codes"]).flatten()] = True
    similarity = torch.nn.functional.cosine_similarity(after, before)  # [K]
    assert similarity[~used].min() > 0.999  # unused codes are not restarted after one step
    assert similarity[used].min() > 0.9  # used ones move towards the batch, they are not replaced by it
