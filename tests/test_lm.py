"""The unified LM: paper shapes on meta, tiny models from a config or a local checkpoint, per-modality loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from videolavit.errors import ConfigError, MissingArtifactError
from videolavit.models.blocks import count_parameters
from videolavit.models.lm import (
    IGNORE_INDEX,
    build_lm,
    loss_by_modality,
    modality_loss_sums,
    paper_llama2_7b_config,
)
from videolavit.vocab import PAPER_VOCAB, Vocab

VOCAB = Vocab(text_size=96, visual_codes=40, motion_codes=24)
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
        "max_position_embeddings": 256}
LLAMA2_7B_PARAMS = 6_738_415_616  # published count of Llama-2-7B with its 32000-id vocabulary


def _save_tiny_llama(path, text_size: int, tie: bool = False):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=text_size, tie_word_embeddings=tie, **TINY))
    model.save_pretrained(path)
    return model


def test_paper_lm_on_meta_has_the_unified_vocabulary_and_7b_shapes():
    with torch.device("meta"):
        model = build_lm(PAPER_VOCAB, paper_llama2_7b_config())
    assert model.get_input_embeddings().weight.shape == (49412, 4096)
    assert model.get_output_embeddings().weight.shape == (49412, 4096)
    assert model.config.vocab_size == 49412
    c = model.config
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size) == (4096, 32, 32, 11008)
    assert (c.max_position_embeddings, c.rms_norm_eps) == (4096, 1e-5)
    # 17412 new rows in the embedding and in the untied head: 6.88 B
    assert count_parameters(model) == LLAMA2_7B_PARAMS + 2 * (49412 - 32000) * 4096


def test_tiny_lm_from_config_predicts_over_the_whole_vocabulary():
    model = build_lm(VOCAB, TINY)
    assert model.get_input_embeddings().weight.shape[0] == VOCAB.size
    assert model.get_output_embeddings().weight.shape[0] == VOCAB.size
    ids = torch.tensor([VOCAB.clip_span(range(5), range(7)) + [3, 4]])  # [1, L]
    logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], VOCAB.size)


def test_pretrained_checkpoint_keeps_old_rows_and_appends_mean_rows(tmp_path):
    original = _save_tiny_llama(tmp_path / "llama", VOCAB.text_size)
    model = build_lm(VOCAB, pretrained_path=str(tmp_path / "llama"))
    n = VOCAB.text_size
    for new, old in ((model.get_input_embeddings().weight, original.get_input_embeddings().weight),
                     (model.get_output_embeddings().weight, original.get_output_embeddings().weight)):
        assert new.shape == (VOCAB.size, TINY["hidden_size"])
        assert torch.equal(new[:n], old)
        offset = (new[n:] - old.mean(0)).abs().max()
        assert offset < 0.1 * old.std(0).max()  # near the mean of the old rows
        assert torch.unique(new[n:], dim=0).shape[0] == VOCAB.size - n  # but not identical to each other
    # text in, text predictions out: unchanged by the resize
    ids = torch.tensor([[1, 5, 9, 40, 77]])
    with torch.no_grad():
        before = original(input_ids=ids).logits
        after = model(input_ids=ids).logits
    assert torch.allclose(after[..., :n], before, atol=1e-5)
    # a new id's logit is about the average old logit: it neither dominates nor vanishes
    assert (after[..., n:] - before.mean(-1, keepdim=True)).abs().max() < 0.1 * before.std()


def test_tied_checkpoint_stays_tied(tmp_path):
    _save_tiny_llama(tmp_path / "tied", VOCAB.text_size, tie=True)
    model = build_lm(VOCAB, pretrained_path=str(tmp_path / "tied"))
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert model.get_input_embeddings().weight.shape[0] == VOCAB.size


def test_dtype_is_applied(tmp_path):
    _save_tiny_llama(tmp_path / "llama", VOCAB.text_size)
    assert build_lm(VOCAB, pretrained_path=str(tmp_path / "llama"), dtype="bf16").dtype == torch.bfloat16
    assert build_lm(VOCAB, TINY, dtype=torch.bfloat16).get_input_embeddings().weight.dtype == torch.bfloat16


def test_missing_or_hub_paths_are_clear_errors(tmp_path):
    with pytest.raises(MissingArtifactError, match="not a local directory"):
        build_lm(VOCAB, pretrained_path=str(tmp_path / "nowhere"))
    with pytest.raises(MissingArtifactError, match="never downloaded"):
        build_lm(VOCAB, pretrained_path="meta-llama/Llama-2-7b-hf")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingArtifactError, match="config.json"):
        build_lm(VOCAB, pretrained_path=str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="pretrained_path"):
        build_lm(VOCAB)


def test_bad_configs_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="hidden_szie"):
        build_lm(VOCAB, {**TINY, "hidden_szie": 16})
    with pytest.raises(ConfigError, match="model_type"):
        build_lm(VOCAB, {**TINY, "model_type": "no_such_model"})
    with pytest.raises(ConfigError, match="dtype"):
        build_lm(VOCAB, TINY, dtype="float13")
    _save_tiny_llama(tmp_path / "big", VOCAB.size + 10)  # a checkpoint larger than the unified vocabulary
    with pytest.raises(ConfigError, match="text_size"):
        build_lm(VOCAB, pretrained_path=str(tmp_path / "big"))


def test_loss_by_modality_matches_per_group_cross_entropy():
    torch.manual_seed(0)
    v = VOCAB
    seq = [1, 2, 3, *v.image_span([0, 5, 9]), *v.motion_span([1, 2, 3, 4]), 7, 8]
    labels = torch.tensor([seq, seq])  # [2, L]
    labels[1, :4] = IGNORE_INDEX
    logits = torch.randn(2, len(seq), v.size)  # [2, L, V]
    losses = loss_by_modality(logits, labels, v)
    flat_logits, flat_targets = logits[:, :-1].reshape(-1, v.size), labels[:, 1:].reshape(-1)
    expected = {"text": [], "visual": [], "motion": []}
    for row, t in zip(flat_logits, flat_targets.tolist()):
        if t == IGNORE_INDEX:
            continue
        name = {"text": "text", "image": "visual", "motion": "motion"}[v.modality(t)]
        expected[name].append(F.cross_entropy(row[None], torch.tensor([t])))
    for name, values in expected.items():
        assert torch.allclose(losses[name], torch.stack(values).mean(), atol=1e-5), name
    sums = modality_loss_sums(logits, labels, v)
    assert sums["visual"][1] == 5 + 4  # [IMG] 3 codes [/IMG]; row 1 masks the first 4 labels, [IMG] included
    assert sums["motion"][1] == 2 * 6


def test_loss_by_modality_missing_modality_is_nan_and_bad_labels_raise():
    v = VOCAB
    labels = torch.tensor([[1, 2, 3, 4]])
    losses = loss_by_modality(torch.randn(1, 4, v.size), labels, v)
    assert math.isfinite(losses["text"].item()) and math.isnan(losses["motion"].item())
    with pytest.raises(ValueError, match="outside the vocabulary"):
        loss_by_modality(torch.randn(1, 4, v.size + 8), torch.tensor([[1, 2, v.size + 3, 4]]), v)
    with pytest.raises(ValueError, match="fewer than"):
        loss_by_modality(torch.randn(1, 4, v.text_size), labels, v)
