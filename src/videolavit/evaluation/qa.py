"""Zero-shot QA of the instruction-tuned LM: exact match per question type, chance and prior, the no-motion ablation."""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional, Sequence

from omegaconf import DictConfig

from videolavit.artifacts import artifact
from videolavit.errors import ConfigError
from videolavit.evaluation.protocol import NO_MOTION, QA_TYPES, Results, sampling_seed


def balanced_subset(items: list[dict], max_questions: Optional[int], seed: int, key) -> list[dict]:
    """At most ``max_questions`` items, the groups of ``key(item)`` taking turns (each group drawn in a seeded order)."""
    if max_questions is None or len(items) <= max_questions:
        return items
    groups: dict[Any, list] = defaultdict(list)
    for item in items:
        groups[key(item)].append(item)
    rng = random.Random(seed)
    queues = [rng.sample(groups[k], len(groups[k])) for k in sorted(groups)]
    chosen: list[dict] = []
    while len(chosen) < max_questions:
        for queue in queues:
            if queue and len(chosen) < max_questions:
                chosen.append(queue.pop())
    return chosen


def _qa_items(records: list[dict], max_questions: Optional[int], seed: int) -> list[dict]:
    items = [{"media_id": r["id"], "kind": r["kind"], "question": f"<{r['kind']}>\n{q}", "answer": a, "type": t or "other"}
             for r in records for q, a, t in r["qa"]]
    return balanced_subset(items, max_questions, seed, key=lambda item: (item["kind"], item["type"]))


def qa_items(convs: Sequence[Any], media: dict, max_questions: Optional[int], seed: int) -> list[dict]:
    """Single-turn typed questions whose media are in the token shards; at most ``max_questions``, types in turn."""
    items = []
    for conv in convs:
        if conv.type is None or len(conv.conversations) != 2 or (conv.media_id is not None and conv.media_id not in media):
            continue
        items.append({"id": conv.id, "media_id": conv.media_id, "type": conv.type,
                      "question": conv.conversations[0]["value"], "answer": conv.conversations[1]["value"]})
    if max_questions is None or len(items) <= max_questions:
        return items
    chosen = balanced_subset(items, max_questions, seed, key=lambda item: item["type"])
    return sorted(chosen, key=lambda item: item["id"])


def _conversations(tokens_dir, split: str) -> list:
    """The typed QA of a split as conversation-like objects (what the baselines read)."""
    from videolavit.data.tokens import iter_token_records

    return [SimpleNamespace(type=q.get("type"), conversations=[{"value": q["question_text"]}, {"value": q["answer_text"]}])
            for r in iter_token_records(tokens_dir, split) for q in r.get("qa", [])]


def accuracy(answers, items, prefix: str) -> dict[str, float]:
    """``<prefix>_acc`` overall and ``<prefix>_acc_<type>`` per type, ``<prefix>_count[_<type>]`` likewise (exact match)."""
    from videolavit.metrics.qa import QAAccuracy

    metric = QAAccuracy()
    metric.update(answers, [i["answer"] for i in items], [i["type"] for i in items])
    result = metric.compute()
    out = {f"{prefix}_acc": float(result["exact_match"]), f"{prefix}_count": float(result["count"])}
    for key, value in result.items():
        kind, _, qa_type = key.partition("/")
        if qa_type:
            out[f"{prefix}_{'acc' if kind == 'exact_match' else 'count'}_{qa_type}"] = float(value)
    return out


def answer_items(model, tokenizer, vocab, items: Sequence[dict], media: dict, template: str, batch_size: int,
                 max_new_tokens: int) -> list[str]:
    """Greedy answers to ``items``, each with its medium's token ids from ``media`` (none for a text-only item)."""
    from videolavit.inference.qa import answer_questions

    media_ids = [media[item["media_id"]]["media"].tolist() if item["media_id"] is not None else None for item in items]
    return answer_questions(model, tokenizer, vocab, media_ids, [item["question"] for item in items],
                            max_new_tokens=max_new_tokens, template=template, batch_size=batch_size)


def score_questions(model, tokenizer, vocab, items: Sequence[dict], media: dict, template: str, batch_size: int,
                    max_new_tokens: int) -> tuple[dict[str, float], list[dict]]:
    """Greedy answers → ``val/qa_acc`` and ``val/qa_acc_<type>`` / ``val/qa_count_<type>``, plus the predictions."""
    if not items:
        return {}, []
    predictions = answer_items(model, tokenizer, vocab, items, media, template, batch_size, max_new_tokens)
    rows = [{**item, "prediction": p} for item, p in zip(items, predictions)]
    return accuracy(predictions, items, "val/qa"), rows


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


def baseline_metrics(results: Results, prefix: str, video: list, image: list, train_convs, all_convs, split: str) -> None:
    """``<prefix>chance_<type>`` / ``<prefix>prior_<type>`` of the video questions, ``<prefix>{chance,prior}_image``."""
    for chosen, name in ((video, None), (image, "image")):
        if not chosen:
            continue
        base = qa_baselines(chosen, train_convs, all_convs)
        if name is None:
            results.update({k.replace("val/qa_", prefix): v for k, v in base.items()})
        else:
            counts = defaultdict(int)
            for i in chosen:
                counts[i["type"]] += 1
            for kind in ("chance", "prior"):
                results.set(f"{prefix}{kind}_image", sum(base[f"val/qa_{kind}_{t}"] * n for t, n in counts.items()) / len(chosen))
    results.missing([f"{prefix}chance_{t}" for t in QA_TYPES], f"no video questions of this type in the '{split}' split")


