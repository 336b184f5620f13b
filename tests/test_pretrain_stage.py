"""The pretrain stage end to end on toy token shards: metrics, a standalone saved LM, resume, scale-out config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fixtures.toy_tokens import write_toy_token_corpus
from videolavit.errors import ConfigError, MissingArtifactError

SMALL_LM = [
    "lm.model.config.hidden_size=32", "lm.model.config.num_hidden_layers=1", "lm.model.config.num_attention_heads=2",
    "lm.model.config.num_key_value_heads=2", "lm.model.config.intermediate_size=64",
    "lm.model.config.max_position_embeddings=256", "lm.seq_len=192", "compute.threads=1", "tracking.enabled=false",
]
FAST_PRETRAIN = [
    "pretrain.train.max_steps=4", "pretrain.train.batch_size=2", "pretrain.train.val_every_n_steps=2",
    "pretrain.train.checkpoint_every_n_steps=2", "pretrain.optim.warmup_steps=1",
]


def make_toy_tokens(cfg) -> None:
    write_toy_token_corpus(cfg.paths.corpus, cfg.paths.tokens, train_videos=8, val_videos=3, test_videos=3, images=4,
                           visual_codes=64, motion_codes=48, keyframe_tokens=8, motion_tokens=6, text_vocab_size=300)


@pytest.fixture
def pretrain_cfg(tiny_cfg_factory):
    def make(*overrides):
        cfg = tiny_cfg_factory(*SMALL_LM, *FAST_PRETRAIN, *overrides)
        make_toy_tokens(cfg)
        return cfg

    return make


def test_pretrain_smoke_writes_metrics_and_a_standalone_lm(pretrain_cfg):
    from videolavit.models.lm_checkpoint import load_lm_checkpoint
    from videolavit.stages import pretrain

    cfg = pretrain_cfg()
    metrics = pretrain.run(cfg)
    for key in ("val/loss", "val/loss_text", "val/loss_visual", "val/loss_motion", "train/tokens_per_second"):
        assert metrics[key] > 0, key
    assert metrics["global_step"] == 4
    written = json.loads((Path(cfg.paths.metrics) / "pretrain.json").read_text())
    assert written["val/loss_motion"] == pytest.approx(metrics["val/loss_motion"])
    # token-weighted: the total lies between the modality losses
    parts = [metrics[f"val/loss_{m}"] for m in ("text", "visual", "motion")]
    assert min(parts) <= metrics["val/loss"] <= max(parts)

    model, tokenizer, vocab = load_lm_checkpoint(f"{cfg.paths.models}/lm_pretrain")
    assert model.get_input_embeddings().weight.shape[0] == vocab.size
    assert tokenizer.eos_token_id is not None
    assert json.loads((Path(cfg.paths.models) / "lm_pretrain" / "vocab.json").read_text())["motion_tokens_per_clip"] == 6


def test_pretrain_resume_auto_continues_the_step_count(pretrain_cfg, tiny_cfg_factory):
    from videolavit.stages import pretrain

    cfg = pretrain_cfg()
    pretrain.run(cfg)
    assert (Path(cfg.paths.runs) / "pretrain" / "checkpoints" / "last.ckpt").is_file()
    more = tiny_cfg_factory(*SMALL_LM, *FAST_PRETRAIN, "pretrain.train.max_steps=6", "pretrain.train.resume=auto")
    metrics = pretrain.run(more)
    assert metrics["global_step"] == 6


def test_pretrain_without_token_shards_names_the_missing_stage(tiny_cfg_factory):
    from videolavit.stages import pretrain

    with pytest.raises(MissingArtifactError, match="videolavit tokenize"):
        pretrain.run(tiny_cfg_factory(*SMALL_LM))


def test_seq_len_beyond_the_lm_positions_is_a_config_error(pretrain_cfg):
    from videolavit.stages import pretrain

    with pytest.raises(ConfigError, match="max_position_embeddings"):
        pretrain.run(pretrain_cfg("lm.seq_len=512"))


def test_embedding_and_head_get_lr_other_and_norms_no_decay():
    from videolavit.models.lm import build_lm
    from videolavit.training.lm import lm_optimizer
    from videolavit.vocab import Vocab

    model = build_lm(Vocab(40, 8, 8), {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32})
    optim = {"lr": 2e-5, "lr_other": 5e-5, "betas": [0.9, 0.95], "eps": 1e-6, "weight_decay": 0.1, "warmup_steps": 0}
    groups = lm_optimizer(model, optim, 10)["optimizer"].param_groups
    head = model.get_output_embeddings().weight
    by_param = {id(p): g for g in groups for p in g["params"]}
    assert by_param[id(head)]["lr"] == pytest.approx(5e-5)
    assert by_param[id(model.model.layers[0].mlp.up_proj.weight)]["lr"] == pytest.approx(2e-5)
    assert by_param[id(model.model.norm.weight)]["weight_decay"] == 0.0
    assert sum(p.numel() for g in groups for p in g["params"]) == sum(p.numel() for p in model.parameters())


def test_paper_profile_pretrain_is_table8_with_fsdp_over_llama_decoder_layers(tiny_cfg_factory):
    from lightning.pytorch.strategies import FSDPStrategy
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    from videolavit.models.lm import build_lm
    from videolavit.training.lm import architecture, build_strategy
    from videolavit.vocab import PAPER_VOCAB

    cfg = tiny_cfg_factory(profile="paper")
    p = cfg.pretrain
    assert (cfg.lm.seq_len, p.optim.lr, p.optim.lr_other, list(p.optim.betas)) == (2048, 2e-5, 5e-5, [0.9, 0.95])
    assert (p.optim.eps, p.optim.weight_decay, p.optim.warmup_steps, p.optim.grad_clip) == (1e-6, 0.1, 2000, 1.0)
    assert p.train.max_steps == 30000
    assert cfg.lm.model.noise_scale == 0.01  # mean-initialised new rows on top of a pretrained Llama
    assert p.train.global_batch == 2048 and p.train.batch_size == 4  # global batch [P T8]; accumulation from the launcher
    with torch.device("meta"):
        model = build_lm(PAPER_VOCAB, architecture(cfg))
    assert model.config.hidden_size == 4096 and model.config.num_hidden_layers == 32
    strategy = build_strategy(cfg, p.train, model)
    assert isinstance(strategy, FSDPStrategy)
    assert strategy.kwargs["auto_wrap_policy"]._module_classes == {LlamaDecoderLayer}
    assert strategy._activation_checkpointing_kwargs["auto_wrap_policy"]._module_classes == {LlamaDecoderLayer}
    assert strategy.sharding_strategy.name == "FULL_SHARD"
