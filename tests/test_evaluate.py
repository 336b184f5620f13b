"""Stage `evaluate`: protocol files, the required keys of metrics/evaluate.json, tags, on tiny untrained models."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from videolavit.errors import ConfigError
from videolavit.runner import read_metrics

FAST_PROTOCOL = [
    "t2v.samples=6", "t2v.save_samples=1", "t2v.no_motion_ablation=true", "t2v.token_roundtrip=true",
    "recon.video_clips=1", "recon.keyframes=2",
    "sampling.keyframe_steps=2", "sampling.video_steps=1", "sampling.image_tokens=[1,8]",
]


def write_toy_clips(corpus_dir: Path, clips_dir: Path, split: str, frame_size=(8, 8), seed: int = 0) -> int:
    """Clip shards for the toy corpus's ``split`` videos: random keyframes, motion and frames, real clip metadata."""
    from videolavit.data.manifest import read_manifest
    from videolavit.data.shards import ClipShardWriter, clip_key

    rng = np.random.default_rng(seed)
    with ClipShardWriter(clips_dir, split) as writer:
        for sample in read_manifest(corpus_dir, split):
            for k in range(max(1, len(sample.clips)) if sample.kind == "video" else 0):
                writer.write({
                    "key": clip_key(sample.id, k),
                    "keyframe": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
                    "motion": rng.normal(0, 0.5, (2, 24, 8, 12)).astype(np.float32),
                    "frames": rng.integers(0, 256, (24, *frame_size, 3), dtype=np.uint8),
                    "meta": {"video_id": sample.id, "clip": k, "start_time": 4.0 * k, "split": split, "caption": sample.caption},
                })
        return writer.written


