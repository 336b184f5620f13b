"""QA per answer family: answers are grouped by the corpus attribute they belong to, each with its chance and prior."""

from __future__ import annotations

from types import SimpleNamespace

from videolavit.evaluation.qa_families import family_names, family_scores

ATTRIBUTES = {"direction": ["left", "right", "up", "down"], "speed": ["slow", "fast"],
              "pan": ["none", "left", "right", "up", "down"]}


def conv(question, answer, kind="motion"):
    return SimpleNamespace(type=kind, conversations=[{"value": f"<video>\n{question}"}, {"value": answer}])


TRAIN = [conv("Which direction does the red circle move?", d) for d in ("left", "left", "up", "right", "down")] + [
    conv("Does the red circle move fast or slow?", s) for s in ("fast", "fast", "slow")] + [
    conv("What is it?", "a thing", "other")]


def test_families_are_named_after_the_smallest_attribute_holding_them():
    names = family_names(TRAIN, ATTRIBUTES)
    assert names["left"] == names["down"] == "direction"  # not pan, which also holds them
    assert names["slow"] == names["fast"] == "speed"
    assert "a thing" not in names
    assert family_names(TRAIN, None) == {}


def test_scores_per_type_and_family_with_chance_and_prior():
    names = family_names(TRAIN, ATTRIBUTES)
    q_dir, q_speed = "<video>\nWhich direction does the red circle move?", "<video>\nDoes the red circle move fast or slow?"
    rows = [
        {"question": q_dir, "answer": "left", "prediction": "left", "type": "motion"},
        {"question": q_dir, "answer": "up", "prediction": "up", "type": "motion"},
        {"question": q_dir, "answer": "down", "prediction": "left", "type": "motion"},
        {"question": q_speed, "answer": "slow", "prediction": "fast", "type": "motion"},
        {"question": "<video>\nWhat is it?", "answer": "a thing", "prediction": "a thing", "type": "other"},
    ]
    out = family_scores(rows, names, "qa/video", TRAIN, TRAIN, base="qa/")
    assert out["qa/video_acc_motion_direction"] == 2 / 3 and out["qa/video_count_motion_direction"] == 3
    assert out["qa/video_acc_motion_speed"] == 0.0
    assert out["qa/chance_motion_direction"] == 0.25 and out["qa/chance_motion_speed"] == 0.5
    assert out["qa/prior_motion_direction"] == 1 / 3  # "left", the most frequent train answer, is right once
    assert out["qa/prior_motion_speed"] == 0.0  # "fast" is the prior, the answer is "slow"
    assert not any("other" in key for key in out) and "qa/video_acc" not in out
    assert family_scores(rows, {}, "qa/video") == {}
