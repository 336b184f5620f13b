"""``videolavit evaluate`` with ``evaluate.understanding_lm``: the QA protocol answered by the released understanding LM.

A seeded stand-in release (the small Llama as ``language_model_sft/`` + ``visual_weight.bin``, the small visual
tokenizer, a motion tokenizer with the released 1024 codes) is imported with ``import_release``; the evaluate stage
then answers a toy corpus's test questions through the feature route (keyframes and images → merger features →
vit_proj → inputs_embeds, motion as ids) with no model of this platform's pipeline trained.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from fixtures.released_weights import MOTION_SMALL, seeded_state
from test_convert_understanding import _release as _understanding_release
from test_convert_visual_tokenizer import HEADS

PARTS = "evaluate.parts=[qa_imported]"


def _release(tmp_path: Path) -> Path:
    from videolavit.convert.motion_tokenizer import official_layout

    root = _understanding_release(tmp_path)
    s = MOTION_SMALL  # the small geometry, with the release's 1024 codes (the LM's motion id range)
    layout = official_layout(dim=s["dim"], frames=s["frames"], positions=s["height"] * s["width"], code_dim=s["code_dim"],
                             codebook_size=1024, mlp_ratio=s["mlp_ratio"])
    torch.save(seeded_state(layout, 5), root / "motion_tokenizer.bin")
    return root


def _corpus(root: Path) -> None:
    """A toy corpus (manifest + typed QA), its test images as PNG files and its test clips at the motion geometry."""
    from PIL import Image

    from fixtures.toy_tokens import write_toy_token_corpus
    from videolavit.data.manifest import read_manifest
    from videolavit.data.shards import ClipShardWriter, clip_key

    write_toy_token_corpus(root / "corpus", root / "tokens", train_videos=6, val_videos=2, test_videos=3, images=6,
                           max_clips=2)
    rng = np.random.default_rng(0)
    samples = read_manifest(root / "corpus", "test")
    assert {s.kind for s in samples} == {"video", "image"}
    with ClipShardWriter(root / "clips", "test") as writer:
        for sample in samples:
            if sample.kind == "image":
                path = sample.media_path(root / "corpus")
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(path)
                continue
            for k in range(max(1, len(sample.clips))):
                writer.write({
                    "key": clip_key(sample.id, k),
                    "keyframe": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
                    "motion": rng.normal(0, 0.5, (2, MOTION_SMALL["frames"], MOTION_SMALL["height"],
                                                  MOTION_SMALL["width"])).astype(np.float32),
                    "frames": rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8),
                    "meta": {"video_id": sample.id, "clip": k, "start_time": 4.0 * k, "split": "test",
                             "caption": sample.caption},
                })


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from videolavit.convert.release import import_release

    root = tmp_path_factory.mktemp("evaluate_imported")
    results = import_release(_release(root / "release"), root / "released",
                             parts=["motion_tokenizer", "understanding_lm"], motion_heads=MOTION_SMALL["heads"],
                             motion_grid=(MOTION_SMALL["height"], MOTION_SMALL["width"]), **HEADS)
    assert {r.part: r.status for r in results if r.status != "skipped"} == {"motion_tokenizer": "converted",
                                                                           "understanding_lm": "converted"}
    _corpus(root)
    paths = [f"paths.{k}={root / k}" for k in ("corpus", "clips", "tokens", "models", "metrics", "reports", "runs")]
    few = json.dumps(["qa.max_questions=16"])  # of the 51 test questions: video and image, types in turn
    return root, [*paths, "tracking.enabled=false", "evaluate.protocol=tiny_v3", f"evaluate.protocol_overrides={few}",
                  f"evaluate.understanding_lm={root / 'released' / 'understanding_lm'}"]


def _evaluate(overrides):
    from videolavit.config import load_config
    from videolavit.stages.evaluate import run

    cfg = load_config(profile="tiny", overrides=overrides, params_file=None)
    metrics = run(cfg)
    rows = [json.loads(line) for line in (Path(cfg.paths.runs) / "evaluate" / "qa_imported_test.jsonl").open()]
    return metrics, rows


@pytest.fixture(scope="module")
def evaluated(world):
    return _evaluate([*world[1], PARTS])


def test_the_imported_lm_answers_and_is_scored_through_evaluate(world, evaluated):
    metrics, rows = evaluated
    video = [r for r in rows if r["kind"] == "video" and r["input"] == "features"]
    image = [r for r in rows if r["kind"] == "image"]
    ablation = [r for r in rows if r["input"] == "frames_features"]
    assert video and image and len(ablation) == len(video)
    assert all(isinstance(r["prediction"], str) and math.isfinite(r["logprob"]) for r in rows)
    assert metrics["qa_imported/video_count"] == len(video) and metrics["qa_imported/image_count"] == len(image)
    assert metrics["ablation_no_motion/qa_imported/video_count"] == len(video)
    for key in ("qa_imported/video_acc", "qa_imported/image_acc", "ablation_no_motion/qa_imported/video_acc"):
        assert 0.0 <= metrics[key] <= 1.0, key
    from videolavit.metrics.qa import normalize_answer

    # scored by exact match: the accuracy is the share of predictions equal to the gold answers
    hits = [normalize_answer(r["prediction"]) == normalize_answer(r["answer"]) for r in video]
    assert metrics["qa_imported/video_acc"] == pytest.approx(sum(hits) / len(hits))
    assert metrics["qa_imported/lm"].endswith("understanding_lm") and metrics["qa_imported/metric"] == "exact_match"
    assert 0.0 < metrics["qa_imported/chance_appearance"] <= 1.0
    # the same questions as the instruct LM's QA reads from the token shards (the toy corpus has both)
    from videolavit.config import load_config
    from videolavit.data.lm_data import load_media_records
    from videolavit.data.tokens import read_token_meta, vocab_from_meta
    from videolavit.evaluation.protocol import load_protocol, sampling_seed, with_sampling
    from videolavit.evaluation.qa import _qa_items

    cfg = load_config(profile="tiny", overrides=world[1], params_file=None)
    protocol, _ = load_protocol(cfg.evaluate.protocol, list(cfg.evaluate.protocol_overrides))
    records = load_media_records(cfg.paths.tokens, "test", vocab_from_meta(read_token_meta(cfg.paths.tokens)))
    items = _qa_items(records, protocol.qa.max_questions, sampling_seed(with_sampling(cfg, protocol.sampling)))
    assert sorted((i["media_id"], i["question"]) for i in items) == sorted(
        (r["media_id"], r["question"]) for r in rows if r["input"] == "features")
    # the instruct LM's QA and the generation parts did not run, and say why; no trained model was needed
    assert metrics["qa/video_acc"] is None and "evaluate.parts" in metrics["notes"]["qa/video_acc"]
    assert metrics["recon/motion_epe"] is None and "evaluate.parts" in metrics["notes"]["recon/motion_epe"]
    # N is this platform's motion tokenizer's (none loaded here); the imported one's is its own key
    from videolavit.models.motion_tokenizer import MotionTokenizer

    released = MotionTokenizer.from_pretrained(Path(cfg.evaluate.understanding_lm).parent / "motion_tokenizer")
    assert metrics["tokens/motion_per_clip"] is None
    assert metrics["qa_imported/motion_tokens_per_clip"] == released.tokens_per_clip


def test_the_answers_come_from_the_features(world, evaluated, monkeypatch):
    from videolavit.models.understanding import VisualEmbedder

    forward = VisualEmbedder.forward
    monkeypatch.setattr(VisualEmbedder, "forward", lambda self, images, sample=False: [
        torch.zeros_like(f) for f in forward(self, images, sample)])
    _, zeroed = _evaluate([*world[1], PARTS])
    _, rows = evaluated
    assert [r["question"] for r in zeroed] == [r["question"] for r in rows]
    changed = [abs(a["logprob"] - b["logprob"]) > 1e-5 for a, b in zip(rows, zeroed)]
    assert all(changed), f"{changed.count(False)} of {len(rows)} answers kept their log-probability with zero features"


def test_parts_are_checked(world):
    from videolavit.config import load_config
    from videolavit.errors import ConfigError
    from videolavit.stages.evaluate import evaluate_parts

    _, overrides = world
    cfg = load_config(profile="tiny", overrides=overrides, params_file=None)
    assert evaluate_parts(cfg) == ["qa", "qa_imported", "t2v", "recon"]
    plain = load_config(profile="tiny", params_file=None)
    assert evaluate_parts(plain) == ["qa", "t2v", "recon"]  # unset: the tiny pipeline's evaluate as before
    with pytest.raises(ConfigError, match="evaluate.understanding_lm"):
        evaluate_parts(load_config(profile="tiny", overrides=[PARTS], params_file=None))
    with pytest.raises(ConfigError, match="unknown"):
        evaluate_parts(load_config(profile="tiny", overrides=["evaluate.parts=[qa,fvd]"], params_file=None))


def test_a_run_without_qa_t2v_and_recon_is_never_a_main_row_of_the_report():
    from videolavit.stages.evaluate import run_tags

    assert "videolavit.ablation" not in run_tags("paper_v1@1", 135, 135, ["qa", "qa_imported", "t2v", "recon"])
    tags = run_tags("paper_v1@1", None, 135, ["qa_imported"])
    assert tags["videolavit.ablation"] == "parts_qa_imported" and "videolavit.motion_tokens" not in tags


def test_a_motion_tokenizer_of_another_codebook_is_refused(world, tmp_path):
    from videolavit.config import load_config
    from videolavit.errors import ConfigError
    from videolavit.evaluation.qa_imported import load_understanding
    from videolavit.models.motion_tokenizer import MotionTokenizer

    _, overrides = world
    MotionTokenizer(frames=16, height=8, width=16, dim=8, depth=12, heads=2, code_dim=4, codebook_size=64
                    ).save_pretrained(tmp_path / "mt")
    cfg = load_config(profile="tiny", overrides=[*overrides, f"evaluate.understanding_motion_tokenizer={tmp_path / 'mt'}"],
                      params_file=None)
    with pytest.raises(ConfigError, match="understanding_motion_tokenizer.*64 motion codes"):
        load_understanding(cfg, "cpu")
