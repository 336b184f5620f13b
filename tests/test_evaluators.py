"""The evaluators stage: corpus classifier and CLIP learn the corpus, save/load, and plug into FVD and CLIPSim."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from videolavit.errors import ConfigError, MissingArtifactError
from videolavit.models.evaluators import CorpusCLIP, VideoAttributeClassifier, WordTokenizer, load_evaluators

COLORS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (40, 70, 230)}
STEPS = {"left": -1, "right": 1}
H, W, T = 32, 48, 24  # the tiny profile's clip frames


def _clip(color: str, direction: str, rng: np.random.Generator) -> np.ndarray:
    """A 10 px square of ``color`` drifting 1 px/frame ``direction`` over gray noise, uint8 [T, H, W, 3]."""
    background = rng.integers(90, 140, size=(H, W, 1)).repeat(3, axis=2).astype(np.uint8)
    x0, y0 = int(rng.integers(0, W)), int(rng.integers(6, H - 16))
    frames = np.repeat(background[None], T, axis=0)
    for t in range(T):
        cols = (x0 + STEPS[direction] * t + np.arange(10)) % W
        frames[t, y0 : y0 + 10][:, cols] = COLORS[color]
    return frames


def write_tiny_corpus(root, videos_per_split=(48, 12), seed=0):
    """Corpus manifest + clip shards: one clip per video, attributes color (video) and direction (clip)."""
    from videolavit.data.manifest import Sample, write_manifest, write_meta
    from videolavit.data.shards import ClipShardWriter, clip_key

    rng = np.random.default_rng(seed)
    write_meta(root / "corpus", {"source": "synthetic", "attributes": {"color": list(COLORS), "direction": list(STEPS)}})
    index = 0
    for split, count in zip(("train", "val"), videos_per_split):
        samples = []
        with ClipShardWriter(root / "clips", split) as writer:
            for _ in range(count):
                color, direction = list(COLORS)[index % 3], list(STEPS)[(index // 3) % 2]
                vid = f"vid_{index:04d}"
                caption = f"a {color} square moves to the {direction}"
                clips = [{"direction": direction}]
                samples.append(Sample(vid, "video", f"videos/{vid}.mp4", caption, [], {"color": color}, clips))
                writer.write(
                    {
                        "key": clip_key(vid, 0), "frames": _clip(color, direction, rng),
                        "keyframe": np.zeros((8, 8, 3), np.uint8), "motion": np.zeros((2, T, 2, 2), np.float32),
                        "meta": {"video_id": vid, "clip": 0, "start_time": 0.0, "split": split, "caption": caption},
                    }
                )
                index += 1
        write_manifest(root / "corpus", split, samples)


SMALL = [
    "evaluators.classifier.channels=[16,32]", "evaluators.classifier.feature_dim=32",
    "evaluators.clip.image_channels=[16,32]", "evaluators.clip.embed_dim=32", "evaluators.clip.text_dim=32",
    "evaluators.clip.text_layers=1", "evaluators.train.batch_size=16",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One short training run shared by the behaviour tests: (metrics, models dir, root)."""
    from videolavit.config import load_config
    from videolavit.stages import evaluators

    root = tmp_path_factory.mktemp("evaluators")
    write_tiny_corpus(root)
    paths = [f"paths.{k}={root / k}" for k in ("corpus", "clips", "models", "metrics", "runs")]
    cfg = load_config(
        profile="tiny",
        overrides=[*paths, *SMALL, "tracking.enabled=false", "compute.threads=1", "evaluators.train.max_steps=60",
                   "evaluators.train.val_every_n_steps=30", "evaluators.optim.lr=3e-3"],
        params_file=None,
    )
    metrics = evaluators.run(cfg)
    return metrics, root / "models" / "evaluators", root


def test_stage_learns_attributes_and_captions_above_chance(trained):
    metrics, models, root = trained
    for name in ("color", "direction"):
        assert metrics[f"val/attr_acc_{name}"] >= metrics[f"val/attr_chance_{name}"] + 0.2, metrics
    assert metrics["val/clip_retrieval_top1"] > metrics["val/clip_retrieval_chance"] + 0.2, metrics
    assert metrics["val/clipsim_corpus_matched"] > metrics["val/clipsim_corpus_mismatched"]
    assert metrics["global_step"] == 60 and metrics["attributes"] == 2
    assert (root / "metrics" / "evaluators.json").is_file()
    assert (models / "classifier" / "model.safetensors").is_file() and (models / "clip" / "vocab.json").is_file()


def test_loaded_classifier_is_a_corpus_fvd_extractor_at_any_frame_size(trained):
    from videolavit.metrics import FrechetVideoDistance, metric_name

    _, models, _ = trained
    classifier = load_evaluators(models).classifier
    rng = np.random.default_rng(1)
    red = torch.from_numpy(np.stack([_clip("red", "left", rng) for _ in range(8)])).permute(0, 4, 1, 2, 3)  # [8, 3, T, H, W]
    blue = torch.from_numpy(np.stack([_clip("blue", "right", rng) for _ in range(8)])).permute(0, 4, 1, 2, 3)
    red2 = torch.from_numpy(np.stack([_clip("red", "left", rng) for _ in range(8)])).permute(0, 4, 1, 2, 3)
    assert classifier.predict(red)["color"].count("red") >= 6

    def fvd(a, b):
        metric = FrechetVideoDistance(classifier)
        metric.update(a, real=True)
        metric.update(b, real=False)
        return float(metric.compute()), metric

    same, metric = fvd(red, red2)
    different, _ = fvd(red, blue)
    assert metric_name("t2v/fvd", metric) == "t2v/fvd_corpus"
    assert different > 2 * same
    big = torch.nn.functional.interpolate(red.float(), scale_factor=(1, 2, 2)).round().to(torch.uint8)  # [8, 3, T, 64, 96]
    assert classifier(big).shape == (8, classifier.num_features)
    accuracy = classifier.accuracy(red, [{"color": "red", "direction": "left"}] * 8)
    assert set(accuracy) == {"color", "direction"} and accuracy["color"] >= 0.75


