"""The released image detokenizer, imported: its condition (unet_proj_1 ‖ unet_proj_2, the attention pool) equals the
official decoder's on the same decoded features.

Goldens: visual_tokenizer_small.json (tests/fixtures/goldens/make_visual_tokenizer_golden.py) holds the official
HighresVQDecoder's prompt_embeds and pooled_prompt_embeds for the codes of a fixed keep mask; the decoded features
that feed them are checked in tests/test_convert_visual_tokenizer.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fixtures.released_weights import KEYFRAME_UNET_SMALL, VISUAL_SMALL, keyframe_unet_state_small, visual_states_small
from videolavit.convert.release import import_release
from videolavit.models.keyframe_detokenizer import AttentionPool, KeyframeDetokenizer
from videolavit.models.visual_tokenizer import VisualTokenizer

GOLDEN = json.loads((Path(__file__).parent / "fixtures" / "goldens" / "visual_tokenizer_small.json").read_text())
HEADS = {"eva_heads": VISUAL_SMALL["heads"], "visual_heads": VISUAL_SMALL["heads"],
         "visual_decoder_heads": VISUAL_SMALL["heads"]}


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("image")
    release = tmp / "release"
    (release / "visual_tokenizer").mkdir(parents=True)
    for name, state in visual_states_small().items():
        torch.save(state, release / "visual_tokenizer" / name)
    unet = release / "image_detokenizer" / "unet"
    unet.mkdir(parents=True)
    (unet / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel", **KEYFRAME_UNET_SMALL}))
    torch.save(keyframe_unet_state_small(), unet / "diffusion_pytorch_model.bin")
    results = {r.part: r for r in import_release(release, tmp / "out", parts=["visual_tokenizer", "image_detokenizer"],
                                                 **HEADS)}
    assert results["image_detokenizer"].status == "converted", results["image_detokenizer"].detail
    return tmp / "out"


def _decoded(out: Path) -> torch.Tensor:
    """The imported visual tokenizer's decoded features of the golden's codes (the official decoder's input)."""
    model = VisualTokenizer.from_pretrained(out / "visual_tokenizer").eval()
    keep = torch.tensor(GOLDEN["keep"]).bool()
    codes, start = [], 0
    for row in keep:
        codes.append(torch.tensor(GOLDEN["codes"][start : start + int(row.sum())]))
        start += int(row.sum())
    with torch.no_grad():
        return model.decode_features(codes)


def _errors(model: KeyframeDetokenizer, decoded: torch.Tensor) -> tuple[float, float]:
    with torch.no_grad():
        context = model.context(decoded)
    prompt, g = context["encoder_hidden_states"], GOLDEN["prompt_embeds"]
    assert list(prompt.shape) == g["shape"]
    pooled = context["added_cond_kwargs"]["text_embeds"]
    return (float((prompt.flatten()[:: g["stride"]] - torch.tensor(g["sample"])).abs().max()),
            float((pooled.flatten() - torch.tensor(GOLDEN["pooled"]).flatten()).abs().max()))


def test_imported_keyframe_detokenizer_conditions_as_the_official_decoder(imported):
    model = KeyframeDetokenizer.from_pretrained(imported / "detokenizer" / "keyframe")
    assert isinstance(model.pool_proj, AttentionPool) and model.config["pool"] == "attention"
    assert model.config["image_size"] == [16, 16] and model.vae is None
    prompt_err, pooled_err = _errors(model, _decoded(imported))
    assert prompt_err < 1e-4 and pooled_err < 1e-4, (prompt_err, pooled_err)
    with torch.no_grad():  # and the U-Net renders from that condition
        image = model.sample(_decoded(imported)[:1], steps=2, guidance=2.0, generator=torch.Generator().manual_seed(0))
    assert image.shape == (1, 16, 16, 3)


def test_the_attention_pool_matters_and_a_mask_keeps_padding_out(imported):
    model = KeyframeDetokenizer.from_pretrained(imported / "detokenizer" / "keyframe")
    decoded = _decoded(imported)
    mean = KeyframeDetokenizer(**{**model.config, "pool": "mean"}, unet_model=model.unet)  # ours: mean → Linear
    mean.cond_proj.load_state_dict(model.cond_proj.state_dict())
    assert _errors(mean, decoded)[1] > 1e-2
    pool = model.pool_proj
    with torch.no_grad():
        padded = torch.cat([decoded[:1], torch.randn(1, 3, decoded.shape[-1])], dim=1)[:, : decoded.shape[1]]
        mask = torch.zeros(1, decoded.shape[1], dtype=torch.bool)
        mask[:, : decoded.shape[1] - 3] = True
        shortened = decoded[:1, : decoded.shape[1] - 3]
        assert torch.allclose(pool(padded, mask), pool(shortened), atol=1e-6)


def test_the_paper_profile_pools_by_attention_and_tiny_keeps_the_mean():
    from videolavit.config import load_config

    for profile, expected in (("paper", "attention"), ("tiny", "mean")):
        assert load_config(profile=profile, params_file=None).detokenizer.keyframe.pool == expected
