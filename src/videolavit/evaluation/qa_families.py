"""QA accuracy per answer family within each question type (motion → direction / speed, appearance → color, ...),
each beside its chance and prior, so a user sees which kind of answer a claim rests on.

A family (evaluation/qa.answer_families: the answers given to the same question) is named after the corpus
meta.json attribute whose values it is (``direction``, ``speed``, ``color``; the smallest attribute holding it);
answers of an unnamed family (a real dataset's open answers) are left out. Keys: ``<prefix>_acc_<type>_<family>``,
``<prefix>_count_<type>_<family>`` and, with baselines, ``<base>chance_<type>_<family>`` / ``<base>prior_...``.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence


def family_names(all_convs: Sequence[Any], attributes: Optional[dict]) -> dict[str, str]:
    """Each normalized answer → the name of its family's attribute (answers of no attribute are absent)."""
    from videolavit.evaluation.qa import answer_families
    from videolavit.metrics.qa import normalize_answer

    values = {name: frozenset(normalize_answer(v) for v in vals) for name, vals in (attributes or {}).items()}
    out = {}
    for answer, family in answer_families(all_convs).items():
        holding = [name for name, vals in values.items() if family <= vals]
        if holding:
            out[answer] = min(holding, key=lambda name: len(values[name]))  # first of the smallest, in meta order
    return out


def family_scores(rows: Sequence[dict], names: dict[str, str], prefix: str, train_convs: Sequence[Any] = (),
                  all_convs: Sequence[Any] = (), base: Optional[str] = None) -> dict[str, float]:
    """Exact match of ``rows`` (items with ``prediction``) per type and family; with ``base``, chance and prior too."""
    from videolavit.evaluation.qa import accuracy, qa_baselines
    from videolavit.metrics.qa import normalize_answer

    items = [{**r, "type": f"{r['type']}_{names[normalize_answer(r['answer'])]}"} for r in rows
             if normalize_answer(r["answer"]) in names]
    if not items:
        return {}
    scores = accuracy([i["prediction"] for i in items], items, prefix)
    out = {k: v for k, v in scores.items() if k not in (f"{prefix}_acc", f"{prefix}_count")}
    if base is not None:
        out.update({k.replace("val/qa_", base): v for k, v in qa_baselines(items, train_convs, all_convs).items()})
    return out


def corpus_attributes(corpus_dir) -> Optional[dict]:
    """The corpus meta.json ``attributes`` (synthetic corpora), None without them."""
    from videolavit.data.manifest import read_meta
    from videolavit.errors import CorpusError, MissingArtifactError

    try:
        return read_meta(corpus_dir).get("attributes")
    except (CorpusError, MissingArtifactError):
        return None
