"""Stage ``instruct``: instruction tuning of the pretrained LM on Vicuna-v1 conversations, loss on answers only
(paper §3.3, LLaVA-v1.5 recipe), then held-out QA by question type.

``videolavit instruct [key=value ...]`` starts from ``models/lm_pretrain/`` (``instruct.init_from``) and writes
``models/lm_instruct/`` and ``metrics/instruct.json``: ``val/loss`` (answer tokens of the val conversations) and, on
``instruct.eval.split`` (the test split: held-out attribute pairs), greedy exact-match ``val/qa_acc_<type>`` beside
``val/qa_chance_<type>`` (a uniform guess among the answers that question has in the corpus) and
``val/qa_prior_<type>`` (the most frequent training answer to that question: the best a media-blind model can do).
Exact match is NOT comparable with the GPT-judged accuracies of the paper's Table 2.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig

from videolavit import tracking
from videolavit.artifacts import artifact, artifact_dir
from videolavit.errors import ConfigError
from videolavit.evaluation.qa import qa_baselines, qa_items, score_questions
from videolavit.evaluation.qa_families import corpus_attributes, family_names, family_scores
from videolavit.runner import seed_everything, stage_entry
from videolavit.training.lm import (
    build_stage_lm,
    evaluate_loss,
    fit_lm,
    full_state_dict,
    print_summary,
    run_summary,
)
from videolavit.training.topology import micro_batch

STAGE = "instruct"


def load_start(cfg: DictConfig):
    """(model, tokenizer, vocab) of the pretrained LM instruction tuning starts from."""
    from videolavit.data.tokens import read_token_meta, vocab_from_meta
    from videolavit.models.lm_checkpoint import read_lm_vocab
    from videolavit.data.text_tokenizer import load_text_tokenizer

    start = artifact(cfg, "lm_pretrain", "instruct.init_from")
    vocab, _ = read_lm_vocab(start)
    shards = vocab_from_meta(read_token_meta(cfg.paths.tokens))
    if shards != vocab:
        raise ConfigError(f"the LM in '{start}' has {vocab} but the token shards use {shards}: re-run pretrain")
    return build_stage_lm(cfg, vocab, pretrained_path=str(start)), load_text_tokenizer(start, vocab.text_size), vocab


def fit(cfg: DictConfig, callbacks: Optional[list] = None) -> dict[str, float]:
    """Tune (or resume), save ``models/lm_instruct``, answer the held-out questions, return the metrics."""
    from videolavit.data.instruct_data import InstructDataModule
    from videolavit.data.tokens import read_token_meta
    from videolavit.models.lm_checkpoint import save_lm_checkpoint

    seed_everything(int(cfg.seed))
    model, tokenizer, vocab = load_start(cfg)
    eval_cfg = cfg.instruct.eval
    datamodule = InstructDataModule(cfg, tokenizer, micro_batch(cfg, STAGE))
    trainer, module, throughput = fit_lm(cfg, STAGE, model, vocab, datamodule, callbacks)

    out_dir = artifact_dir(cfg, "lm_instruct")
    state = full_state_dict(trainer, module)
    metrics = run_summary(STAGE, trainer, module, throughput)
    if trainer.is_global_zero:
        meta = read_token_meta(cfg.paths.tokens)
        save_lm_checkpoint(module.model, tokenizer, vocab, out_dir, state_dict=state, template=str(cfg.lm.template),
                           motion_tokens_per_clip=meta.get("motion_tokens_per_clip"), stage=STAGE)
    if state is not None:  # FSDP: the sharded module cannot decode alone; evaluate the saved model instead
        metrics.update(getattr(module, "val_metrics", {}))
        metrics["val/loss_answers"] = metrics.get("val/loss", float("nan"))
        print_summary(STAGE, metrics, out_dir)
        return metrics
    model = module.model.eval()
    metrics["val/loss"] = evaluate_loss(model, datamodule.val_dataloader(), vocab)["val/loss"]

    started = time.perf_counter()
    split = str(eval_cfg.split)
    convs = datamodule.conversations(split)
    media = datamodule.media(split)
    items = qa_items(convs, media, eval_cfg.max_questions, int(cfg.seed))
    qa, rows = score_questions(model, tokenizer, vocab, items, media, str(cfg.lm.template), int(eval_cfg.batch_size),
                               int(eval_cfg.max_new_tokens))
    metrics.update(qa)
    from videolavit.data.manifest import read_instruct

    train_convs, all_convs = datamodule.conversations("train"), read_instruct(cfg.paths.corpus)
    metrics.update(qa_baselines(items, train_convs, all_convs))
    names = family_names(all_convs, corpus_attributes(cfg.paths.corpus))  # per answer family: motion_direction, ...
    metrics.update(family_scores(rows, names, "val/qa", train_convs, all_convs, base="val/qa_"))
    metrics["val/qa_seconds"] = time.perf_counter() - started
    if rows and trainer.is_global_zero:
        path = Path(cfg.paths.runs) / STAGE / f"qa_{split}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        tracking.active().log_artifact(path, "qa")
    print_summary(STAGE, metrics, out_dir)
    types = sorted(k.removeprefix("val/qa_acc_") for k in metrics if k.startswith("val/qa_acc_"))
    for t in types:
        print(f"  {t:11s} exact match {metrics[f'val/qa_acc_{t}']:.3f}  chance {metrics.get(f'val/qa_chance_{t}', float('nan')):.3f}"
              f"  prior {metrics.get(f'val/qa_prior_{t}', float('nan')):.3f}  ({int(metrics[f'val/qa_count_{t}'])} questions)")
    return metrics


@stage_entry(STAGE)
def run(cfg: DictConfig) -> dict[str, float]:
    return fit(cfg)