def test_clipsim_accepts_the_corpus_clip(trained):
    from videolavit.metrics import CLIPSim, metric_name

    _, models, _ = trained
    clip = load_evaluators(models).clip
    rng = np.random.default_rng(2)
    videos = torch.from_numpy(np.stack([_clip(c, "left", rng) for c in ("red", "green", "blue")]))  # [3, T, H, W, 3]
    matched, mismatched = CLIPSim(clip), CLIPSim(clip)
    captions = [f"a {color} square moves to the left" for color in ("red", "green", "blue")]
    matched.update(videos, captions)
    mismatched.update(videos, captions[2:] + captions[:2])  # each video with another video's caption
    assert metric_name("t2v/clipsim", matched) == "t2v/clipsim_corpus"
    assert float(matched.compute()) > float(mismatched.compute())


def test_save_load_round_trip_gives_identical_outputs(tmp_path):
    torch.manual_seed(0)
    attributes = {"color": ["red", "blue"], "speed": ["slow", "fast"]}
    classifier = VideoAttributeClassifier(attributes, channels=(8, 16), feature_dim=16).eval()
    words = WordTokenizer.build(["a red square", "a blue circle"]).words
    clip = CorpusCLIP(words, image_channels=(8, 16), embed_dim=16, text_dim=16, text_layers=1).eval()
    classifier.save_pretrained(tmp_path / "evaluators" / "classifier")
    clip.save_pretrained(tmp_path / "evaluators" / "clip")
    loaded = load_evaluators(tmp_path / "evaluators")
    videos = torch.randint(0, 256, (2, 3, 6, 32, 48), dtype=torch.uint8)
    frames = torch.randint(0, 256, (3, 32, 48, 3), dtype=torch.uint8)
    assert torch.equal(loaded.classifier(videos), classifier(videos))
    assert loaded.classifier.attributes == classifier.attributes
    assert torch.equal(loaded.clip.encode_images(frames), clip.encode_images(frames))
    assert torch.equal(loaded.clip.encode_text(["a red circle", "zebra"]), clip.encode_text(["a red circle", "zebra"]))


def test_word_tokenizer_maps_unknown_and_empty_text_to_unk():
    tok = WordTokenizer.build(["A red square.", "a blue square"])
    ids = tok.encode(["a red zebra", ""], max_length=2)  # [2, 2]
    assert ids.tolist() == [[tok.ids["a"], tok.ids["red"]], [1, 0]]
    with pytest.raises(ValueError, match="list of texts"):
        tok.encode("a red square", 8)


def test_bad_inputs_raise_clear_errors(tmp_path):
    classifier = VideoAttributeClassifier({"color": ["red", "blue"]}, channels=(8,), feature_dim=8)
    with pytest.raises(ValueError, match=r"\[B, 3, T, H, W\]"):
        classifier(torch.zeros(2, 6, 32, 48, 3, dtype=torch.uint8))
    clip = CorpusCLIP(WordTokenizer.build(["a"]).words, image_channels=(8,), embed_dim=8, text_dim=8, text_layers=1)
    with pytest.raises(ValueError, match=r"\[N, H, W, 3\]"):
        clip.encode_images(torch.zeros(2, 3, 32, 48, dtype=torch.uint8))
    with pytest.raises(MissingArtifactError, match="videolavit evaluators"):
        load_evaluators(tmp_path / "nothing")


def test_unknown_attribute_is_a_config_error(tmp_path, tiny_cfg_factory):
    from videolavit.stages import evaluators

    write_tiny_corpus(tmp_path, videos_per_split=(3, 3))
    cfg = tiny_cfg_factory("tracking.enabled=false", "evaluators.attributes=[colour]")
    with pytest.raises(ConfigError, match="colour.*color, direction"):
        evaluators.run(cfg)


def test_clip_labels_follow_each_clips_start_time(tmp_path):
    from videolavit.data.manifest import Sample, write_manifest, write_meta
    from videolavit.training.evaluators import ClipLabels

    write_meta(tmp_path, {"source": "synthetic", "attributes": {"shape": ["circle", "square"], "direction": ["left", "up"]}})
    clips = [{"direction": "left"}, {"direction": "up"}]
    write_manifest(tmp_path, "train", [Sample("v", "video", "v.mp4", "c", [], {"shape": "square"}, clips)])
    labels = ClipLabels(tmp_path, None, fps=6.0, clip_frames=24)
    metas = [{"video_id": "v", "start_time": 0.0}, {"video_id": "v", "start_time": 4.0}, {"video_id": "v", "start_time": 2.0}]
    # the clip starting at 2 s straddles two manifest clips: its direction is unknown, its shape is not
    assert labels.labels(metas).tolist() == [[1, 0], [1, 1], [1, -100]]
