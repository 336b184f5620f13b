"""The released visual tokenizer (EVA-CLIP + encoder + decoder), imported: the official module's codes and features.

Goldens: tests/fixtures/goldens/make_visual_tokenizer_golden.py ran the official EVAVisionTransformer,
DynamicVisualTokenizer and HighresVQDecoder on the same seeded tensors (tests/fixtures/README.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fixtures.released_weights import VISUAL_SMALL, visual_input_small, visual_states_small
from videolavit.convert.release import import_release
from videolavit.errors import ReleaseFormatError
from videolavit.models.vision_encoder import VisionEncoder
from videolavit.models.visual_tokenizer import VisualTokenizer

GOLDEN = json.loads((Path(__file__).parent / "fixtures" / "goldens" / "visual_tokenizer_small.json").read_text())
HEADS = dict(eva_heads=VISUAL_SMALL["heads"], visual_heads=VISUAL_SMALL["heads"],
             visual_decoder_heads=VISUAL_SMALL["heads"])


def _close(values: torch.Tensor, golden: list, tol: float = 1e-4) -> float:
    err = float((values.flatten() - torch.tensor(golden)).abs().max())
    assert err < tol, err
    return err


def _release(tmp_path: Path) -> Path:
    release = tmp_path / "release"
    (release / "visual_tokenizer").mkdir(parents=True)
    for name, state in visual_states_small().items():
        torch.save(state, release / "visual_tokenizer" / name)
    return release


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("visual")
    results = import_release(_release(tmp), tmp / "out", parts=["visual_tokenizer"], **HEADS)
    (result,) = [r for r in results if r.part == "visual_tokenizer"]
    assert result.status == "converted", result.detail
    return tmp / "out"


def _keep(model: VisualTokenizer, keep: torch.Tensor):
    """The model with its selection replaced by a fixed keep mask (the golden's)."""
    model.select = lambda log_probs, sample, straight_through=False: keep.to(log_probs.dtype)
    return model


def test_eva_clip_is_accepted_as_teacher_and_gives_the_official_features(imported):
    model = VisualTokenizer.from_pretrained(imported / "visual_tokenizer")  # teacher_path ../eva_clip, relative
    assert isinstance(model.teacher, VisionEncoder) and model.teacher.cls_token is not None
    images = visual_input_small()
    with torch.no_grad():
        raw = model._teacher_features(images)
        g = GOLDEN["eva_features"]
        _close(raw.flatten()[:: g["stride"]], g["sample"])
        _close(raw.mean(-1), g["mean_per_patch"])
        _close(model.selector(raw), GOLDEN["log_probs"])


def test_codes_merged_features_and_decoded_features_match_the_official(imported):
    model = VisualTokenizer.from_pretrained(imported / "visual_tokenizer").eval()
    keep = torch.tensor(GOLDEN["keep"], dtype=torch.float32)
    _keep(model, keep)
    images = visual_input_small()
    with torch.no_grad():
        merged, _ = model._merged_features(model._teacher_features(images), images, sample=False)
        kept = merged[keep.bool()]
        g = GOLDEN["merged_kept"]
        assert list(kept.shape) == g["shape"]
        _close(kept.flatten()[:: g["stride"]], g["sample"])
        _close(kept.mean(-1), g["mean_per_token"])  # the last image keeps every patch: the official uniform row
        codes = model.encode(images)
        assert torch.cat(codes).tolist() == GOLDEN["codes"]
        decoded = model.decode_features(codes)
        g = GOLDEN["decoded"]
        assert list(decoded.shape) == g["shape"]
        _close(decoded.flatten()[:: g["stride"]], g["sample"])
        _close(decoded.mean(-1), g["mean_per_patch"])


def test_gumbel_selection_at_inference_samples_the_official_codes(imported):
    """selection='gumbel' (the import's): the same draws as the official tokenize_image under the same seed."""
    model = VisualTokenizer.from_pretrained(imported / "visual_tokenizer").eval()
    assert model.selection == "gumbel"
    for seed, golden in zip(GOLDEN["sampled_seeds"], GOLDEN["sampled_codes"]):
        torch.manual_seed(seed)
        assert [c.tolist() for c in model.encode(visual_input_small())] == golden


def test_the_official_variants_matter(imported):
    """Our own merger / softmax on the same weights misses the goldens (so the switches are what the parity needs)."""
    model = _keep(VisualTokenizer.from_pretrained(imported / "visual_tokenizer").eval(),
                  torch.tensor(GOLDEN["keep"], dtype=torch.float32))
    model.official_merger = False
    images = visual_input_small()
    with torch.no_grad():
        merged, _ = model._merged_features(model._teacher_features(images), images, sample=False)
    with pytest.raises(AssertionError):
        _close(merged[torch.tensor(GOLDEN["keep"]).bool()].mean(-1), GOLDEN["merged_kept"]["mean_per_token"])


def test_a_visual_tokenizer_release_with_a_foreign_tensor_is_refused(tmp_path):
    release = _release(tmp_path)
    states = visual_states_small()
    bad = {**states["tokenizer_encoder.bin"], "causal_encoder.extra.weight": torch.zeros(2)}
    torch.save(bad, release / "visual_tokenizer" / "tokenizer_encoder.bin")
    with pytest.raises(ReleaseFormatError, match="causal_encoder.extra.weight"):
        import_release(release, tmp_path / "out", parts=["visual_tokenizer"], **HEADS)


def test_the_paper_profile_uses_the_official_variants_and_tiny_keeps_its_own():
    from videolavit.config import load_config

    official = dict(selection="gumbel", merger="official", decoder_head="mlp", vit_cls_token=True, vit_norm_eps=1e-6)
    ours = dict(selection="expected", merger="ours", decoder_head="linear", vit_cls_token=False, vit_norm_eps=1e-5)
    for profile, expected in (("paper", official), ("tiny", ours)):
        model = load_config(profile=profile, params_file=None).visual_tokenizer.model
        assert {k: getattr(model, k) for k in expected} == expected, profile
    # the constructor's defaults are the tiny recipe's, so checkpoints saved before the switches load unchanged
    defaults = VisualTokenizer.__init__.__defaults__
    assert all(v in defaults for v in ("expected", "ours", "linear"))
