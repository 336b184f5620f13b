"""GPU hygiene checked on CPU (issue 18 item 8): TF32 and pinned loader memory follow the accelerator, and a training
step of our code never reads a tensor back to the host (.item(), float(t), int(t), bool(t), .tolist())."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from videolavit.config import load_config, section_kwargs

PACKAGE = str(Path(__file__).resolve().parents[1] / "src" / "videolavit")
READBACKS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__")


@contextmanager
def no_host_readback():
    """Any tensor read-back called from a videolavit source line raises (library code is let through)."""
    originals = {name: getattr(torch.Tensor, name) for name in READBACKS}

    def guard(name):
        def method(self, *args, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if caller.startswith(PACKAGE):
                raise AssertionError(f"host read-back Tensor.{name} at {caller}:{sys._getframe(1).f_lineno}")
            return originals[name](self, *args, **kwargs)
        return method

    try:
        for name in READBACKS:
            setattr(torch.Tensor, name, guard(name))
        yield
    finally:
        for name, fn in originals.items():
            setattr(torch.Tensor, name, fn)


def test_the_guard_catches_our_float_of_a_loss():
    """The guard itself: the old ``self.last_train_loss = float(loss.detach())`` would have been caught."""
    from videolavit.training import trainer

    loss = torch.tensor(1.5)
    with no_host_readback(), pytest.raises(AssertionError, match="__float__"):
        exec(compile("float(loss)", trainer.__file__, "exec"), {"loss": loss})  # a line 'in' videolavit
    assert float(loss) == 1.5


def _tiny():
    return load_config(profile="tiny", params_file=None)


def _second_step_reads_nothing_back(module, batch) -> None:
    """The first step may read back once (label ids checked, a codebook's k-means flag); the second must not, and the
    loss it records for the logs equals the loss it returned."""
    module.training_step(batch, 0)
    with no_host_readback():
        loss = module.training_step(batch, 1)
    assert module.last_train_loss == pytest.approx(float(loss))


def test_lm_training_step_makes_no_host_readback():
    from transformers import LlamaConfig, LlamaForCausalLM

    from videolavit.training.lm import LanguageModelModule
    from videolavit.vocab import Vocab

    vocab = Vocab(text_size=16, visual_codes=16, motion_codes=16)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=vocab.size, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32))
    module = LanguageModelModule(model, vocab, {"lr": 1e-3, "weight_decay": 0.1, "betas": [0.9, 0.95], "eps": 1e-8,
                                                "warmup_steps": 1}, 10)
    ids = torch.randint(0, vocab.size, (2, 12))
    _second_step_reads_nothing_back(module, {"input_ids": ids, "labels": ids})  # step 1 checks the label ids


def test_motion_tokenizer_training_step_makes_no_host_readback():
    from videolavit.training.motion_tokenizer import MotionTokenizerModule

    cfg = _tiny()
    kwargs = section_kwargs(cfg.motion_tokenizer.model)
    module = MotionTokenizerModule(kwargs, section_kwargs(cfg.motion_tokenizer.optim), 10, cfg.video)
    motion = torch.randn(2, 2, kwargs["frames"], kwargs["height"], kwargs["width"])
    _second_step_reads_nothing_back(module, {"key": ["a", "b"], "motion": motion})  # step 1: k-means init


def test_visual_tokenizer_training_step_makes_no_host_readback():
    from videolavit.training.visual_tokenizer import VisualTokenizerModule

    cfg = _tiny()
    kwargs = section_kwargs(cfg.visual_tokenizer.model)
    kwargs["image_size"] = int(cfg.video.keyframe_size)
    module = VisualTokenizerModule(kwargs, section_kwargs(cfg.visual_tokenizer.optim), 10)
    size = kwargs["image_size"]
    images = torch.randint(0, 256, (2, size, size, 3), dtype=torch.uint8)
    _second_step_reads_nothing_back(module, {"key": ["a", "b"], "image": images})  # step 1: k-means init


def test_detokenizer_training_step_makes_no_host_readback():
    """Both detokenizers, condition from the (random) tiny visual tokenizer; keyframes normalized before transfer."""
    from videolavit.models.visual_tokenizer import VisualTokenizer
    from videolavit.stages.detokenizer import keyframe_kwargs, video_kwargs
    from videolavit.training.detokenizer import DetokenizerModule, FrozenTokenizers

    cfg = _tiny()
    vt_kwargs = section_kwargs(cfg.visual_tokenizer.model)
    vt_kwargs["image_size"] = int(cfg.video.keyframe_size)
    tokenizers = FrozenTokenizers(VisualTokenizer(**vt_kwargs), None)
    module = DetokenizerModule(keyframe_kwargs(cfg, tokenizers.visual.target_dim), video_kwargs(cfg), {"lr": 1e-3}, 2)
    module.attach(tokenizers)
    T, S = int(cfg.video.clip_frames), int(cfg.video.keyframe_size)
    H, W = int(cfg.video.frames_height), int(cfg.video.frames_width)
    h, w = int(cfg.video.motion_height), int(cfg.video.motion_width)
    batch = {"key": ["a", "b"], "keyframe": torch.randint(0, 256, (2, S, S, 3), dtype=torch.uint8),
             "frames": torch.randint(0, 256, (2, T, H, W, 3), dtype=torch.uint8), "motion": torch.randn(2, 2, T, h, w)}
    batch = module.on_after_batch_transfer(module.on_before_batch_transfer(batch, 0), 0)
    assert batch["keyframe"].is_floating_point()  # the tokenizer's input, made on the host
    with no_host_readback():
        loss = module.training_step(batch, 0)
    assert set(module.last_losses) == {"train/loss", "train/keyframe_loss", "train/video_loss"}
    assert module.last_losses["train/loss"] == pytest.approx(float(loss))


def test_padded_keyframe_condition_equals_the_per_image_one():
    """The detokenizer's condition made padded on the device equals decode_features(encode(x)) (per-image lists)."""
    from videolavit.models.visual_tokenizer import VisualTokenizer

    cfg = _tiny()
    kwargs = section_kwargs(cfg.visual_tokenizer.model)
    kwargs["image_size"] = int(cfg.video.keyframe_size)
    torch.manual_seed(0)
    vt = VisualTokenizer(**kwargs).eval()
    images = vt.preprocess(torch.randint(0, 256, (3, kwargs["image_size"], kwargs["image_size"], 3), dtype=torch.uint8))
    vt.quantizer.train()(torch.randn(3, 8, kwargs["code_dim"]))  # k-means init, so codes differ between patches
    vt.quantizer.eval()
    torch.testing.assert_close(vt.own_code_features(images), vt.decode_features(vt.encode(images)), atol=1e-5, rtol=1e-5)


def test_tf32_follows_the_accelerator(monkeypatch):
    from videolavit.training.trainer import enable_tf32

    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision())
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
        assert enable_tf32("cpu") is False and torch.get_float32_matmul_precision() == "highest"
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        assert enable_tf32("auto") is False and not torch.backends.cuda.matmul.allow_tf32
        assert enable_tf32("gpu") is True
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before[:2]
        torch.set_float32_matmul_precision(before[2])


