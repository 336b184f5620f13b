"""Zero-shot QA of the instruction-tuned LM: exact match per question type, chance and prior, the no-motion ablation."""

from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

from omegaconf import DictConfig

from videolavit.errors import ConfigError, require_path
from videolavit.evaluation.protocol import NO_MOTION, QA_TYPES, Results, sampling_seed


def _qa_items(records: list[dict], max_questions: Optional[int], seed: int) -> list[dict]:
    items = [{"media_id": r["id"], "kind": r["kind"], "question": f"<{r['kind']}>\n{q}", "answer": a, "type": t or "other"}
             for r in records for q, a, t in r["qa"]]  # fmt: skip
    if max_questions is None or len(items) <= max_questions:
        return items
    groups: dict[tuple, list] = defaultdict(list)
    for item in items:
        groups[(item["kind"], item["type"])].append(item)
    rng = random.Random(seed)
    queues = [rng.sample(groups[k], len(groups[k])) for k in sorted(groups)]
    chosen: list[dict] = []
    while len(chosen) < max_questions:
        for queue in queues:
            if queue and len(chosen) < max_questions:
                chosen.append(queue.pop())
    return chosen


def _conversations(tokens_dir, split: str) -> list:
    """The typed QA of a split as conversation-like objects (what the instruct stage's baselines read)."""
    from videolavit.data.tokens import iter_token_records

    return [SimpleNamespace(type=q.get("type"), conversations=[{"value": q["question_text"]}, {"value": q["answer_text"]}])
            for r in iter_token_records(tokens_dir, split) for q in r.get("qa", [])]  # fmt: skip


def _accuracy(answers, items, name: str) -> dict[str, float]:
    """``qa/<name>_acc`` overall and per type, ``qa/<name>_count`` likewise (exact match)."""
    from videolavit.metrics.qa import QAAccuracy

    metric = QAAccuracy()
    metric.update(answers, [i["answer"] for i in items], [i["type"] for i in items])
    result = metric.compute()
    out = {f"qa/{name}_acc": float(result["exact_match"]), f"qa/{name}_count": float(result["count"])}
    for key, value in result.items():
        kind, _, qa_type = key.partition("/")
        if qa_type:
            out[f"qa/{name}_{'acc' if kind == 'exact_match' else 'count'}_{qa_type}"] = float(value)
    return out


def evaluate_qa(cfg: DictConfig, protocol: DictConfig, results: Results, out_dir: Path) -> None:
    from videolavit.data.lm_data import load_media_records
    from videolavit.data.tokens import read_token_meta, vocab_from_meta
    from videolavit.generate import load_models
    from videolavit.metrics.qa import NOT_COMPARABLE_WITH_GPT_JUDGED
    from videolavit.models.lm_inference import answer_questions
    from videolavit.stages.instruct import qa_baselines

    qa, tokens = protocol.qa, Path(cfg.paths.tokens)
    shards = vocab_from_meta(read_token_meta(tokens))
    lm_path = require_path(cfg.evaluate.qa_lm_path or Path(cfg.paths.models) / "lm_instruct", "the instruction-tuned LM",
                           "Run `videolavit instruct` first (or set evaluate.qa_lm_path).")  # fmt: skip
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
        media_ids = [pool[i["media_id"]]["media"].tolist() for i in chosen]
        questions = [i["question"] for i in chosen]
        return answer_questions(model, tok, models.vocab, media_ids, questions, int(qa.max_new_tokens), template,
                                int(qa.batch_size))  # fmt: skip

    predictions = []
    if video:
        answers = answer(models.lm, media, video)
        results.update(_accuracy(answers, video, "video"))
        predictions += [{**i, "prediction": a, "input": "media"} for i, a in zip(video, answers)]
    if image:
        answers = answer(models.lm, media, image)
        scores = _accuracy(answers, image, "image")
        results.update({k: scores[k] for k in ("qa/image_acc", "qa/image_count")})
        predictions += [{**i, "prediction": a, "input": "media"} for i, a in zip(image, answers)]
    results.missing(["qa/video_acc"], f"no video questions in the '{qa.split}' token shards")
    results.missing(["qa/image_acc"], f"no image questions in the '{qa.split}' token shards")
    results.missing([f"qa/video_acc_{t}" for t in QA_TYPES], f"no questions of this type in the '{qa.split}' split")

    all_convs = [c for split in ("train", "val", "test") for c in _conversations(tokens, split)]
    train_convs = _conversations(tokens, "train")
    for chosen, name in ((video, None), (image, "image")):
        if not chosen:
            continue
        base = qa_baselines(chosen, train_convs, all_convs)
        if name is None:
            results.update({k.replace("val/qa_", "qa/"): v for k, v in base.items()})
        else:
            counts = defaultdict(int)
            for i in chosen:
                counts[i["type"]] += 1
            for kind in ("chance", "prior"):
                results.set(f"qa/{kind}_image", sum(base[f"val/qa_{kind}_{t}"] * n for t, n in counts.items()) / len(chosen))
    results.missing([f"qa/chance_{t}" for t in QA_TYPES], f"no video questions of this type in the '{qa.split}' split")

    if qa.no_motion_ablation:
        no_motion_ablation(cfg, protocol, results, models, video, shards, answer, predictions)
    results.missing([f"{NO_MOTION}qa/video_acc", *(f"{NO_MOTION}qa/video_acc_{t}" for t in QA_TYPES)],
                    "the no-motion ablation was not run (protocol qa.no_motion_ablation) or had no questions")  # fmt: skip
    results.metrics["qa/metric"] = "exact_match"
    results.notes["qa/*"] = NOT_COMPARABLE_WITH_GPT_JUDGED
    if predictions:  # logged with the rest of runs/evaluate
        (out_dir / f"qa_{qa.split}.jsonl").write_text("".join(json.dumps(p) + "\n" for p in predictions))


def no_motion_ablation(cfg, protocol, results: Results, models, video: list, shards, answer, predictions: list) -> None:
    """The video questions again, each video given as ``frames_media`` (paper Table 6, understanding w/o motion)."""
    from videolavit.data.lm_data import load_media_records
    from videolavit.errors import MissingArtifactError
    from videolavit.generate import load_models

    if not video:
        return
    tok = models.text_tokenizer
    try:
        records = load_media_records(cfg.paths.tokens, protocol.qa.split, shards, "frames_media", bos=tok.bos_token_id,
                                     eos=tok.eos_token_id)  # fmt: skip
        frames = {r["id"]: r for r in records if r["kind"] == "video"}
    except MissingArtifactError as exc:
        results.notes[f"{NO_MOTION}qa/*"] = str(exc)
        return
    model = models.lm
    if cfg.evaluate.no_motion_lm_path:
        model = load_models(cfg, lm_path=cfg.evaluate.no_motion_lm_path, tokenizers=False, detokenizers=False).lm
    results.metrics[f"{NO_MOTION}qa/model"] = "no_motion_lm" if cfg.evaluate.no_motion_lm_path else "same_lm"
    answers = answer(model, frames, video)
    results.update({NO_MOTION + k: v for k, v in _accuracy(answers, video, "video").items()})
    predictions += [{**i, "prediction": a, "input": "frames_media"} for i, a in zip(video, answers)]
