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
import random
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Optional, Sequence

from omegaconf import DictConfig

from videolavit import tracking
from videolavit.errors import ConfigError, require_path
from videolavit.stages.common import seed_everything, stage_entry
from videolavit.stages.pretrain import (
    build_stage_lm, evaluate_loss, fit_lm, full_state_dict, print_summary, run_summary,
)  # fmt: skip

STAGE = "instruct"


def qa_items(convs: Sequence[Any], media: dict, max_questions: Optional[int], seed: int) -> list[dict]:
    """Single-turn typed questions whose media are in the token shards; at most ``max_questions``, types in turn."""
    items = []
    for conv in convs:
        if conv.type is None or len(conv.conversations) != 2 or (conv.media_id is not None and conv.media_id not in media):
            continue
        items.append({"id": conv.id, "media_id": conv.media_id, "type": conv.type,
                      "question": conv.conversations[0]["value"], "answer": conv.conversations[1]["value"]})  # fmt: skip
    if max_questions is None or len(items) <= max_questions:
        return items
    by_type: dict[str, list] = defaultdict(list)
    rng = random.Random(seed)
    for item in items:
        by_type[item["type"]].append(item)
    for group in by_type.values():
        rng.shuffle(group)
    chosen, queues = [], [by_type[t] for t in sorted(by_type)]
    while len(chosen) < max_questions:
        for queue in queues:
            if queue and len(chosen) < max_questions:
                chosen.append(queue.pop())
    return sorted(chosen, key=lambda item: item["id"])


def _question_key(text: str) -> str:
    from videolavit.data.instruct_data import strip_placeholder
    from videolavit.metrics.qa import normalize_answer

    return normalize_answer(strip_placeholder(text))


def answer_families(convs: Sequence[Any]) -> dict[str, frozenset]:
    """Each normalized answer → its family: answers linked by being given to the same question (union-find), so
    the colors form one family, the directions another, whatever object or clip a question names."""
    from videolavit.metrics.qa import normalize_answer

    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    first_answer: dict[str, str] = {}
    for conv in convs:
        if conv.type is None or len(conv.conversations) != 2:
            continue
        answer = normalize_answer(conv.conversations[1]["value"])
        key = _question_key(conv.conversations[0]["value"])
        parent[find(answer)] = find(first_answer.setdefault(key, answer))
    groups: dict[str, set] = defaultdict(set)
    for answer in list(parent):
        groups[find(answer)].add(answer)
    return {answer: frozenset(groups[find(answer)]) for answer in parent}


def qa_baselines(items: Sequence[dict], train_convs: Sequence[Any], all_convs: Sequence[Any]) -> dict[str, float]:
    """Per type: ``val/qa_chance_<type>`` (a uniform guess within the answer's family) and ``val/qa_prior_<type>``
    (the most frequent training answer of that family to that question, else to any question: media-blind)."""
    from videolavit.metrics.qa import normalize_answer

    families = answer_families(all_convs)
    by_question: dict[str, Counter] = defaultdict(Counter)
    overall: Counter = Counter()
    for conv in train_convs:
        if conv.type is not None and len(conv.conversations) == 2:
            answer = normalize_answer(conv.conversations[1]["value"])
            by_question[_question_key(conv.conversations[0]["value"])][answer] += 1
            overall[answer] += 1
    chance: dict[str, list[float]] = defaultdict(list)
    prior: dict[str, list[float]] = defaultdict(list)
    for item in items:
        key, gold = _question_key(item["question"]), normalize_answer(item["answer"])
        family = families.get(gold, frozenset({gold}))
        chance[item["type"]].append(1.0 / len(family))
        counts = Counter({a: n for a, n in by_question.get(key, Counter()).items() if a in family})
        counts = counts or Counter({a: n for a, n in overall.items() if a in family})
        prior[item["type"]].append(float(bool(counts) and counts.most_common(1)[0][0] == gold))
    out = {}
    for qa_type in chance:
        out[f"val/qa_chance_{qa_type}"] = sum(chance[qa_type]) / len(chance[qa_type])
        out[f"val/qa_prior_{qa_type}"] = sum(prior[qa_type]) / len(prior[qa_type])
    return out


