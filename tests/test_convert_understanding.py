"""The released understanding LM's visual input (visual_weight.bin over the visual tokenizer): the official features.

The golden ``understanding_features`` is the official ``DynamicVisualTokenizer.encode_features`` (merger + vit_proj,
Gumbel-sampled under seed 11) on the seeded weights (tests/fixtures/goldens/make_visual_tokenizer_golden.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from fixtures.released_weights import visual_input_small, visual_states_small
from test_convert_language_model import _release as _llama_release
from test_convert_visual_tokenizer import GOLDEN, HEADS
from videolavit.convert.release import import_release
from videolavit.models.understanding import VisualEmbedder, embed_with_features


def _release(tmp_path: Path) -> Path:
    root = _llama_release(tmp_path / "release")
    (root / "language_model").rename(root / "language_model_sft")
    (root / "visual_tokenizer").mkdir()
    states = visual_states_small()
    for name, state in states.items():
        torch.save(state, root / "visual_tokenizer" / name)
    encoder = states["tokenizer_encoder.bin"]
    visual = {k: v for k, v in encoder.items() if k.startswith(("causal_encoder.", "vit_proj."))}
    torch.save(visual, root / "language_model_sft" / "visual_weight.bin")
    return root


def test_the_visual_input_gives_the_official_features_and_the_lm_answers_from_them(tmp_path):
    from videolavit.data.text_tokenizer import load_text_tokenizer
    from videolavit.inference.qa import answer_with_features
    from videolavit.models.lm import build_lm
    from videolavit.vocab import PAPER_VOCAB

    out = tmp_path / "out"
    results = import_release(_release(tmp_path), out, parts=["understanding_lm"], **HEADS)
    (part,) = [r for r in results if r.part == "understanding_lm"]
    assert part.status == "converted", part.detail
    embedder = VisualEmbedder.from_pretrained(out / "understanding_lm" / "visual_input")
    torch.manual_seed(GOLDEN["sampled_seeds"][0])
    with torch.no_grad():
        features = embedder(visual_input_small())
    golden = GOLDEN["understanding_features"]
    assert [len(f) for f in features] == golden["lengths"]
    for f, g in zip(features, golden["sample"]):
        assert float((f.flatten()[:: GOLDEN["eva_features"]["stride"]] - torch.tensor(g)).abs().max()) < 1e-4

    lm = build_lm(PAPER_VOCAB, pretrained_path=str(out / "understanding_lm"), dtype="float32").eval()
    ids = [1, *PAPER_VOCAB.image_span([0, 1]), 13]
    embeds = embed_with_features(lm, ids, [features[0]], PAPER_VOCAB)
    assert embeds.shape == (len(ids) - 2 + len(features[0]), 32)  # the two placeholder codes became k features
    assert torch.equal(embeds[len(features[0]) + 2], lm.get_input_embeddings().weight[PAPER_VOCAB.img_end])
    tokenizer = load_text_tokenizer(out / "understanding_lm", PAPER_VOCAB.text_size)
    image = (visual_input_small()[0].permute(1, 2, 0).clamp(-2, 2) * 60 + 128).to(torch.uint8)
    (answer,) = answer_with_features(lm, tokenizer, PAPER_VOCAB, embedder, [PAPER_VOCAB.image_span([0])],
                                     [[image.numpy()]], ["<image>\nWhat colour is it?"], max_new_tokens=4)
    assert isinstance(answer, str)
    report = json.loads((out / "import_report.json").read_text())
    assert any("visual_weight.bin replaced" in n for p in report["parts"] for n in p["notes"])