def evaluate_qa(cfg: DictConfig, protocol: DictConfig, results: Results, out_dir: Path) -> None:
    from videolavit.data.lm_data import load_media_records
    from videolavit.data.tokens import read_token_meta, vocab_from_meta
    from videolavit.inference.loading import load_models
    from videolavit.metrics.qa import NOT_COMPARABLE_WITH_GPT_JUDGED

    qa, tokens = protocol.qa, Path(cfg.paths.tokens)
    shards = vocab_from_meta(read_token_meta(tokens))
    lm_path = artifact(cfg, "lm_instruct", "evaluate.qa_lm_path")
    models = load_models(cfg, lm_path=lm_path, tokenizers=False, detokenizers=False)
    if models.vocab != shards:
        raise ConfigError(f"the LM in '{lm_path}' has {models.vocab}, the token shards {shards}: re-run the LM stages")
    tok = models.text_tokenizer
    template = models.lm_info.get("template") or str(cfg.lm.template)
    records = load_media_records(tokens, qa.split, shards, "media", bos=tok.bos_token_id, eos=tok.eos_token_id)
    media = {r["id"]: r for r in records}
    items = _qa_items(list(media.values()), qa.max_questions, sampling_seed(cfg))
    video = [i for i in items if i["kind"] == "video"]
    image = [i for i in items if i["kind"] == "image"]

    def answer(model, pool, chosen):
        return answer_items(model, tok, models.vocab, chosen, pool, template, int(qa.batch_size), int(qa.max_new_tokens))

    predictions = []
    if video:
        answers = answer(models.lm, media, video)
        results.update(accuracy(answers, video, "qa/video"))
        predictions += [{**i, "prediction": a, "input": "media"} for i, a in zip(video, answers)]
    if image:
        answers = answer(models.lm, media, image)
        scores = accuracy(answers, image, "qa/image")
        results.update({k: scores[k] for k in ("qa/image_acc", "qa/image_count")})
        predictions += [{**i, "prediction": a, "input": "media"} for i, a in zip(image, answers)]
    results.missing(["qa/video_acc"], f"no video questions in the '{qa.split}' token shards")
    results.missing(["qa/image_acc"], f"no image questions in the '{qa.split}' token shards")
    results.missing([f"qa/video_acc_{t}" for t in QA_TYPES], f"no questions of this type in the '{qa.split}' split")

    all_convs = [c for split in ("train", "val", "test") for c in _conversations(tokens, split)]
    train_convs = _conversations(tokens, "train")
    baseline_metrics(results, "qa/", video, image, train_convs, all_convs, qa.split)

    if qa.no_motion_ablation:
        no_motion_ablation(cfg, protocol, results, models, video, shards, answer, predictions)
    results.missing([f"{NO_MOTION}qa/video_acc", *(f"{NO_MOTION}qa/video_acc_{t}" for t in QA_TYPES)],
                    "the no-motion ablation was not run (protocol qa.no_motion_ablation) or had no questions")
    family_metrics(cfg, results, predictions, train_convs, all_convs)
    results.metrics["qa/metric"] = "exact_match"
    results.notes["qa/*"] = NOT_COMPARABLE_WITH_GPT_JUDGED
    if predictions:  # logged with the rest of runs/evaluate
        (out_dir / f"qa_{qa.split}.jsonl").write_text("".join(json.dumps(p) + "\n" for p in predictions))


def family_metrics(cfg, results: Results, predictions: list, train_convs, all_convs) -> None:
    """Video QA per type and answer family (``qa/video_acc_motion_direction``, its chance/prior, the ablation's)."""
    from videolavit.evaluation.qa_families import corpus_attributes, family_names, family_scores

    names = family_names(all_convs, corpus_attributes(cfg.paths.corpus))
    rows = [p for p in predictions if p["kind"] == "video" and p["input"] == "media"]
    results.update(family_scores(rows, names, "qa/video", train_convs, all_convs, base="qa/"))
    rows = [p for p in predictions if p["kind"] == "video" and p["input"] == "frames_media"]
    results.update({NO_MOTION + k: v for k, v in family_scores(rows, names, "qa/video").items()})


def no_motion_ablation(cfg, protocol, results: Results, models, video: list, shards, answer, predictions: list) -> None:
    """The video questions again, each video given as ``frames_media`` (paper Table 6, understanding w/o motion)."""
    from videolavit.data.lm_data import load_media_records
    from videolavit.errors import MissingArtifactError
    from videolavit.inference.loading import load_models

    if not video:
        return
    tok = models.text_tokenizer
    try:
        records = load_media_records(cfg.paths.tokens, protocol.qa.split, shards, "frames_media", bos=tok.bos_token_id,
                                     eos=tok.eos_token_id)
        frames = {r["id"]: r for r in records if r["kind"] == "video"}
    except MissingArtifactError as exc:
        results.notes[f"{NO_MOTION}qa/*"] = str(exc)
        return
    model = models.lm
    if cfg.evaluate.no_motion_lm_path:
        model = load_models(cfg, lm_path=cfg.evaluate.no_motion_lm_path, tokenizers=False, detokenizers=False).lm
    results.metrics[f"{NO_MOTION}qa/model"] = "no_motion_lm" if cfg.evaluate.no_motion_lm_path else "same_lm"
    answers = answer(model, frames, video)
    results.update({NO_MOTION + k: v for k, v in accuracy(answers, video, "qa/video").items()})
    predictions += [{**i, "prediction": a, "input": "frames_media"} for i, a in zip(video, answers)]