def write_evaluators(cfg, corpus_dir: Path, frame_size=(8, 8)) -> None:
    from videolavit.data.manifest import read_manifest
    from videolavit.data.synthetic import COLORS, DIRECTIONS, SHAPES
    from videolavit.models.evaluators import CorpusCLIP, CorpusEvaluators, VideoAttributeClassifier, WordTokenizer

    attributes = {"shape": list(SHAPES), "color": list(COLORS), "direction": list(DIRECTIONS)}
    classifier = VideoAttributeClassifier(attributes, input_size=frame_size, patch=4, channels=[8, 16], feature_dim=16)
    words = WordTokenizer.build(s.caption for s in read_manifest(corpus_dir, "train")).words
    clip = CorpusCLIP(words, embed_dim=16, text_dim=16, text_layers=1, text_heads=2, image_size=frame_size, patch=4,
                      image_channels=[8, 16])
    CorpusEvaluators(classifier, clip).save_pretrained(Path(cfg.paths.models) / "evaluators")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Toy token shards + corpus, test clip shards, untrained tiny models of every stage, a tokenize.json."""
    from test_generate import build_tiny_models

    from videolavit.config import load_config
    from fixtures.toy_tokens import write_toy_token_corpus

    root = tmp_path_factory.mktemp("evaluate")
    paths = [f"paths.{k}={root / k}" for k in ("corpus", "clips", "tokens", "models", "metrics", "reports", "runs")]
    overrides = [*paths, "tracking.enabled=false", "video.frames_height=8", "video.frames_width=8"]
    cfg = load_config(profile="tiny", overrides=overrides, params_file=None)
    vocab = write_toy_token_corpus(
        cfg.paths.corpus, cfg.paths.tokens, train_videos=8, val_videos=2, test_videos=5, images=6, max_clips=3,
        visual_codes=int(cfg.visual_tokenizer.model.codebook_size), motion_codes=int(cfg.motion_tokenizer.model.codebook_size),
        motion_tokens=144, keyframe_tokens=12, frames_per_video=2,
    )
    build_tiny_models(cfg, vocab, Path(cfg.paths.tokens) / "text_tokenizer")
    write_toy_clips(Path(cfg.paths.corpus), Path(cfg.paths.clips), "test")
    write_evaluators(cfg, Path(cfg.paths.corpus))
    Path(cfg.paths.metrics).mkdir(parents=True, exist_ok=True)
    (Path(cfg.paths.metrics) / "tokenize.json").write_text(json.dumps({"token_saving": 0.85, "tokens_per_clip": 170.0}))
    return overrides


@pytest.fixture(scope="module")
def evaluated(world):
    from videolavit.config import load_config
    from videolavit.stages.evaluate import run

    protocol = json.dumps(FAST_PROTOCOL)  # a YAML flow list of quoted key=value strings
    tracked = ["tracking.enabled=true", "tracking.experiment=evaluate-test"]  # the session's temporary MLflow store
    cfg = load_config(profile="tiny", overrides=[*world, *tracked, f"evaluate.protocol_overrides={protocol}"], params_file=None)
    metrics = run(cfg)
    # metrics/evaluate.json holds the numbers (what DVC compares), evaluate.notes.json the protocol label and notes
    return cfg, metrics, read_metrics(cfg.paths.metrics, "evaluate")


def test_every_required_key_is_a_finite_number_or_null_with_a_reason(evaluated):
    from videolavit.stages.evaluate import REQUIRED

    _, _, written = evaluated
    keys = [*REQUIRED, "t2v/fvd_corpus", "t2v/clipsim_corpus"]
    missing = [k for k in keys if k not in written]
    assert not missing, f"metrics/evaluate.json lacks {missing}"
    for key in keys:
        value = written[key]
        if value is None:
            assert written["notes"].get(key), f"{key} is null without a reason"
        else:
            assert math.isfinite(value), key
    assert written["qa/metric"] == "exact_match" and "NOT comparable" in written["notes"]["qa/*"]
    assert written["protocol"] == "tiny_v3@3+modified"


def test_values_mean_what_they_say(evaluated):
    _, _, m = evaluated
    for key in ("qa/video_acc", "qa/image_acc", "qa/chance_motion", "ablation_no_motion/qa/video_acc", "t2v/attribute_acc"):
        assert 0.0 <= m[key] <= 1.0, key
    assert m["qa/video_count"] == sum(m[f"qa/video_count_{t}"] for t in ("appearance", "motion", "temporal") if f"qa/video_count_{t}" in m)
    assert m["ablation_no_motion/qa/video_count"] == m["qa/video_count"]  # the same questions, other input
    assert m["tokens/motion_per_clip"] == 144 and m["tokens/saving"] == 0.85
    assert m["count/t2v_samples"] == 6 and m["count/t2v_captions"] == 5 and m["count/recon_video_clips"] == 1 and m["count/recon_keyframes"] == 2
    assert m["recon/motion_epe"] > 0 and m["recon/motion_epe_zero_baseline"] > 0
    assert m["t2v/fvd_corpus"] >= 0 and -1.0 <= m["t2v/clipsim_corpus"] <= 1.0
    assert "ablation_no_motion/t2v/fvd_corpus" in m and m["t2v/attribute_chance_direction"] == 0.25
    # the classifier on the real clips, and on the same clips rendered from their own tokens (the detokenizers' part)
    for kind in ("real", "tokens"):
        assert 0.0 <= m[f"t2v/attribute_acc_{kind}_direction"] <= 1.0 and 0.0 <= m[f"t2v/attribute_acc_{kind}"] <= 1.0
    assert "detokenizers" in m["notes"]["t2v/attribute_acc_tokens*"]


def test_samples_and_predictions_are_written(evaluated):
    cfg, _, _ = evaluated
    out = Path(cfg.paths.runs) / "evaluate"
    assert len(list(out.glob("t2v_00_*.mp4"))) == 1 and len(list(out.glob("t2v_00_*.gif"))) == 1
    rows = [json.loads(line) for line in (out / "qa_test.jsonl").read_text().splitlines()]
    assert {r["input"] for r in rows} == {"media", "frames_media"}
    assert (out / "protocol.yaml").is_file()


def test_the_run_carries_the_tags_the_report_reads(evaluated):
    from videolavit import tracking
    from videolavit.report.runs import load_runs

    cfg, _, _ = evaluated
    index = load_runs(tracking.tracking_uri(cfg), "evaluate-test")
    run = index.latest("evaluate")  # a main run: same motion grid as the profile, so no ablation tag
    assert run is not None and run.motion_tokens == 144
    assert run.tags["videolavit.protocol"] == "tiny_v3@3+modified" and run.tags["videolavit.qa_metric"] == "exact_match"
    assert "qa/video_acc" in run.metrics and "t2v/fvd_corpus" in run.metrics


def test_shipped_protocols_load_and_pin_sampling(tiny_cfg_factory):
    from videolavit.config import CONF_DIR
    from videolavit.stages.evaluate import load_protocol, with_sampling

    names = sorted(p.stem for p in (CONF_DIR / "eval").glob("*.yaml"))
    assert {"tiny_v1", "tiny_v2", "tiny_v3", "paper_v1"} <= set(names)
    for name in names:
        protocol, label = load_protocol(name)
        assert protocol.name == name and label == f"{name}@{protocol.version}"
    protocol, _ = load_protocol("tiny_v1", ["sampling.video_steps=3"])
    cfg = with_sampling(tiny_cfg_factory(), protocol.sampling)
    assert cfg.generate.video_steps == 3 and cfg.lm.generate.motion_guidance_scale == protocol.sampling.motion_guidance_scale


def test_protocol_mistakes_are_config_errors():
    from videolavit.stages.evaluate import load_protocol

    with pytest.raises(ConfigError, match="tiny_v1"):
        load_protocol("no_such_protocol")
    with pytest.raises(ConfigError, match="sampels"):
        load_protocol("tiny_v1", ["t2v.sampels=3"])


def test_a_changed_motion_grid_tags_the_run_as_a_token_ablation(tiny_cfg_factory):
    from videolavit.stages.evaluate import reference_motion_tokens, run_tags

    assert reference_motion_tokens(tiny_cfg_factory()) == 144  # the tiny profile's [6, 4, 6] grid
    assert reference_motion_tokens(tiny_cfg_factory("evaluate.reference_motion_tokens=36")) == 36
    assert "videolavit.ablation" not in run_tags("tiny_v1@1", 144, 144)
    tags = run_tags("tiny_v1@1", 36, 144)
    assert tags["videolavit.ablation"] == "tokens_36" and tags["videolavit.motion_tokens"] == "36"


def test_missing_instruct_model_names_its_stage(world, tmp_path):
    from videolavit.config import load_config
    from videolavit.errors import MissingArtifactError
    from videolavit.stages.evaluate import run

    cfg = load_config(profile="tiny", overrides=[*world, f"evaluate.qa_lm_path={tmp_path / 'none'}"], params_file=None)
    with pytest.raises(MissingArtifactError, match="videolavit instruct"):
        run(cfg)
