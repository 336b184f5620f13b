"""The LM's weight-decay groups survive FSDP: recorded by name before wrapping (training/lm.py lm_param_roles), looked
up by name after Lightning's FSDP (FSDP1, use_orig_params, 1-D shards) has wrapped the decoder blocks. Two CPU
processes over gloo; the old ``ndim >= 2`` test put every sharded matrix in the no-decay group."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=32)
    return LlamaForCausalLM(config)


def _counts(groups: list[dict]) -> dict[str, int]:
    return {
        "decay": sum(len(g["params"]) for g in groups if g["weight_decay"] > 0),
        "no_decay": sum(len(g["params"]) for g in groups if g["weight_decay"] == 0),
    }


def _worker(rank: int, port: int, out: dict) -> None:
    import torch.distributed as dist
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    from videolavit.training.lm import LanguageModelModule
    from videolavit.vocab import Vocab

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        torch.set_num_threads(1)
        model = _tiny_llama()
        vocab = Vocab(text_size=16, visual_codes=16, motion_codes=16)
        module = LanguageModelModule(model, vocab, {"lr": 1e-3, "weight_decay": 0.1, "betas": [0.9, 0.95], "eps": 1e-8,
                                                    "warmup_steps": 1, "lr_other": 1e-3}, 10)
        # As Lightning's FSDPStrategy does: the whole LightningModule, decoder blocks as wrap units, original params.
        wrapped = FSDP(module, auto_wrap_policy=ModuleWrapPolicy({LlamaDecoderLayer}), use_orig_params=True,
                       device_id=torch.device("cpu"))
        shapes = {p.ndim for p in module.model.parameters()}
        optimizer = module.configure_optimizers()["optimizer"]
        old_rule = sum(1 for p in module.model.parameters() if p.ndim >= 2)
        if rank == 0:
            out.update(groups=_counts(optimizer.param_groups), ndims=sorted(shapes), old_rule_decay=old_rule,
                       wrapped=type(wrapped).__name__)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_decay_groups_survive_the_fsdp_wrap():
    unwrapped = _tiny_llama()
    matrices = sum(1 for p in unwrapped.parameters() if p.ndim >= 2)
    vectors = sum(1 for p in unwrapped.parameters() if p.ndim < 2)
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(_free_port(), out), nprocs=2, join=True)
        out = dict(out)
    assert out["ndims"] == [1], out  # FSDP really flattened the parameters into 1-D shards
    assert out["old_rule_decay"] == 0  # what lm_optimizer's ndim test saw after the wrap: nothing decays
    assert out["groups"] == {"decay": matrices, "no_decay": vectors}


def test_roles_from_names_ignore_wrapper_prefixes():
    from videolavit.training.lm import clean_name, lm_groups, lm_param_roles

    model = _tiny_llama()
    roles = lm_param_roles(model)
    assert clean_name("model._fsdp_wrapped_module.layers.0._checkpoint_wrapped_module.mlp.up_proj.weight") == (
        "model.layers.0.mlp.up_proj.weight")
    assert roles["model.layers.0.mlp.up_proj.weight"] == (False, True)
    assert roles["model.norm.weight"] == (False, False)
    assert roles["lm_head.weight"] == (True, True)
    with torch.no_grad():  # flatten every parameter like a shard: the groups stay those of the names
        for p in model.parameters():
            p.data = p.data.reshape(-1)
    groups = lm_groups(model, roles)
    assert len(groups[(False, True)]) + len(groups[(True, True)]) == sum(1 for r in roles.values() if r[1])


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
