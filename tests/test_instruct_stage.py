"""The instruct stage: answer-only labels, merged dialogues, held-out QA by type with chance levels, generation."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from videolavit.data.instruct_data import InstructDataModule, InstructStream, group_dialogues
from videolavit.data.lm_data import IGNORE_INDEX
from videolavit.data.manifest import Conversation
from videolavit.errors import MissingArtifactError

from test_pretrain_stage import FAST_PRETRAIN, SMALL_LM, make_toy_tokens

FAST_INSTRUCT = [
    "instruct.train.max_steps=3", "instruct.train.batch_size=2", "instruct.train.val_every_n_steps=3",
    "instruct.train.checkpoint_every_n_steps=3", "instruct.optim.warmup_steps=1", "instruct.eval.max_questions=12",
    "instruct.eval.batch_size=4", "instruct.eval.max_new_tokens=4", "instruct.turns_per_conversation=3",
]


@pytest.fixture
def toy_cfg(tiny_cfg_factory):
    cfg = tiny_cfg_factory(*SMALL_LM, *FAST_PRETRAIN, *FAST_INSTRUCT)
    make_toy_tokens(cfg)
    return cfg


def _datamodule(cfg, turns: int = 1, seq_len: int = 256):
    from omegaconf import OmegaConf

    from videolavit.data.text_tokenizer import load_text_tokenizer

    cfg = OmegaConf.merge(cfg, {"instruct": {"turns_per_conversation": turns}, "lm": {"seq_len": seq_len}})
    tokenizer = load_text_tokenizer(Path(cfg.paths.tokens) / "text_tokenizer")
    return InstructDataModule(cfg, tokenizer, batch_size=2), tokenizer


def test_labels_mask_everything_but_the_answers(toy_cfg):
    dm, tokenizer = _datamodule(toy_cfg, turns=3)
    samples = dm.samples("train")
    media_id, pairs = next((m, p) for m, p in group_dialogues(samples.convs, 3, random.Random(0)) if m and len(p) == 3)
    ids, labels = samples.row(media_id, pairs)
    assert len(ids) <= dm.seq_len
    targets = [t for t in labels if t != IGNORE_INDEX]
    kept = targets.count(tokenizer.eos_token_id)  # a dialogue too long for seq_len loses turns from its end
    assert kept >= 2
    expected = []
    for _, answer in pairs[:kept]:
        expected += tokenizer(" " + answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert targets == expected  # the answers and their end tokens, nothing else
    media = dm.media("train")[media_id]["media"].tolist()
    start = ids.index(media[0])
    assert ids[start : start + len(media)] == media  # the placeholder became the media span...
    assert all(label == IGNORE_INDEX for label in labels[start : start + len(media)])  # ...with no loss on it
    assert ids.count(dm.vocab.img_start) == media.count(dm.vocab.img_start)  # one media span for the whole dialogue


def test_merged_dialogues_keep_every_turn_and_one_placeholder():
    convs = [Conversation(f"c{i}", "vid_1", "video", "train", [{"from": "human", "value": f"<video>\nq{i}?"},
                                                               {"from": "gpt", "value": f"a{i}"}], "appearance")
             for i in range(5)]
    convs.append(Conversation("t", None, None, "train", [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]))
    dialogues = group_dialogues(convs, 2, random.Random(0))
    merged = [pairs for media_id, pairs in dialogues if media_id == "vid_1"]
    assert sorted(len(p) for p in merged) == [1, 2, 2]
    assert sorted(a for pairs in merged for _, a in pairs) == [f"a{i}" for i in range(5)]
    for pairs in merged:
        assert pairs[0][0].startswith("<video>\n") and not any("<video>" in u for u, _ in pairs[1:])
    assert (None, [("hi", "hello")]) in dialogues


def test_a_dialogue_never_holds_a_turn_that_names_another_turns_answer():
    qa = [("What color is the circle?", "red"), ("Is the red circle small or large?", "small"),
          ("What pattern is the background?", "striped"), ("What shape is the red object?", "circle"),
          ("Describe the video.", "a small red circle on a striped background")]
    convs = [Conversation(f"c{i}", "v", "video", "train", [{"from": "human", "value": "<video>\n" + q},
                                                           {"from": "gpt", "value": a}], "appearance")
             for i, (q, a) in enumerate(qa)]
    for seed in range(5):
        dialogues = group_dialogues(convs, 8, random.Random(seed))
        assert sorted(a for _, pairs in dialogues for _, a in pairs) == sorted(a for _, a in qa)
        for _, pairs in dialogues:
            answers = {a for _, a in pairs}
            assert not ({"red", "small"} <= answers or {"red", "circle"} <= answers)
            assert len(pairs) == 1 or "a small red circle on a striped background" not in answers


def test_instruct_stream_resumes_where_it_stopped(toy_cfg):
    dm, _ = _datamodule(toy_cfg, turns=2)
    samples = dm.samples("train")
    full = iter(InstructStream(samples, seed=0, batch_size=2, pad_id=dm.pad_id))
    batches = [next(full)["input_ids"].tolist() for _ in range(5)]
    resumed = iter(InstructStream(samples, seed=0, batch_size=2, pad_id=dm.pad_id, start_batch=3))
    assert [next(resumed)["input_ids"].tolist() for _ in range(2)] == batches[3:]


def test_packed_rows_hold_the_same_answers_in_fewer_rows(toy_cfg):
    dm, _ = _datamodule(toy_cfg, turns=2, seq_len=600)
    samples = dm.samples("train")
    plain = InstructStream(samples, seed=0, batch_size=2, pad_id=dm.pad_id).rows(0, 0, 1)
    packed = InstructStream(samples, seed=0, batch_size=2, pad_id=dm.pad_id, pack=True).rows(0, 0, 1)
    assert len(packed) < len(plain) and all(len(ids) <= dm.seq_len for ids, _ in packed)

    def answers(rows):
        return sorted(t for _, labels in rows for t in labels if t != IGNORE_INDEX)

    assert answers(packed) == answers(plain)
    assert sum(len(ids) for ids, _ in packed) == sum(len(ids) for ids, _ in plain)


def test_chance_levels_come_from_answer_families():
    from videolavit.evaluation.qa import qa_baselines

    def conv(i, q, a, split="train", kind="appearance"):
        return Conversation(f"c{i}", f"v{i}", "video", split, [{"from": "human", "value": "<video>\n" + q},
                                                               {"from": "gpt", "value": a}], kind)

    train = [conv(0, "What color is the circle?", "red"), conv(1, "What color is the circle?", "red"),
             conv(2, "What color is the square?", "blue"), conv(3, "What color is the square?", "green"),
             conv(4, "Which direction does it move?", "left", kind="motion"),
             conv(5, "Which direction does it move?", "up", kind="motion")]
    test = [conv(6, "What color is the circle?", "green", "test"), conv(7, "What color is the triangle?", "green", "test"),
            conv(8, "Which direction does it move?", "up", "test", "motion")]
    items = [{"question": c.conversations[0]["value"], "answer": c.conversations[1]["value"], "type": c.type} for c in test]
    out = qa_baselines(items, train, train + test)
    assert out["val/qa_chance_appearance"] == pytest.approx(1 / 3)  # red, blue, green: linked through shared questions
    assert out["val/qa_chance_motion"] == pytest.approx(1 / 2)
    # prior: "circle" → red (wrong); unseen "triangle" → the most frequent color overall, red (wrong)
    assert out["val/qa_prior_appearance"] == 0.0


def test_media_records_read_every_record_unless_a_part_is_named(toy_cfg):
    """Token ids passed where ``part``/``parts`` go silently kept every parts-th record (evaluate QA saw ~half the
    test split): the reader's sharding arguments are keyword-only."""
    from videolavit.data.lm_data import load_media_records
    from videolavit.data.tokens import iter_token_records, read_token_meta, vocab_from_meta

    vocab = vocab_from_meta(read_token_meta(toy_cfg.paths.tokens))
    every = load_media_records(toy_cfg.paths.tokens, "test", vocab, "media", bos=1, eos=2)
    assert [r["id"] for r in every] == [r["id"] for r in iter_token_records(toy_cfg.paths.tokens, "test")]
    halves = [load_media_records(toy_cfg.paths.tokens, "test", vocab, part=p, parts=2) for p in (0, 1)]
    assert sorted(r["id"] for h in halves for r in h) == sorted(r["id"] for r in every)
    with pytest.raises(TypeError):
        load_media_records(toy_cfg.paths.tokens, "test", vocab, "media", 1, 2)


