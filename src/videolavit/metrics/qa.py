"""Open-ended QA accuracy by exact match after VQA-style normalization, overall and per question type.

NOT comparable with the GPT-3.5-judged "Accuracy" and "Score" that Video-ChatGPT, Video-LLaVA and Video-LaVIT
(Table 2) report: those ask gpt-3.5-turbo whether a prediction matches, counting paraphrases. Keys are therefore named
``exact_match`` and ``contains_answer``, never ``accuracy`` or ``score``.
"""

from __future__ import annotations

import re
import zlib
from typing import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

NOT_COMPARABLE_WITH_GPT_JUDGED = (
    "exact-match accuracy after normalization; NOT comparable with the GPT-3.5-judged Accuracy/Score of "
    "Video-ChatGPT, Video-LLaVA or Video-LaVIT Table 2"
)

# ActivityNet-QA ``type`` field (MILVLG/activitynet-qa dataset/README.md); map ints through it before update().
ACTIVITYNET_QA_TYPES = {
    0: "motion", 1: "spatial", 2: "temporal", 3: "yes_no", 4: "color", 5: "object", 6: "location", 7: "number", 8: "other",
}

_NUMBER_WORDS = {
    word: str(i)
    for i, word in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
        "seventeen eighteen nineteen twenty".split()
    )
}
_ARTICLES = {"a", "an", "the"}
_DIGIT_COMMA = re.compile(r"(?<=\d),(?=\d)")  # 1,000 → 1000
_NON_DECIMAL_PERIOD = re.compile(r"(?<!\d)\.|\.(?!\d)")  # keep the point of 2.5, drop sentence periods
_APOSTROPHE = re.compile(r"['’`]")  # don't → dont, so both spellings of a contraction meet
_PUNCTUATION = re.compile(r"[^\w\s.]")


def normalize_answer(text: str) -> str:
    """Lowercase, strip punctuation, drop a/an/the, number words → digits, collapse spaces: ``"The Red."`` → ``"red"``."""
    text = str(text).lower().strip()
    text = _DIGIT_COMMA.sub("", text)
    text = _APOSTROPHE.sub("", text)
    text = _NON_DECIMAL_PERIOD.sub(" ", text)
    text = _PUNCTUATION.sub(" ", text).replace("_", " ")
    words = [_NUMBER_WORDS.get(word, word) for word in text.split() if word not in _ARTICLES]
    return " ".join(words)


def _type_name(kind) -> str:
    # Integer types stay numbers ("3"); map them first (e.g. with ACTIVITYNET_QA_TYPES) for readable keys.
    return str(kind.item() if isinstance(kind, Tensor) else kind)


def _type_code(name: str) -> int:
    # A stable integer per type name, so per-type states are tensors that sync across processes.
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


class QAAccuracy(Metric):
    """``update(predictions, answers, types=None)``; ``compute()`` → ``{"exact_match", "contains_answer", "count",
    "exact_match/<type>", "count/<type>"}`` (fractions in [0, 1])."""

    higher_is_better = True
    is_differentiable = False
    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("exact", default=[], dist_reduce_fx="cat")
        self.add_state("contains", default=[], dist_reduce_fx="cat")
        self.add_state("type_codes", default=[], dist_reduce_fx="cat")
        self._type_names: dict[int, str] = {}

    def update(self, predictions: Sequence[str], answers: Sequence[str], types: Sequence | None = None) -> None:
        if isinstance(predictions, str) or isinstance(answers, str):
            raise ValueError("QAAccuracy.update takes lists of predictions and answers, not single strings")
        if len(predictions) != len(answers):
            raise ValueError(f"got {len(predictions)} predictions but {len(answers)} answers")
        if types is not None and len(types) != len(answers):
            raise ValueError(f"got {len(types)} question types for {len(answers)} answers")
        exact, contains, codes = [], [], []
        for i, (prediction, answer) in enumerate(zip(predictions, answers)):
            pred, gold = normalize_answer(prediction), normalize_answer(answer)
            exact.append(pred == gold)
            contains.append(bool(gold) and f" {gold} " in f" {pred} ")
            name = "all" if types is None else _type_name(types[i])
            code = _type_code(name)
            self._type_names[code] = name
            codes.append(code)
        self.exact.append(torch.tensor(exact, dtype=torch.float64, device=self.device))
        self.contains.append(torch.tensor(contains, dtype=torch.float64, device=self.device))
        self.type_codes.append(torch.tensor(codes, dtype=torch.long, device=self.device))

    def compute(self) -> dict[str, Tensor]:
        exact = _cat(self.exact)
        if exact.numel() == 0:
            raise ValueError("QAAccuracy has no question–answer pairs: call update() first")
        contains, codes = _cat(self.contains), _cat(self.type_codes)
        result = {
            "exact_match": exact.mean(),
            "contains_answer": contains.mean(),
            "count": torch.tensor(exact.numel()),
        }
        if set(self._type_names.values()) != {"all"}:
            for code in sorted(codes.unique().tolist(), key=lambda c: self._type_names.get(c, str(c))):
                name = self._type_names.get(code, f"type_{code}")
                chosen = codes == code
                result[f"exact_match/{name}"] = exact[chosen].mean()
                result[f"count/{name}"] = chosen.sum()
        return result


def _cat(state) -> Tensor:
    # A list state before sync, a single tensor after a DDP gather.
    if isinstance(state, Tensor):
        return state
    return torch.cat(state) if state else torch.zeros(0)
