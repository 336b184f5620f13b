"""Batches for the instruct stage: Vicuna-v1 conversations of ``paths.corpus/instruct.jsonl`` with their media spans
from the token shards, one conversation per row (or packed rows), labels on answers only (``data/conversation.py``).

A medium's single-turn questions can be merged into multi-turn dialogues (``instruct.turns_per_conversation``), as
LLaVA's data are: one media prefix then serves several answers. Turns that would give away each other's answers are
kept apart (see ``group_dialogues``). The training stream is endless and a pure function of
(seed, rank, worker, batch index), so a resumed run sees the batches an uninterrupted one would.
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from torch.utils.data import DataLoader, IterableDataset

from videolavit.data.lm_data import ListDataset, LMDataModule, collate_labeled, pack_groups
from videolavit.data.resumable import batches_served, global_worker
from videolavit.errors import MissingArtifactError
from videolavit.vocab import Vocab

_PLACEHOLDER_PREFIXES = ("<video>\n", "<image>\n", "<video>", "<image>")
_WORD = re.compile(r"[a-z0-9]+")


def strip_placeholder(text: str) -> str:
    """A user message without its ``<video>``/``<image>`` tag."""
    for prefix in _PLACEHOLDER_PREFIXES:
        if text.startswith(prefix):
            return text[len(prefix) :]
    return text.replace("<video>", "").replace("<image>", "")


def _words(text: str) -> str:
    return " " + " ".join(_WORD.findall(strip_placeholder(text).lower())) + " "


def leaks(a: tuple[str, str], b: tuple[str, str]) -> bool:
    """Whether one turn gives away the other's answer: it appears word for word in the other turn's text."""
    (qa, aa), (qb, ab) = a, b
    return _words(ab) in _words(qa) + _words(aa) or _words(aa) in _words(qb) + _words(ab)


def group_dialogues(convs: Sequence[Any], turns: int, rng: random.Random) -> list[tuple[Optional[str], list[tuple[str, str]]]]:
    """``(media_id, [(user, answer), ...])`` dialogues: a medium's conversations shuffled and merged, at most ``turns``
    to a dialogue and never two turns where one names the other's answer ("Is the red circle small?" would tell
    "What color is the circle?"), so no answer can be copied from the text instead of read from the media.

    Only the first user message of a merged dialogue keeps its ``<video>``/``<image>`` placeholder (LLaVA style).
    """
    by_media: dict[Optional[str], list] = defaultdict(list)
    dialogues = []
    for conv in convs:
        pairs = [(conv.conversations[i]["value"], conv.conversations[i + 1]["value"])
                 for i in range(0, len(conv.conversations) - 1, 2)]
        if conv.media_id is None or turns <= 1:
            dialogues.append((conv.media_id, pairs))
        else:
            by_media[conv.media_id].extend(pairs)
    for media_id in sorted(by_media, key=str):
        pairs = by_media[media_id]
        rng.shuffle(pairs)
        groups: list[list[tuple[str, str]]] = []
        for pair in pairs:  # first fit into a dialogue with room and no leak
            home = next((g for g in groups if len(g) < turns and not any(leaks(pair, other) for other in g)), None)
            if home is None:
                groups.append([pair])
            else:
                home.append(pair)
        for g in groups:
            dialogues.append((media_id, [g[0], *((strip_placeholder(u), a) for u, a in g[1:])]))
    return dialogues


class InstructSamples:
    """Conversations → ``(input_ids, labels)`` rows with the media spans expanded; too-long dialogues lose turns."""

    def __init__(self, convs: Sequence[Any], media: dict[str, dict], tokenizer, vocab: Vocab, template: str,
                 seq_len: int, turns: int):
        self.media, self.tokenizer, self.vocab, self.template = media, tokenizer, vocab, template
        self.seq_len, self.turns = int(seq_len), int(turns)
        self.convs = [c for c in convs if c.media_id is None or c.media_id in media]
        self.missing_media = len(convs) - len(self.convs)
        self.too_long = 0

    def row(self, media_id: Optional[str], pairs: list[tuple[str, str]]) -> Optional[tuple[list[int], list[int]]]:
        from videolavit.data.conversation import build_conversation

        media = [self.media[media_id]["media"].tolist()] if media_id is not None else []
        if media and not any(tag in pairs[0][0] for tag in ("<video>", "<image>")):
            pairs = [(f"<{self.media[media_id]['kind']}>\n" + strip_placeholder(pairs[0][0]), pairs[0][1]), *pairs[1:]]
        while pairs:
            messages = [m for u, a in pairs for m in (("user", u), ("assistant", a))]
            conv = build_conversation(messages, self.tokenizer, media=media, template=self.template, vocab=self.vocab)
            if len(conv.input_ids) <= self.seq_len:
                return conv.input_ids, conv.labels
            pairs = pairs[:-1]
        self.too_long += 1
        return None

    def epoch(self, epoch: int, seed: int) -> list[tuple[list[int], list[int]]]:
        rng = random.Random(f"{seed}-{epoch}")
        dialogues = group_dialogues(self.convs, self.turns, rng)
        rng.shuffle(dialogues)
        rows = [self.row(m, pairs) for m, pairs in dialogues]
        return [r for r in rows if r is not None]


class InstructStream(IterableDataset):
    """Endless batches of conversations (one rank's share of each epoch), right-padded.

    ``pack``: conversations are concatenated into rows of up to ``samples.seq_len`` ids (first fit), so short ones
    (images, text) waste no compute on padding; they then attend across each other, as packed pretraining does.
    """

    def __init__(self, samples: InstructSamples, seed: int, batch_size: int, pad_id: int, rank: int = 0, world: int = 1,
                 start_batch: int = 0, pack: bool = False):
        self.samples, self.seed, self.batch_size, self.pad_id = samples, int(seed), int(batch_size), pad_id
        self.rank, self.world, self.start_batch, self.pack = rank, world, int(start_batch), bool(pack)

    def rows(self, epoch: int, part: int, parts: int) -> list[tuple[list[int], list[int]]]:
        rows = self.samples.epoch(epoch, self.seed)[part::parts]
        if not self.pack:
            return rows
        groups = pack_groups(rows, self.samples.seq_len, size=lambda row: len(row[0]))
        return [([t for ids, _ in g for t in ids], [t for _, labels in g for t in labels]) for g in groups]

    def __iter__(self) -> Iterator[dict]:
        me, total, workers = global_worker(self.rank, self.world)
        skip = batches_served(self.start_batch, me - self.rank * workers, workers)
        served, epoch, batch = 0, 0, []
        while True:
            rows = self.rows(epoch, me, total)
            if not rows:
                raise MissingArtifactError("no instruction conversation fits lm.seq_len with its media")
            for row in rows:
                batch.append(row)
                if len(batch) == self.batch_size:
                    served += 1
                    if served > skip:
                        yield collate_labeled(batch, self.pad_id)
                    batch = []
            epoch += 1


class InstructDataModule(LMDataModule):
    """Instruction conversations of ``paths.corpus/instruct.jsonl`` with media from the token shards."""

    def __init__(self, cfg: Any, tokenizer, batch_size: int, eval_batch_size: Optional[int] = None):
        super().__init__(cfg, tokenizer, batch_size, eval_batch_size)
        self.corpus_dir = Path(cfg.paths.corpus)
        self.template = str(cfg.lm.template)
        self.turns = int(cfg.instruct.turns_per_conversation)
        self.pack = bool(cfg.instruct.pack)
        self._media: dict[str, dict[str, dict]] = {}

    def media(self, split: str) -> dict[str, dict]:
        if split not in self._media:
            self._media[split] = {r["id"]: r for r in self.records(split)}
        return self._media[split]

    def conversations(self, split: str) -> list:
        from videolavit.data.manifest import read_instruct

        return read_instruct(self.corpus_dir, split)

    def samples(self, split: str, turns: Optional[int] = None) -> InstructSamples:
        return InstructSamples(self.conversations(split), self.media(split), self.tokenizer, self.vocab, self.template,
                               self.seq_len, self.turns if turns is None else turns)

    def train_loader(self, start_batch: int = 0) -> DataLoader:
        """The endless training stream from batch ``start_batch`` on (what a run resumed at that step sees)."""
        rank, world = self._rank()
        stream = InstructStream(self.samples("train"), self.seed, self.batch_size, self.pad_id, rank, world,
                                start_batch, self.pack)
        return self._loader(stream, None, None, self.num_workers)

    def val_dataloader(self) -> DataLoader:
        rows = self.samples("val").epoch(0, self.seed)
        if not rows:
            raise MissingArtifactError(f"no 'val' instruction conversations with media in '{self.corpus_dir}'")
        return self._loader(ListDataset(rows), self.eval_batch_size, lambda b: collate_labeled(b, self.pad_id))
