"""CLIPSIM: caption–frame cosine averaged over frames then videos, with a stub encoder and a tiny local CLIPModel."""

from __future__ import annotations

import json

import pytest
import torch

from videolavit.errors import ConfigError, MissingArtifactError
from videolavit.metrics import CLIPSim, metric_name


class ColourEncoder:
    """Text "red"/"green" → axis vectors; a frame → its mean (R, G). Cosines are known by hand."""

    extractor_name = "corpus"

    def encode_text(self, captions):
        axes = {"red": [1.0, 0.0], "green": [0.0, 1.0]}
        return torch.tensor([axes[c] for c in captions])

    def encode_images(self, images):
        return images[..., :2].float().mean(dim=(1, 2))  # [N, 2]


def solid(rgb, t=1, size=4):
    return torch.tensor(rgb, dtype=torch.uint8).expand(t, size, size, 3)  # [T, H, W, 3]


def test_stub_encoder_averages_over_frames_then_videos():
    red_then_green = torch.cat([solid((255, 0, 0)), solid((0, 255, 0))])  # cos with "red": 1 then 0 → 0.5
    diagonal = solid((255, 255, 0), t=2)  # cos with "green": 1/√2 on both frames
    metric = CLIPSim(ColourEncoder())
    metric.update(torch.stack([red_then_green, diagonal]), ["red", "green"])
    assert float(metric.compute()) == pytest.approx((0.5 + 2 ** -0.5) / 2, rel=1e-9)
    metric.update(solid((0, 255, 0), t=2)[None], ["red"])  # a third video, cosine 0
    assert float(metric.compute()) == pytest.approx((0.5 + 2 ** -0.5) / 3, rel=1e-9)
    assert metric_name("t2v/clipsim", metric) == "t2v/clipsim_corpus"


def test_bad_inputs_fail_with_clear_errors():
    metric = CLIPSim(ColourEncoder())
    video = solid((255, 0, 0), t=2)[None]
    with pytest.raises(ValueError, match="1 videos but 2 captions"):
        metric.update(video, ["red", "green"])
    with pytest.raises(ValueError, match=r"\[B, T, H, W, 3\]"):
        metric.update(video.permute(0, 1, 4, 2, 3), ["red"])
    with pytest.raises(ValueError, match="uint8"):
        metric.update(video.float() / 255, ["red"])
    with pytest.raises(ValueError, match="no videos"):
        metric.compute()
    with pytest.raises(ConfigError, match="encode_text"):
        CLIPSim(object())


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    root = tmp_path_factory.mktemp("clip")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in "abcdefghijklmnopqrstuvwxyz":
        vocab[char] = len(vocab)
        vocab[char + "</w>"] = len(vocab)
    (root / "vocab.json").write_text(json.dumps(vocab))
    (root / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(root / "vocab.json"), str(root / "merges.txt"))
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16, bos_token_id=0, eos_token_id=1),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=8,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(root / "model")
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(root / "model")
    CLIPModel(config).save_pretrained(root / "model_only")
    return root


def test_local_clip_directory_matches_clipmodel_forward(tiny_clip_dir):
    from transformers import CLIPModel, CLIPProcessor

    path = tiny_clip_dir / "model"
    videos = torch.randint(0, 256, (2, 3, 40, 48, 3), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    captions = ["a red ball rolls", "the dog runs " * 10]  # the second is longer than the 16-token context
    metric = CLIPSim(path)
    metric.update(videos, captions)
    assert metric_name("t2v/clipsim", metric) == "t2v/clipsim_clip"

    # Independent route: CLIPModel.forward's logits are logit_scale · cosine.
    model = CLIPModel.from_pretrained(path).eval()
    processor = CLIPProcessor.from_pretrained(path)
    expected = []
    for video, caption in zip(videos, captions):
        inputs = processor(text=[caption], images=list(video.numpy()), return_tensors="pt", padding=True,
                           truncation=True, max_length=16)
        with torch.no_grad():
            logits = model(**inputs).logits_per_image[:, 0]  # [T]
            expected.append((logits / model.logit_scale.exp()).mean())
    assert float(metric.compute()) == pytest.approx(float(torch.stack(expected).mean()), abs=1e-5)


def test_missing_or_incomplete_clip_directory_is_named(tiny_clip_dir, tmp_path):
    with pytest.raises(MissingArtifactError, match=str(tmp_path / "absent")):
        CLIPSim(tmp_path / "absent")
    with pytest.raises(MissingArtifactError, match="model_only"):
        CLIPSim(tiny_clip_dir / "model_only")
