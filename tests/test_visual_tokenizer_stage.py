"""Stage visual_tokenizer: keyframes + corpus images → a trained, saved tokenizer; metrics; exact resume; sweep; data."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from videolavit.data.datamodules import ImageDataModule
from videolavit.data.images import read_image, resize_images
from videolavit.data.manifest import Sample, write_manifest
from videolavit.data.shards import ClipShardWriter
from videolavit.errors import ConfigError, MissingArtifactError
from videolavit.models.vision_encoder import preprocess_images
from videolavit.models.visual_tokenizer import VisualTokenizer

KEYFRAME = 32  # video.keyframe_size of these tests: 16 patches of 8 px
TRAIN_CLIPS, VAL_CLIPS, TRAIN_IMAGES, VAL_IMAGES = 6, 2, 3, 1
SMALL = [
    f"video.keyframe_size={KEYFRAME}",
    "visual_tokenizer.model.patch_size=8", "visual_tokenizer.model.width=32", "visual_tokenizer.model.depth=1",
    "visual_tokenizer.model.heads=2", "visual_tokenizer.model.merger_depth=1", "visual_tokenizer.model.decoder_depth=1",
    "visual_tokenizer.model.code_dim=8", "visual_tokenizer.model.codebook_size=32",
    "visual_tokenizer.optim.warmup_steps=1", "visual_tokenizer.train.batch_size=4",
    "visual_tokenizer.train.max_steps=4", "visual_tokenizer.train.val_every_n_steps=2",
    "visual_tokenizer.train.checkpoint_every_n_steps=2", "visual_tokenizer.sample_images=2",
]


def blocks(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """uint8 [h, w, 3]: a plain background with one colored rectangle."""
    image = np.broadcast_to(rng.integers(0, 256, 3, dtype=np.uint8), (h, w, 3)).copy()
    y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
    image[y : y + h // 2, x : x + w // 2] = rng.integers(0, 256, 3, dtype=np.uint8)
    return image


def write_inputs(root, train_clips=TRAIN_CLIPS, val_clips=VAL_CLIPS, train_images=TRAIN_IMAGES, val_images=VAL_IMAGES):
    """Clip shards (keyframes only matter here) and a corpus whose images are 40×24 PNGs (resized by the stage)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, clips, images in (("train", train_clips, train_images), ("val", val_clips, val_images), ("test", 1, 0)):
        with ClipShardWriter(root / "clips", split, clips_per_shard=4) as writer:
            for i in range(clips):
                writer.write({
                    "key": f"{split}_v{i}__c000", "keyframe": blocks(rng, KEYFRAME, KEYFRAME),
                    "motion": np.zeros((2, 4, 2, 3), np.float32),
                    "meta": {"video_id": f"{split}_v{i}", "clip": 0, "split": split, "caption": "", "start_time": 0.0},
                })
        samples = []
        for i in range(images):
            path = root / "corpus" / "images" / f"{split}_img{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(blocks(rng, 24, 40)).save(path)
            samples.append(Sample(f"{split}_img{i}", "image", f"images/{path.name}", caption="an image"))
        write_manifest(root / "corpus", split, samples)


@pytest.fixture
def vt_cfg(tiny_cfg_factory, tmp_path):
    write_inputs(tmp_path)
    return lambda *o: tiny_cfg_factory("tracking.enabled=false", *SMALL, *o)


