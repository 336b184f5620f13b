"""Stage tokenize: corpus + clip shards + both tokenizers → token shards the LM stages read; token counts and savings."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from videolavit.data.images import resize_images
from videolavit.data.manifest import QA, Conversation, Sample, write_instruct, write_manifest
from videolavit.data.shards import ClipShardWriter
from videolavit.data.tokens import iter_token_records, read_token_meta, token_shard_paths, vocab_from_meta
from videolavit.errors import MissingArtifactError
from videolavit.models.motion_tokenizer import MotionTokenizer
from videolavit.models.visual_tokenizer import VisualTokenizer
from videolavit.vocab import IMAGE, MOTION

FRAMES, MOTION_TOKENS = 8, 12  # frames per clip; the small motion tokenizer's 2×2×3 grid
VISUAL = dict(image_size=32, patch_size=8, width=32, depth=1, heads=2, merger_depth=1, decoder_depth=1, code_dim=8, codebook_size=32)
MOTION_MODEL = dict(frames=FRAMES, height=4, width=6, dim=16, depth=2, heads=2, downsample_after=[1, 2],
                    downsample_strides=[[2, 2, 2], [2, 1, 1]], code_dim=8, codebook_size=32)
# video id → clip indices, in the order the shards hold them (v0's clips out of time order on purpose)
CLIPS = {"train": {"v0": [1, 0], "v1": [0]}, "val": {"w0": [0]}, "test": {"t0": [0]}}
VIDEOS = {"train": ["v0", "v1", "v_rejected", "v_lost"], "val": ["w0"], "test": ["t0"]}
IMAGES = {"train": ["img0", "img1"], "val": ["img2"], "test": []}


def clip_arrays(video: str, clip: int) -> dict[str, np.ndarray]:
    """Distinct, reproducible content per clip: a keyframe, its motion and its frames."""
    rng = np.random.default_rng([ord(c) for c in video] + [clip])
    frames = np.repeat(rng.integers(0, 256, (FRAMES, 1, 1, 3), dtype=np.uint8), 16, 1).repeat(24, 2)  # [T, 16, 24, 3]
    frames[:, 4:12, 6:18] = rng.integers(0, 256, (FRAMES, 8, 12, 3), dtype=np.uint8)
    keyframe = resize_images(frames[0], 32)
    motion = rng.normal(size=(2, FRAMES, 4, 6)).astype(np.float32)
    return {"keyframe": keyframe, "motion": motion, "frames": frames}


def write_corpus(root) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val", "test"):
        samples = [
            Sample(v, "video", f"videos/{v}.mp4", caption=f"a red square moves left in {v}",
                   qa=[QA("Which direction does it move?", "left", "motion"), QA("What color is it?", "red", "appearance")])
            for v in VIDEOS[split]
        ]
        for name in IMAGES[split]:
            path = root / "corpus" / "images" / f"{name}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (20, 28, 3), dtype=np.uint8)).save(path)
            samples.append(Sample(name, "image", f"images/{name}.png", caption=f"a blue circle in {name}",
                                  qa=[QA("What shape is it?", "circle", "appearance")]))
        write_manifest(root / "corpus", split, samples)
        with ClipShardWriter(root / "clips", split, clips_per_shard=2) as writer:
            for video, clips in CLIPS[split].items():
                for clip in clips:
                    meta = {"video_id": video, "clip": clip, "split": split, "caption": "", "start_time": 4.0 * clip}
                    writer.write({"key": f"{video}__c{clip:03d}", **clip_arrays(video, clip), "meta": meta})
    write_instruct(root / "corpus", [
        Conversation("c0", "v0", "video", "train", [{"from": "human", "value": "<video>\nWhich direction?"},
                                                    {"from": "gpt", "value": "left"}], "motion"),
    ])
    (root / "clips" / "rejects.jsonl").write_text(
        json.dumps({"id": "v_rejected", "path": "videos/v_rejected.mp4", "split": "train", "error": "CorruptVideoError",
                    "message": "x"}) + "\n"
    )


def write_tokenizers(models_dir) -> tuple[VisualTokenizer, MotionTokenizer]:
    """Untrained tokenizers after one training forward (k-means has initialized their codebooks)."""
    torch.manual_seed(0)
    visual, motion = VisualTokenizer(**VISUAL), MotionTokenizer(**MOTION_MODEL)
    arrays = [clip_arrays(v, c) for s in CLIPS.values() for v, cs in s.items() for c in cs]
    visual.train()(visual.preprocess(np.stack([f for a in arrays for f in a["frames"]])))
    motion.train()(torch.as_tensor(np.stack([a["motion"] for a in arrays])))
    visual.eval().save_pretrained(models_dir / "visual_tokenizer")
    motion.eval().save_pretrained(models_dir / "motion_tokenizer")
    loaded_visual = VisualTokenizer.from_pretrained(models_dir / "visual_tokenizer").eval()
    return loaded_visual, MotionTokenizer.from_pretrained(models_dir / "motion_tokenizer")


@pytest.fixture(scope="module")
def tokenized(tmp_path_factory):
    """(cfg, metrics, visual, motion) after one run of the stage on the small corpus (shared: the tests only read)."""
    from videolavit.config import load_config
    from videolavit.stages import tokenize

    root = tmp_path_factory.mktemp("tokenize")
    write_corpus(root)
    visual, motion = write_tokenizers(root / "models")
    paths = [f"paths.{key}={root / key}" for key in ("corpus", "clips", "tokens", "models", "metrics", "reports", "runs")]
    overrides = [*paths, "tracking.enabled=false", "tokenize.text_vocab_size=300", "tokenize.text_min_frequency=1"]
    cfg = load_config(profile="tiny", overrides=overrides, params_file=None)
    return cfg, tokenize.run(cfg), visual, motion


def codes_of_images(visual: VisualTokenizer, images) -> list[list[int]]:
    return [c.tolist() for c in visual.encode(visual.preprocess(resize_images(np.stack(images), visual.image_size)))]


def test_video_records_alternate_keyframe_and_motion_spans_in_time_order(tokenized):
    cfg, metrics, visual, motion = tokenized
    meta = read_token_meta(cfg.paths.tokens)
    vocab = vocab_from_meta(meta)
    assert (vocab.visual_codes, vocab.motion_codes) == (32, 32)  # taken from the two tokenizers
    assert meta["motion_tokens_per_clip"] == MOTION_TOKENS
    records = {r["id"]: r for r in iter_token_records(cfg.paths.tokens, "train")}
    assert list(records) == ["v0", "v1", "img0", "img1"]  # corpus order, skipped videos left out

    v0 = records["v0"]
    segments = vocab.parse(v0["media"])
    assert [s.kind for s in segments] == [IMAGE, MOTION, IMAGE, MOTION]
    assert all(len(s.values) == MOTION_TOKENS for s in segments if s.kind == MOTION)
    clips = [clip_arrays("v0", 0), clip_arrays("v0", 1)]  # time order, though the shard holds clip 1 first
    keyframes = codes_of_images(visual, [c["keyframe"] for c in clips])
    assert keyframes[0] != keyframes[1]
    assert [list(s.values) for s in segments if s.kind == IMAGE] == keyframes
    expected_motion = motion.encode(torch.as_tensor(np.stack([c["motion"] for c in clips]))).tolist()
    assert [list(s.values) for s in segments if s.kind == MOTION] == expected_motion
    # clip_spans cut media into whole [IMG] … [/MOV] clips
    assert v0["clip_spans"][0][0] == 0 and v0["clip_spans"][-1][1] == len(v0["media"])
    for s, e in v0["clip_spans"]:
        assert v0["media"][s] == vocab.img_start and v0["media"][e - 1] == vocab.mov_end

    # frames_media: 2 frames per clip, spread uniformly over the 16 frames: frames 2, 6 of each clip
    frames = vocab.parse(v0["frames_media"])
    assert [s.kind for s in frames] == [IMAGE] * 4
    expected = codes_of_images(visual, [clips[c]["frames"][f] for c in (0, 1) for f in (2, 6)])
    assert [list(s.values) for s in frames] == expected


def test_images_text_counts_and_skipped_videos(tokenized):
    from videolavit.data.text_tokenizer import load_text_tokenizer

    cfg, metrics, visual, _ = tokenized
    meta = read_token_meta(cfg.paths.tokens)
    vocab = vocab_from_meta(meta)
    tokenizer = load_text_tokenizer(f"{cfg.paths.tokens}/text_tokenizer", vocab.text_size)
    assert vocab.text_size % 64 == 0 and len(tokenizer) <= vocab.text_size < len(tokenizer) + 64
    assert meta["counts"] == {"train": 4, "val": 2, "test": 1}
    assert meta["skipped"] == {"rejected": 1, "no_clips": 1}
    assert metrics["videos_skipped_rejected"] == 1 and metrics["videos_skipped_no_clips"] == 1

    image = next(iter_token_records(cfg.paths.tokens, "val", kind="image"))
    assert image["clip_spans"] == [] and "frames_media" not in image
    (segment,) = vocab.parse(image["media"])
    assert segment.kind == IMAGE and 1 <= len(segment.values) <= 16
    video = next(iter_token_records(cfg.paths.tokens, "val", kind="video"))
    assert tokenizer.decode(video["caption"]) == video["caption_text"] == "a red square moves left in w0"
    assert video["caption"][0] != tokenizer.bos_token_id  # no BOS/EOS: the LM stages add them
    qa = video["qa"][0]
    assert tokenizer.decode(qa["answer"]) == qa["answer_text"] == "left" and qa["type"] == "motion"
    assert all(t < vocab.text_size for t in video["caption"])


def test_token_counts_and_savings_follow_the_stated_formulas(tokenized):
    cfg, metrics, visual, _ = tokenized
    vocab = vocab_from_meta(read_token_meta(cfg.paths.tokens))
    clips = [s for split in ("train", "val", "test") for r in iter_token_records(cfg.paths.tokens, split, kind="video")
             for s in vocab.parse(r["media"]) if s.kind == IMAGE]
    assert metrics["clips"] == len(clips) == 5
    assert metrics["tokens_per_clip"] == pytest.approx(np.mean([len(s.values) + MOTION_TOKENS + 4 for s in clips]))
    # the baseline split (val) has one clip: its 8 frames tokenized one by one, + [IMG] [/IMG] each
    w0 = clip_arrays("w0", 0)
    per_frame = sum(len(c) + 2 for c in codes_of_images(visual, list(w0["frames"])))
    clip = len(codes_of_images(visual, [w0["keyframe"]])[0]) + MOTION_TOKENS + 4
    assert metrics["baseline_clips"] == 1
    assert metrics["tokens_per_clip_per_frame_baseline"] == pytest.approx(per_frame)
    assert metrics["token_saving"] == pytest.approx(1 - clip / per_frame)
    # the paper profile's counts: ρ·256 = 85.3 visual, 135 motion, 24 frames
    visual_paper = 256 / 3
    assert metrics["paper/motion_tokens_per_clip"] == 135
    assert metrics["paper/visual_tokens_per_image"] == pytest.approx(visual_paper)
    assert metrics["token_saving_paper_counts"] == pytest.approx(1 - (visual_paper + 139) / (24 * (visual_paper + 2)))
    assert metrics["token_saving_paper_counts"] >= 0.85
    with open(f"{cfg.paths.metrics}/tokenize.json") as f:
        written = json.load(f)
    assert written["token_saving"] == pytest.approx(metrics["token_saving"])


@pytest.mark.parametrize("video_input", ["media", "frames_media"])
def test_the_pretrain_data_reads_the_shards(tokenized, video_input):
    from videolavit.config import apply_overrides
    from videolavit.data.lm_data import PretrainDataModule
    from videolavit.data.text_tokenizer import load_text_tokenizer

    cfg, _, _, _ = tokenized
    cfg = apply_overrides(cfg, [f"lm.video_input={video_input}"])
    vocab = vocab_from_meta(read_token_meta(cfg.paths.tokens))
    tokenizer = load_text_tokenizer(f"{cfg.paths.tokens}/text_tokenizer", vocab.text_size)
    batch = next(iter(PretrainDataModule(cfg, tokenizer, batch_size=2).val_dataloader()))
    ids = batch["input_ids"]
    assert ids.max() < vocab.size
    assert (ids == vocab.img_start).any()
    assert (ids == vocab.mov_start).any() == (video_input == "media")


def test_a_local_pretrained_text_tokenizer_is_copied_and_old_shards_are_replaced(tiny_cfg_factory, tmp_path):
    from videolavit.data.text_tokenizer import load_text_tokenizer, train_bpe_tokenizer
    from videolavit.stages import tokenize

    write_corpus(tmp_path)
    write_tokenizers(tmp_path / "models")
    pretrained = train_bpe_tokenizer(["some other text entirely, with words"] * 3, 300, tmp_path / "pretrained", 1)
    cfg = tiny_cfg_factory("tracking.enabled=false", f"tokenize.text_tokenizer_path={tmp_path / 'pretrained'}")
    tokenize.run(apply(cfg, "tokenize.records_per_shard=1"))
    assert len(token_shard_paths(cfg.paths.tokens, "train")) == 4
    tokenize.run(cfg)
    assert len(token_shard_paths(cfg.paths.tokens, "train")) == 1  # the earlier run's extra shards are gone
    meta = read_token_meta(cfg.paths.tokens)
    assert meta["text_tokenizer"]["source"] == str(tmp_path / "pretrained")
    copied = load_text_tokenizer(f"{cfg.paths.tokens}/text_tokenizer")
    assert len(copied) == len(pretrained) and meta["vocab"]["text_size"] == 320  # 300 ids rounded up to 64
    record = next(iter_token_records(cfg.paths.tokens, "train"))
    assert record["caption"] == pretrained(record["caption_text"], add_special_tokens=False)["input_ids"]


def apply(cfg, *overrides):
    from videolavit.config import apply_overrides

    return apply_overrides(cfg, list(overrides))


def test_missing_tokenizers_name_the_command_that_makes_them(tiny_cfg_factory, tmp_path):
    from videolavit.stages import tokenize

    write_corpus(tmp_path)
    cfg = tiny_cfg_factory("tracking.enabled=false")
    with pytest.raises(MissingArtifactError, match="videolavit visual_tokenizer"):
        tokenize.run(cfg)
    write_tokenizers(tmp_path / "models")
    import shutil

    shutil.rmtree(tmp_path / "models" / "motion_tokenizer")
    with pytest.raises(MissingArtifactError, match="videolavit motion_tokenizer"):
        tokenize.run(cfg)


def test_uniform_frame_positions():
    from videolavit.inference.media_tokens import frame_positions

    assert frame_positions(3, 24, None) == [(0, 6), (0, 18), (1, 6), (1, 18), (2, 6), (2, 18)]  # 2 per clip
    assert frame_positions(1, 24, 4) == [(0, 3), (0, 9), (0, 15), (0, 21)]
    assert len(frame_positions(2, 24, 16)) == 16 and frame_positions(2, 24, 16)[-1] == (1, 22)
    assert len(frame_positions(1, 1, 16)) == 1  # never more frames than the video has
