"""`videolavit generate`: text → video, image → video, long video and QA on tiny untrained models saved in tmp_path."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import torch

from videolavit.errors import ConfigError, MissingArtifactError
from videolavit.vocab import Vocab

FRAME_SIZE = (8, 8)  # tiny detokenizers render 8×8 frames here: the paths are the real ones, only cheaper
FAST = ("generate.keyframe_steps=2", "generate.video_steps=1", "lm.generate.image_tokens=[1,8]")


def make_text_tokenizer(out_dir: Path, texts=()):
    from videolavit.data.text_tokenizer import train_bpe_tokenizer

    base = ["a red circle moves to the left", "a blue square moves up over a striped background", "What color is it?"]
    return train_bpe_tokenizer([*base, *texts], 300, out_dir, min_frequency=1)


def build_tiny_models(cfg, vocab: Vocab, tokenizer_dir: Path, frame_size=FRAME_SIZE) -> dict:
    """Untrained models of every stage, built from the tiny config and saved where the stages save them."""
    from videolavit.config import section_kwargs
    from videolavit.models.keyframe_detokenizer import KeyframeDetokenizer
    from videolavit.models.lm import build_lm
    from videolavit.models.lm_checkpoint import save_lm_checkpoint
    from videolavit.models.motion_tokenizer import MotionTokenizer
    from videolavit.data.text_tokenizer import load_text_tokenizer
    from videolavit.models.video_detokenizer import VideoDetokenizer
    from videolavit.models.visual_tokenizer import VisualTokenizer

    torch.manual_seed(0)
    root = Path(cfg.paths.models)
    motion = MotionTokenizer(**section_kwargs(cfg.motion_tokenizer.model))
    motion.save_pretrained(root / "motion_tokenizer")
    visual_kwargs = section_kwargs(cfg.visual_tokenizer.model)
    visual_kwargs["image_size"] = visual_kwargs["image_size"] or int(cfg.video.keyframe_size)
    visual = VisualTokenizer(**visual_kwargs)
    visual.save_pretrained(root / "visual_tokenizer")
    assert (vocab.visual_codes, vocab.motion_codes) == (visual.codebook_size, motion.codebook_size)
    tokenizer = load_text_tokenizer(tokenizer_dir, vocab.text_size)
    lm = build_lm(vocab, config=cfg.lm.model.config)
    for stage in ("lm_pretrain", "lm_instruct"):
        save_lm_checkpoint(lm, tokenizer, vocab, root / stage, motion_tokens_per_clip=motion.tokens_per_clip, stage=stage)
    KeyframeDetokenizer(cond_dim=visual.target_dim, image_size=frame_size).save_pretrained(root / "detokenizer" / "keyframe")
    VideoDetokenizer(frames=motion.frames, height=frame_size[0], width=frame_size[1],
                     motion_encoder={"grid": [4, 4], "depth": 1}).save_pretrained(root / "detokenizer" / "video")
    return {"motion_tokens": motion.tokens_per_clip, "frames": motion.frames}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """A tiny config whose models directory holds untrained models of every stage (built once for this module)."""
    from videolavit.config import load_config

    root = tmp_path_factory.mktemp("zoo")
    paths = [f"paths.{k}={root / k}" for k in ("corpus", "clips", "tokens", "models", "metrics", "reports", "runs")]
    cfg = load_config(profile="tiny", overrides=[*paths, "tracking.enabled=false", *FAST], params_file=None)
    tokenizer = make_text_tokenizer(root / "text_tokenizer")
    vocab = Vocab(text_size=len(tokenizer), visual_codes=int(cfg.visual_tokenizer.model.codebook_size),
                  motion_codes=int(cfg.motion_tokenizer.model.codebook_size))
    info = build_tiny_models(cfg, vocab, root / "text_tokenizer")
    return cfg, vocab, info, root


@pytest.fixture(scope="module")
def pipe(zoo):
    from videolavit.inference.pipeline import VideoLaVITPipeline

    return VideoLaVITPipeline.from_config(zoo[0])


def _decoded_frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def test_text_to_video_motion_span_is_exact_and_files_are_readable(zoo, pipe, tmp_path):
    from videolavit.inference.media import save_video
    from videolavit.vocab import IMAGE, MOTION, TEXT

    cfg, vocab, info, _ = zoo
    video = pipe.text_to_video("a red circle moves to the left")
    segments = vocab.parse(video.ids)
    assert [s.kind for s in segments] == [TEXT, IMAGE, MOTION]
    assert len(segments[2].values) == info["motion_tokens"] == len(video.motion_codes[0])
    assert 1 <= len(segments[1].values) <= 8  # lm.generate.image_tokens=[1, 8]
    assert video.frames.shape == (info["frames"], *FRAME_SIZE, 3) and video.frames.dtype == np.uint8
    assert video.motion.shape[:3] == (1, 2, info["frames"])

    written = save_video(video, tmp_path / "clip.mp4")
    assert [p.name for p in written] == ["clip.mp4", "clip.gif", "clip.preview.gif", "clip.strip.png"]
    assert len(_decoded_frames(written[0])) == info["frames"]
    assert len(_decoded_frames(written[1])) == info["frames"]  # PyAV reads the GIF too
    assert _decoded_frames(written[1])[0].shape == (*FRAME_SIZE, 3)


def test_long_video_conditions_each_clip_on_the_whole_history(pipe, zoo):
    from videolavit.vocab import IMAGE, MOTION

    _, vocab, info, _ = zoo
    video = pipe.text_to_video("a blue square moves up", clips=2)
    kinds = [s.kind for s in vocab.parse(video.ids)]
    assert kinds[1:] == [IMAGE, MOTION, IMAGE, MOTION]
    assert all(len(m) == info["motion_tokens"] for m in video.motion_codes)
    assert len(video.frames) == 2 * info["frames"] - 1  # the seam frame is not repeated
    assert len(video.keyframes) == 2


def test_image_to_video_uses_the_image_as_first_keyframe_and_its_tokens(pipe, zoo):
    _, vocab, info, _ = zoo
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    video = pipe.image_to_video(image, "it moves", clips=1)
    assert video.visual_codes[0] == pipe.tokenize_image(image)
    assert len(video.motion_codes[0]) == info["motion_tokens"]
    from videolavit.data.pixels import to_uint8, to_unit

    expected = to_uint8(to_unit(image, FRAME_SIZE, "cpu")[0].permute(1, 2, 0))
    assert np.array_equal(video.keyframes[0], expected)


def test_image_to_video_frame_0_is_the_input_image(pipe):
    """The input image (at the video's frame size) is frame 0 exactly, not the detokenizer's redraw of it."""
    from videolavit.data.pixels import to_uint8, to_unit

    vd = pipe.m.video_detokenizer
    size = (vd.config["height"], vd.config["width"])
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)  # at the frame size: no resize in the way
    video = pipe.image_to_video(image, "it moves", clips=1)
    err = np.mean((video.frames[0].astype(np.float64) - image.astype(np.float64)) ** 2)
    psnr = 10 * np.log10(255.0**2 / max(err, 1e-10))
    assert psnr >= 30.0, f"frame 0 is {psnr:.1f} dB from the input image"
    assert np.array_equal(video.frames[0], to_uint8(to_unit(image, size, "cpu")[0].permute(1, 2, 0)))


def test_cli_generate_writes_mp4_and_gif(zoo, tmp_path, monkeypatch):
    from videolavit.cli import main

    cfg, _, info, root = zoo
    monkeypatch.chdir(tmp_path)  # no params.yaml here
    out = tmp_path / "clip.mp4"
    paths = [f"paths.models={cfg.paths.models}", f"paths.runs={tmp_path / 'runs'}"]
    # overrides before --out: argparse takes the positionals (prompt, key=value ...) as one run
    assert main(["generate", "a red circle moves to the left", *paths, *FAST, "--out", str(out)]) == 0
    assert out.is_file() and out.with_suffix(".gif").is_file()
    assert len(_decoded_frames(out)) == info["frames"]
    from PIL import Image

    # previews a person can look at: nearest-neighbour upscaled so the short side is >= 128 px
    with Image.open(tmp_path / "clip.preview.gif") as gif:
        assert min(gif.size) >= 128 and gif.n_frames == info["frames"]
    with Image.open(tmp_path / "clip.strip.png") as strip:
        assert strip.size[1] >= 128 and strip.size[0] > strip.size[1]


def test_qa_answers_about_an_image_file(pipe, zoo, tmp_path):
    from PIL import Image

    from videolavit.config import apply_overrides
    from videolavit.cli import generate_cli

    cfg = zoo[0]
    image = tmp_path / "frame.png"
    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(image)
    answer = generate_cli(apply_overrides(cfg, ["generate.task=qa", f"generate.media={image}"]), "What color is it?")
    # the command answers with the LM seeing the file's own tokens: the same greedy answer as the pipeline's on them
    assert isinstance(answer, str) and answer == pipe.answer(["What color is it?"], [pipe.media_ids(image)])[0]
    with pytest.raises(ConfigError, match="generate.media"):
        generate_cli(apply_overrides(cfg, ["generate.task=qa"]), "What color is it?")


def test_video_qa_decomposes_the_file_into_clip_tokens(pipe, zoo, tmp_path):
    from videolavit.video.io import write_video
    from videolavit.vocab import IMAGE, MOTION

    _, vocab, info, _ = zoo
    frames = np.zeros((60, 64, 96, 3), dtype=np.uint8)  # 5 s at 12 fps: one 24-frame clip at 6 fps
    for t in range(60):
        frames[t, 20:40, 10 + t // 2 : 30 + t // 2] = (220, 40, 40)  # a red square moving right
    path = write_video(tmp_path / "square.mp4", frames, fps=12)
    ids = pipe.media_ids(path)
    segments = vocab.parse(ids)
    assert [s.kind for s in segments] == [IMAGE, MOTION]
    assert len(segments[1].values) == info["motion_tokens"]
    from videolavit.inference.qa import answer_questions

    # one prompt at a time (KV cache) and left-padded batches decode the same greedy answers about the same clip
    questions = ["Which direction does the square move?", "What color is it?"]
    single = pipe.answer(questions, [ids, ids])
    template = pipe.m.lm_info.get("template") or str(pipe.cfg.lm.template)
    batched = answer_questions(pipe.m.lm, pipe.m.text_tokenizer, vocab, [ids, ids], questions, template=template,
                               max_new_tokens=int(pipe.cfg.lm.generate.max_answer_tokens), batch_size=2)
    assert all(isinstance(a, str) for a in single) and single == batched


def test_missing_models_name_the_stage_that_makes_them(zoo, tmp_path):
    from videolavit.config import apply_overrides
    from videolavit.cli import generate_cli

    cfg = zoo[0]
    empty = apply_overrides(cfg, [f"paths.models={tmp_path / 'nothing'}"])
    with pytest.raises(MissingArtifactError, match="videolavit pretrain"):
        generate_cli(empty, "a red circle")
    no_detokenizer = apply_overrides(cfg, [f"generate.detokenizer_path={tmp_path / 'nowhere'}"])
    with pytest.raises(MissingArtifactError, match="videolavit detokenizer"):
        generate_cli(no_detokenizer, "a red circle")
    with pytest.raises(MissingArtifactError, match="videolavit instruct"):
        generate_cli(apply_overrides(empty, ["generate.task=qa", "generate.media=x.png"]), "what?")


def test_bad_requests_are_clear_errors(zoo, pipe, tmp_path):
    from videolavit.config import apply_overrides
    from videolavit.inference.media import save_video

    cfg = zoo[0]
    with pytest.raises(ConfigError, match="generate.task"):
        from videolavit.cli import generate_cli

        generate_cli(apply_overrides(cfg, ["generate.task=dance"]), "a red circle")
    with pytest.raises(ConfigError, match="clips"):
        pipe.sample_tokens(pipe.text_prompt("x"), clips=0)
    with pytest.raises(ValueError, match="uint8 RGB"):
        pipe.tokenize_image(np.zeros((8, 8), dtype=np.float32))
    video = pipe.text_to_video("a red circle")
    with pytest.raises(ConfigError, match=".avi"):
        save_video(video, tmp_path / "clip.avi")
    assert [p.name for p in save_video(video, tmp_path / "only.gif", previews=False)] == ["only.gif"]
    assert not list(tmp_path.glob("clip.*"))  # a bad name writes nothing


def test_previews_are_nearest_neighbour_blocks():
    from videolavit.inference.media import frame_strip, preview_scale, upscale

    frames = np.random.default_rng(0).integers(0, 256, (17, 16, 24, 3), dtype=np.uint8)
    assert preview_scale(frames) == 8
    big = upscale(frames, 8)
    assert big.shape == (17, 128, 192, 3) and np.array_equal(big[:, ::8, ::8], frames)
    strip = frame_strip(frames, 8, max_frames=9)
    assert strip.shape == (128, 9 * 192 + 8 * 2, 3)
    assert np.array_equal(strip[:, :192], big[0]) and np.array_equal(strip[:, -192:], big[-1])


def test_odd_frame_sizes_are_padded_for_h264(tmp_path):
    from videolavit.inference.media import save_video
    from videolavit.inference.pipeline import GeneratedVideo

    frames = np.full((3, 7, 9, 3), 200, dtype=np.uint8)
    video = GeneratedVideo(frames, [], [], [], [], np.zeros((1, 2, 3, 1, 1), np.float32), fps=6.0)
    mp4, gif, _, _ = save_video(video, tmp_path / "odd.mp4")
    decoded = _decoded_frames(mp4)
    assert len(decoded) == 3 and decoded[0].shape == (8, 10, 3)
    assert _decoded_frames(gif)[0].shape == (7, 9, 3)