def test_stage_trains_saves_and_reports_token_metrics(vt_cfg, tmp_path):
    from videolavit.stages import visual_tokenizer

    cfg = vt_cfg()
    metrics = visual_tokenizer.run(cfg)
    assert metrics["global_step"] == 4
    for key in ("val/rec_loss", "val/tokens_per_image", "val/tokens_per_image_std", "val/keep_fraction",
                "val/codebook_usage", "val/perplexity", "val/rec_loss_mean_color_baseline",
                "val/rec_loss_random_codes"):
        assert np.isfinite(metrics[key]), key
    assert 1 <= metrics["val/tokens_per_image"] <= 16 and metrics["val/tokens_per_image_std"] >= 0
    assert metrics["val/keep_fraction"] == pytest.approx(metrics["val/tokens_per_image"] / 16)
    assert 0 < metrics["val/codebook_usage"] <= 1
    # the baseline is each val image's mean colour: recompute it from the val images (at the target's resolution: each
    # patch pooled to pixel_target_size², which keeps the mean colour)
    val_pixels = preprocess_images(torch.from_numpy(ImageDataModule(cfg, KEYFRAME, 8).dataset("val").cache), KEYFRAME)
    model_cfg = cfg.visual_tokenizer.model
    val_pixels = F.avg_pool2d(val_pixels, model_cfg.patch_size // (model_cfg.pixel_target_size or model_cfg.patch_size))
    colour = val_pixels.mean((2, 3), keepdim=True)
    assert metrics["val/rec_loss_mean_color_baseline"] == pytest.approx(float((val_pixels - colour).pow(2).mean()), rel=1e-4)
    written = json.loads((tmp_path / "metrics" / "visual_tokenizer.json").read_text())
    assert written["val/tokens_per_image"] == pytest.approx(metrics["val/tokens_per_image"])

    model = VisualTokenizer.from_pretrained(tmp_path / "models" / "visual_tokenizer").eval()
    assert model.image_size == KEYFRAME and model.codebook_size == 32  # image_size null follows video.keyframe_size
    dm = ImageDataModule(cfg, KEYFRAME, 8)
    val = torch.from_numpy(dm.dataset("val").cache)  # [3, 32, 32, 3]: 2 keyframes + 1 resized image
    assert val.shape == (VAL_CLIPS + VAL_IMAGES, KEYFRAME, KEYFRAME, 3)
    codes = model.encode(model.preprocess(val))
    assert np.mean([len(c) for c in codes]) == pytest.approx(metrics["val/tokens_per_image"])  # the saved model's count
    assert all(int(c.max()) < 32 for c in codes)
    figures = sorted((tmp_path / "runs" / "visual_tokenizer" / "samples").glob("*.png"))
    assert [f.name for f in figures] == ["val_step000002.png", "val_step000004.png"]


class StopAt:
    """Ends training after ``step`` steps, as a killed job would (the checkpoint at that step is already written)."""

    def __new__(cls, step: int):
        import lightning as L

        class _Stop(L.Callback):
            def on_train_batch_end(self, trainer, *args):
                if trainer.global_step >= step:
                    trainer.should_stop = True

        return _Stop()


def test_resumed_run_ends_where_an_uninterrupted_run_ends(tiny_cfg_factory, tmp_path):
    from safetensors.torch import load_file

    from videolavit.stages import visual_tokenizer

    write_inputs(tmp_path)
    make = lambda name, *o: tiny_cfg_factory(  # noqa: E731
        "tracking.enabled=false", *SMALL, f"paths.models={tmp_path / name / 'models'}",
        f"paths.runs={tmp_path / name / 'runs'}", f"paths.metrics={tmp_path / name / 'metrics'}", *o,
    )
    whole = visual_tokenizer.run(make("whole"))
    first = visual_tokenizer.fit(make("parts"), callbacks=[StopAt(2)])
    assert first["global_step"] == 2
    resumed = visual_tokenizer.run(make("parts", "visual_tokenizer.train.resume=auto"))
    assert resumed["global_step"] == whole["global_step"] == 4
    a = load_file(str(tmp_path / "whole" / "models" / "visual_tokenizer" / "model.safetensors"))
    b = load_file(str(tmp_path / "parts" / "models" / "visual_tokenizer" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["val/rec_loss"] == pytest.approx(whole["val/rec_loss"])


def test_a_local_teacher_is_the_target_and_stays_out_of_checkpoints(vt_cfg, tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from videolavit.stages import visual_tokenizer

    torch.manual_seed(0)
    teacher = CLIPVisionConfig(image_size=KEYFRAME, patch_size=8, hidden_size=24, intermediate_size=48,
                               num_hidden_layers=1, num_attention_heads=2)
    CLIPVisionModel(teacher).save_pretrained(tmp_path / "teacher")
    cfg = vt_cfg(f"visual_tokenizer.model.teacher_path={tmp_path / 'teacher'}", "visual_tokenizer.train.max_steps=2")
    first = visual_tokenizer.run(cfg)
    assert first["parameters_teacher"] > 0 and 0 <= first["val/rec_loss"] <= 2  # cosine distance to teacher features
    ckpt = torch.load(tmp_path / "runs" / "visual_tokenizer" / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["state_dict"] and not any(k.startswith("model.teacher.") for k in ckpt["state_dict"])
    resumed = visual_tokenizer.run(vt_cfg(f"visual_tokenizer.model.teacher_path={tmp_path / 'teacher'}",
                                          "visual_tokenizer.train.max_steps=3", "visual_tokenizer.train.resume=auto"))
    assert resumed["global_step"] == 3
    model = VisualTokenizer.from_pretrained(tmp_path / "models" / "visual_tokenizer")
    assert model.teacher is not None and model.target_dim == 24


@pytest.mark.slow  # two MLflow-tracked trials: ~15 s of CPU
def test_two_trial_multi_objective_sweep(tiny_cfg_factory, tmp_path, monkeypatch):
    import videolavit.sweep as sweep

    spec = sweep.load_sweep_spec("visual_tokenizer")
    assert spec["objectives"] == ["val/rec_loss", "val/tokens_per_image"]
    assert {"visual_tokenizer.model.codebook_size", "visual_tokenizer.model.keep_ratio"} <= set(spec["space"])
    spec["fixed"] = {"visual_tokenizer.train.max_steps": 2, "visual_tokenizer.train.val_every_n_steps": 2}
    monkeypatch.setattr(sweep, "load_sweep_spec", lambda stage: spec)
    write_inputs(tmp_path)
    cfg = tiny_cfg_factory(*SMALL)
    out = tmp_path / "sweeps"
    summary = sweep.run_sweep(
        "visual_tokenizer", cfg, ["trials=2", "mode=multi", f"storage=sqlite:///{tmp_path / 'optuna.db'}", f"out={out}"]
    )
    assert summary["complete"] == 2 and summary["pareto_front"]
    for point in summary["pareto_front"]:
        assert set(point["values"]) == {"val/rec_loss", "val/tokens_per_image"}
        assert point["params"]["visual_tokenizer.model.codebook_size"] in (64, 128, 256, 512)
    assert (out / "visual_tokenizer-multi" / "pareto.png").is_file()
    trial = next((out / "visual_tokenizer-multi").glob("trial_*"))
    assert (trial / "models" / "visual_tokenizer" / "model.safetensors").is_file()


# ---- the data ------------------------------------------------------------------------------------------------------
def batches(loader, n: int) -> list[list[str]]:
    return [b["key"] for b in itertools.islice(loader, n)]


def test_training_stream_mixes_keyframes_and_images_seeded_and_resumable(vt_cfg):
    dm = ImageDataModule(vt_cfg(), KEYFRAME, batch_size=3)
    full = batches(dm.train_loader(), 6)
    flat = [k for b in full for k in b]
    n = TRAIN_CLIPS + TRAIN_IMAGES
    expected = {f"train_v{i}__c000" for i in range(TRAIN_CLIPS)} | {f"train_img{i}" for i in range(TRAIN_IMAGES)}
    assert set(flat[:n]) == set(flat[n : 2 * n]) == expected  # each epoch covers keyframes and images once
    assert flat[:n] != flat[n : 2 * n]  # and is reshuffled
    assert batches(dm.train_loader(start_batch=4), 2) == full[4:]
    assert batches(ImageDataModule(vt_cfg("seed=1"), KEYFRAME, batch_size=3).train_loader(), 6) != full
    batch = next(iter(dm.train_loader()))
    assert batch["image"].shape == (3, KEYFRAME, KEYFRAME, 3) and batch["image"].dtype == torch.uint8


def test_worker_processes_serve_the_same_batches(vt_cfg):
    single = ImageDataModule(vt_cfg(), KEYFRAME, batch_size=2, in_memory=False)
    workers = ImageDataModule(vt_cfg("compute.num_workers=2"), KEYFRAME, batch_size=2, in_memory=False)
    assert batches(workers.train_loader(start_batch=3), 5) == batches(single.train_loader(start_batch=3), 5)


def test_images_are_resized_like_the_tokenizer_preprocess(tmp_path):
    from PIL import Image

    image = blocks(np.random.default_rng(1), 24, 40)
    Image.fromarray(image).save(tmp_path / "a.png")
    loaded = read_image(tmp_path / "a.png", KEYFRAME)
    assert loaded.shape == (KEYFRAME, KEYFRAME, 3) and loaded.dtype == np.uint8
    assert np.array_equal(loaded, resize_images(image, KEYFRAME))
    direct = preprocess_images(image, KEYFRAME)
    # one uint8 rounding apart: ≤ 0.5/255 in [0, 1], ≤ 0.008 after the CLIP std
    assert torch.allclose(preprocess_images(loaded, KEYFRAME), direct, atol=0.01)
    assert resize_images(np.stack([image, image]), 16).shape == (2, 16, 16, 3)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    from videolavit.errors import CorpusError

    with pytest.raises(CorpusError, match="bad.png"):
        read_image(tmp_path / "bad.png", KEYFRAME)


def test_missing_inputs_and_bad_settings_are_clear_errors(tiny_cfg_factory, tmp_path):
    from videolavit.stages import visual_tokenizer

    write_manifest(tmp_path / "corpus", "train", [])
    with pytest.raises(MissingArtifactError, match="videolavit decompose"):
        ImageDataModule(tiny_cfg_factory(), KEYFRAME).dataset("train")
    with pytest.raises(MissingArtifactError, match="no 'train' keyframes or images"):
        ImageDataModule(tiny_cfg_factory(), KEYFRAME, keyframes=False).dataset("train")
    with pytest.raises(ConfigError, match="keyframes or images"):
        ImageDataModule(tiny_cfg_factory(), KEYFRAME, keyframes=False, images=False)
    write_inputs(tmp_path)
    cfg = tiny_cfg_factory("tracking.enabled=false", *SMALL, f"visual_tokenizer.model.teacher_path={tmp_path / 'no_teacher'}")
    with pytest.raises(MissingArtifactError, match="teacher_path"):
        visual_tokenizer.run(cfg)


def test_profiles_build_the_configured_tokenizer():
    from videolavit.config import load_config
    from videolavit.stages.visual_tokenizer import model_kwargs

    tiny = load_config(profile="tiny", params_file=None)
    kwargs = model_kwargs(tiny)
    assert kwargs["image_size"] == tiny.video.keyframe_size == 64
    assert VisualTokenizer(**kwargs).num_patches == 64
    paper = load_config(profile="paper", params_file=None)
    with torch.device("meta"):
        model = VisualTokenizer(**model_kwargs(paper))
    assert (model.image_size, model.patch_size, model.num_patches) == (224, 14, 256)
    assert tuple(model.quantizer.codebook.shape) == (16384, 32)
    assert model.keep_ratio == pytest.approx(1 / 3) and model.teacher is None
    assert (paper.visual_tokenizer.train.batch_size, paper.visual_tokenizer.train.global_batch) == (32, 2048)
