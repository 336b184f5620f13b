"""Stage ``pretrain``: generative pretraining of the unified LM on packed image-text, video-text and text-only
sequences, next-token loss over every token (paper §3.3, Eq. 5, Table 8).

``videolavit pretrain [key=value ...]`` → ``models/lm_pretrain/`` (transformers model + text tokenizer + vocab.json,
loadable alone with ``models.lm_checkpoint.load_lm_checkpoint``) and ``metrics/pretrain.json`` (``val/loss`` and its
text / visual / motion parts, token-weighted over the val split). ``pretrain.train.resume=auto`` continues a run.
Scale-out: ``compute.strategy`` (or ``pretrain.train.strategy``) ``ddp`` or ``fsdp`` (the wrap unit is the model's
decoder block, e.g. LlamaDecoderLayer); processes and nodes from the launcher, accumulation from
``pretrain.train.global_batch`` (training/topology.py); see README.
"""

from __future__ import annotations

from typing import Optional

from omegaconf import DictConfig

from videolavit.artifacts import artifact_dir
from videolavit.runner import seed_everything, stage_entry
from videolavit.training.lm import (
    build_stage_lm, evaluate_loss, fit_lm, full_state_dict, load_stage_tokenizer, print_summary, run_summary,
)
from videolavit.training.required import require_pretrained
from videolavit.training.topology import micro_batch

STAGE = "pretrain"


def fit(cfg: DictConfig, callbacks: Optional[list] = None) -> dict[str, float]:
    """Train (or resume), save ``models/lm_pretrain``, return the final metrics."""
    from videolavit.data.lm_data import PretrainDataModule
    from videolavit.data.tokens import read_token_meta, vocab_from_meta
    from videolavit.models.lm_checkpoint import save_lm_checkpoint

    require_pretrained(cfg, STAGE)  # before any artifact is read: a missing pretrained part names its key
    seed_everything(int(cfg.seed))
    meta = read_token_meta(cfg.paths.tokens)
    vocab = vocab_from_meta(meta)
    tokenizer = load_stage_tokenizer(cfg, vocab)
    model = build_stage_lm(cfg, vocab)
    datamodule = PretrainDataModule(cfg, tokenizer, micro_batch(cfg, STAGE))
    trainer, module, throughput = fit_lm(cfg, STAGE, model, vocab, datamodule, callbacks)

    out_dir = artifact_dir(cfg, "lm_pretrain")
    state = full_state_dict(trainer, module)
    metrics = run_summary(STAGE, trainer, module, throughput)
    if trainer.is_global_zero:
        save_lm_checkpoint(module.model, tokenizer, vocab, out_dir, state_dict=state,
                           motion_tokens_per_clip=meta.get("motion_tokens_per_clip"), stage=STAGE)
    if state is None:
        metrics.update(evaluate_loss(module.model, datamodule.val_dataloader(), vocab))
    else:
        metrics.update(getattr(module, "val_metrics", {}))
    print_summary(STAGE, metrics, out_dir)
    return metrics


@stage_entry(STAGE)
def run(cfg: DictConfig) -> dict[str, float]:
    return fit(cfg)