def evaluate_qa(model, tokenizer, vocab, items: Sequence[dict], media: dict, template: str, batch_size: int,
                max_new_tokens: int) -> tuple[dict[str, float], list[dict]]:  # fmt: skip
    """Greedy answers → ``val/qa_acc`` and ``val/qa_acc_<type>`` / ``val/qa_count_<type>``, plus the predictions."""
    from videolavit.metrics.qa import QAAccuracy
    from videolavit.models.lm_inference import answer_questions

    if not items:
        return {}, []
    media_ids = [media[item["media_id"]]["media"].tolist() if item["media_id"] is not None else None for item in items]
    predictions = answer_questions(model, tokenizer, vocab, media_ids, [item["question"] for item in items],
                                   max_new_tokens=max_new_tokens, template=template, batch_size=batch_size)  # fmt: skip
    metric = QAAccuracy()
    metric.update(predictions, [item["answer"] for item in items], [item["type"] for item in items])
    result = metric.compute()
    out = {"val/qa_acc": float(result["exact_match"]), "val/qa_count": float(result["count"])}
    for key, value in result.items():
        if key.startswith("exact_match/"):
            out[f"val/qa_acc_{key.split('/', 1)[1]}"] = float(value)
        elif key.startswith("count/"):
            out[f"val/qa_count_{key.split('/', 1)[1]}"] = float(value)
    rows = [{**item, "prediction": p} for item, p in zip(items, predictions)]
    return out, rows


def load_start(cfg: DictConfig):
    """(model, tokenizer, vocab) of the pretrained LM instruction tuning starts from."""
    from videolavit.data.tokens import read_token_meta, vocab_from_meta
    from videolavit.models.lm_inference import read_lm_vocab
    from videolavit.models.text_tokenizer import load_text_tokenizer

    start = require_path(cfg.instruct.init_from or Path(cfg.paths.models) / "lm_pretrain", "the pretrained LM",
                         "Run `videolavit pretrain` first (or set instruct.init_from).")  # fmt: skip
    vocab, _ = read_lm_vocab(start)
    shards = vocab_from_meta(read_token_meta(cfg.paths.tokens))
    if shards != vocab:
        raise ConfigError(f"the LM in '{start}' has {vocab} but the token shards use {shards}: re-run pretrain")
    return build_stage_lm(cfg, vocab, pretrained_path=str(start)), load_text_tokenizer(start, vocab.text_size), vocab


def fit(cfg: DictConfig, callbacks: Optional[list] = None) -> dict[str, float]:
    """Tune (or resume), save ``models/lm_instruct``, answer the held-out questions, return the metrics."""
    from videolavit.data.instruct_data import InstructDataModule
    from videolavit.data.tokens import read_token_meta
    from videolavit.models.lm_inference import save_lm_checkpoint

    seed_everything(int(cfg.seed))
    model, tokenizer, vocab = load_start(cfg)
    train_cfg, eval_cfg = cfg.instruct.train, cfg.instruct.eval
    datamodule = InstructDataModule(cfg, tokenizer, int(train_cfg.batch_size))
    trainer, module, throughput = fit_lm(cfg, STAGE, model, vocab, datamodule, callbacks)

    out_dir = Path(cfg.paths.models) / "lm_instruct"
    state = full_state_dict(trainer, module)
    metrics = run_summary(STAGE, trainer, module, throughput)
    if trainer.is_global_zero:
        meta = read_token_meta(cfg.paths.tokens)
        save_lm_checkpoint(module.model, tokenizer, vocab, out_dir, state_dict=state, template=str(cfg.lm.template),
                           motion_tokens_per_clip=meta.get("motion_tokens_per_clip"), stage=STAGE)  # fmt: skip
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
    qa, rows = evaluate_qa(model, tokenizer, vocab, items, media, str(cfg.lm.template), int(eval_cfg.batch_size),
                           int(eval_cfg.max_new_tokens))  # fmt: skip
    metrics.update(qa)
    from videolavit.data.manifest import read_instruct

    metrics.update(qa_baselines(items, datamodule.conversations("train"), read_instruct(cfg.paths.corpus)))
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
