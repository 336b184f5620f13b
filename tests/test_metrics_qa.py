"""QA exact match after normalization, per question type, labelled as not comparable with GPT-judged scores."""

from __future__ import annotations

import pytest

from videolavit.metrics import ACTIVITYNET_QA_TYPES, NOT_COMPARABLE_WITH_GPT_JUDGED, QAAccuracy, normalize_answer


@pytest.mark.parametrize(
    ("prediction", "answer"),
    [
        ("The Red.", "red"),
        ("two", "2"),
        ("  A   big dog! ", "big dog"),
        ("Twelve cats", "12 cats"),
        ("1,000", "1000"),
        ("don't", "dont"),
        ("an apple", "apple"),
    ],
)
def test_normalization_makes_equivalent_answers_equal(prediction, answer):
    assert normalize_answer(prediction) == normalize_answer(answer)


@pytest.mark.parametrize(("a", "b"), [("2.5", "25"), ("red", "reds"), ("theater", "ater"), ("cat", "a cat dog")])
def test_normalization_keeps_different_answers_apart(a, b):
    assert normalize_answer(a) != normalize_answer(b)


def test_overall_and_per_type_exact_match():
    metric = QAAccuracy()
    metric.update(["The Red.", "blue", "three"], ["red", "green", "3"], ["color", "color", "number"])
    metric.update(["yes"], ["no"], [ACTIVITYNET_QA_TYPES[3]])
    result = metric.compute()
    assert float(result["exact_match"]) == pytest.approx(2 / 4)
    assert float(result["exact_match/color"]) == pytest.approx(1 / 2)
    assert float(result["exact_match/number"]) == 1.0
    assert float(result["exact_match/yes_no"]) == 0.0
    assert int(result["count"]) == 4 and int(result["count/color"]) == 2
    assert not any(key.startswith(("accuracy", "score")) for key in result)


def test_contains_answer_counts_whole_word_mentions():
    metric = QAAccuracy()
    metric.update(["it is a red car", "the reddish one"], ["red", "red"])
    result = metric.compute()
    assert float(result["exact_match"]) == 0.0
    assert float(result["contains_answer"]) == 0.5
    assert "exact_match/all" not in result  # no types given → no per-type keys


def test_mismatched_lengths_and_empty_metric_fail_clearly():
    metric = QAAccuracy()
    with pytest.raises(ValueError, match="2 predictions but 1 answers"):
        metric.update(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="lists"):
        metric.update("red", "red")
    with pytest.raises(ValueError, match="no question"):
        metric.compute()


def test_results_are_named_exact_match_never_accuracy_or_score():
    # the GPT-judged Table 2 columns are "Accuracy" and "Score": no key of this metric may be mistaken for them
    metric = QAAccuracy()
    metric.update(["red", "a red car", "two"], ["red", "red", "3"], types=["color", "color", "number"])
    result = metric.compute()
    assert set(result) == {"exact_match", "contains_answer", "count", "exact_match/color", "exact_match/number",
                           "count/color", "count/number"}
    assert not [k for k in result if "acc" in k.lower() or "score" in k.lower()]
    assert "NOT comparable" in NOT_COMPARABLE_WITH_GPT_JUDGED and "GPT" in NOT_COMPARABLE_WITH_GPT_JUDGED


def test_every_report_table_with_platform_qa_says_it_is_not_gpt_judged():
    from videolavit.metrics.paper_results import load_paper_results
    from videolavit.report.runs import RunIndex
    from videolavit.report.tables import QA_NOTE, build_tables

    assert "not comparable" in QA_NOTE and "GPT" in QA_NOTE
    blocks = [b for t in build_tables(RunIndex([]), load_paper_results()) for b in t.blocks]
    platform_qa = [b for b in blocks if b.caption.startswith("This platform") and any("QA" in h for h in b.headers)]
    assert len(platform_qa) >= 3  # Tables 2, 6 and 7
    unlabelled = [b.caption for b in platform_qa if QA_NOTE not in b.caption and not any(QA_NOTE in h for h in b.headers)]
    assert unlabelled == []
