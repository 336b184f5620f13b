"""``motion_tokenizer.init_from``: the motion tokenizer stage fine-tunes from a saved (e.g. imported) tokenizer."""

from __future__ import annotations

import pytest
import torch

from test_motion_tokenizer_stage import SHORT, write_clips
from videolavit.config import section_kwargs
from videolavit.errors import ConfigError
from videolavit.models.motion_tokenizer import MotionTokenizer, load_weights_from


def _saved(cfg, path, **changes):
    torch.manual_seed(3)
    model = MotionTokenizer(**{**section_kwargs(cfg.motion_tokenizer.model), **changes})
    book = model.quantizer.vq._codebook  # a trained-looking codebook, marked initialised as import-official leaves it
    book.embed.copy_(torch.nn.functional.normalize(torch.randn(book.embed.shape), dim=-1))
    book.embed_avg.copy_(book.embed * 100.0)
    book.cluster_size.fill_(100.0)  # well above the tiny dead-code threshold: no restart in one step
    book.initted.fill_(True)
    model.save_pretrained(path)
    return model


def test_the_stage_starts_from_init_from(tiny_cfg_factory, tmp_path):
    from videolavit.stages.motion_tokenizer import fit

    write_clips(tmp_path / "clips", counts=(("train", 8), ("val", 4)))
    cfg = tiny_cfg_factory(*SHORT)
    start = _saved(cfg, tmp_path / "imported")
    steps = [s for s in SHORT if "max_steps" not in s]
    cfg = tiny_cfg_factory(*steps, "motion_tokenizer.train.max_steps=1", f"motion_tokenizer.init_from={tmp_path / 'imported'}")
    fit(cfg)
    tuned = MotionTokenizer.from_pretrained(tmp_path / "models" / "motion_tokenizer")
    before, after = start.state_dict(), tuned.state_dict()
    # one AdamW step moves each weight by about lr; a fresh initialisation would differ by the weights' own scale
    drift = max(float((after[k].float() - before[k].float()).abs().max()) for k in before if k.endswith("weight"))
    assert drift < 10 * float(cfg.motion_tokenizer.optim.lr)
    assert torch.nn.functional.cosine_similarity(tuned.quantizer.codebook, start.quantizer.codebook).min() > 0.9


def test_init_from_with_another_architecture_is_a_clear_error(tiny_cfg_factory, tmp_path):
    cfg = tiny_cfg_factory()
    _saved(cfg, tmp_path / "other", codebook_size=32)
    model = MotionTokenizer(**section_kwargs(cfg.motion_tokenizer.model))
    with pytest.raises(ConfigError, match=r"another architecture \(codebook_size: saved 32"):
        load_weights_from(model, tmp_path / "other")


def test_zero_steps_evaluates_the_imported_tokenizer_unchanged(tiny_cfg_factory, tmp_path):
    """``max_steps=0`` with ``init_from``: the README's way to measure the released tokenizer on one's own clips."""
    from videolavit.stages.motion_tokenizer import fit

    write_clips(tmp_path / "clips", counts=(("train", 8), ("val", 4)))
    cfg = tiny_cfg_factory()
    start = _saved(cfg, tmp_path / "imported")
    steps = [s for s in SHORT if "max_steps" not in s]
    cfg = tiny_cfg_factory(*steps, "motion_tokenizer.train.max_steps=0", f"motion_tokenizer.init_from={tmp_path / 'imported'}")
    metrics = fit(cfg)
    assert metrics["global_step"] == 0 and metrics["val/epe"] > 0
    saved = MotionTokenizer.from_pretrained(tmp_path / "models" / "motion_tokenizer").state_dict()
    assert all(torch.equal(saved[k], v) for k, v in start.state_dict().items())