def test_batched_answers_equal_one_by_one_greedy_answers(toy_cfg):
    from videolavit.data.lm_data import load_media_records
    from videolavit.models.lm import build_lm
    from videolavit.inference.qa import answer_questions
    from videolavit.data.text_tokenizer import load_text_tokenizer
    from videolavit.data.tokens import read_token_meta, vocab_from_meta

    import torch

    vocab = vocab_from_meta(read_token_meta(toy_cfg.paths.tokens))
    tokenizer = load_text_tokenizer(Path(toy_cfg.paths.tokens) / "text_tokenizer", vocab.text_size)
    records = load_media_records(toy_cfg.paths.tokens, "test", vocab)
    torch.manual_seed(0)
    model = build_lm(vocab, {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
                             "max_position_embeddings": 256})
    media = [r["media"].tolist() for r in records for _ in r["qa"][:2]] + [None]
    questions = [q for r in records for q, _, _ in r["qa"][:2]] + ["What is a circle?"]
    one_by_one = answer_questions(model, tokenizer, vocab, media, questions, max_new_tokens=5, batch_size=1)
    batched = answer_questions(model, tokenizer, vocab, media, questions, max_new_tokens=5, batch_size=4)
    assert batched == one_by_one
    assert len(batched) == len(questions) and all(isinstance(a, str) for a in batched)