@pytest.mark.parametrize("accelerator,pinned", [("cpu", False), ("gpu", True), ("cuda", True)])
def test_loaders_pin_memory_when_the_accelerator_is_cuda(accelerator, pinned, monkeypatch):
    from videolavit.data.datamodules import ClipDataModule

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = load_config(profile="tiny", params_file=None, overrides=[f"compute.accelerator={accelerator}"])
    dm = ClipDataModule(cfg, fields=("motion",), batch_size=2, in_memory=True)
    dm._memory["val"] = [{"key": "a", "motion": torch.zeros(2, 3, 4, 4)}]
    assert dm.pin_memory is pinned and dm.val_dataloader().pin_memory is pinned


def test_the_codebook_flag_is_not_read_back_after_initialisation():
    """vector-quantize-pytorch checks ``if self.initted`` on every forward (a GPU read-back per call, in training and
    in tokenize's encode); once initialised, the quantizer skips that check."""
    from videolavit.models.quantizer import VectorQuantizer

    calls = []
    original = torch.Tensor.__bool__

    def recording(self):
        frame = sys._getframe(1)
        calls.append((Path(frame.f_code.co_filename).name, frame.f_code.co_name))
        return original(self)

    vq = VectorQuantizer(8, 16, kmeans_init=True).train()
    vq(torch.randn(2, 20, 8))  # k-means on the first batch
    torch.Tensor.__bool__ = recording
    try:
        vq(torch.randn(2, 20, 8))
        vq.encode(torch.randn(2, 20, 8))
    finally:
        torch.Tensor.__bool__ = original
    assert ("vector_quantize_pytorch.py", "init_embed_") not in calls