def test_instruct_smoke_reports_qa_by_type_against_chance(toy_cfg):
    from videolavit.models.lm_checkpoint import load_lm_checkpoint, read_lm_vocab
    from videolavit.stages import instruct, pretrain

    pretrain.run(toy_cfg)
    metrics = instruct.run(toy_cfg)
    for key in ("val/loss", "val/qa_acc", "val/qa_acc_appearance", "val/qa_chance_appearance", "val/qa_prior_appearance",
                "val/qa_chance_motion"):
        assert key in metrics, key
    assert 0 < metrics["val/qa_chance_appearance"] < 1 and 0.0 <= metrics["val/qa_acc_appearance"] <= 1.0
    assert metrics["global_step"] == 3
    assert metrics["val/qa_count"] == 12
    written = json.loads((Path(toy_cfg.paths.metrics) / "instruct.json").read_text())
    assert written["val/qa_acc_appearance"] == pytest.approx(metrics["val/qa_acc_appearance"])
    rows = (Path(toy_cfg.paths.runs) / "instruct" / "qa_test.jsonl").read_text().splitlines()
    assert len(rows) == 12 and {"question", "answer", "prediction", "type"} <= set(json.loads(rows[0]))
    _, info = read_lm_vocab(Path(toy_cfg.paths.models) / "lm_instruct")
    assert info["stage"] == "instruct"
    model, _, vocab = load_lm_checkpoint(Path(toy_cfg.paths.models) / "lm_instruct")
    assert model.get_output_embeddings().weight.shape[0] == vocab.size


def test_instruct_without_a_pretrained_lm_names_the_stage(toy_cfg):
    from videolavit.stages import instruct

    with pytest.raises(MissingArtifactError, match="videolavit pretrain"):
        instruct.run(toy_cfg)
