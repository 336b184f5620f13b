"""Batches for the pretrain stage from the token shards (``data/tokens.py``), and what the LM data modules share.

``PretrainDataModule``: image-text, video-text and text-only samples drawn with configured weights, each
pair as [media, caption] and [caption, media], every sample ``[BOS] … [EOS]``, packed into windows of ``seq_len``.
A sample never straddles two windows, so no clip span is ever cut; a video too long for one window keeps as many
whole clips as fit. Windows attend across the samples they hold (separated by EOS, as in GPT/Megatron packing).
Instruction tuning: ``data/instruct_data.py``.

Training streams are infinite and a pure function of (seed, rank, worker, batch index): a run resumed at step k sees
the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import functools
import json
from collections import deque
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from videolavit.data.resumable import ResumableDataModule, batches_served, global_worker
from videolavit.data.tokens import read_token_meta, token_shard_paths, vocab_from_meta
from videolavit.errors import ConfigError, MissingArtifactError
from videolavit.vocab import Vocab

IGNORE_INDEX = -100
MEDIA_FIRST, TEXT_FIRST = "media_first", "text_first"
VIDEO_INPUTS = ("media", "frames_media")


# ---- samples ------------------------------------------------------------------------------------------------------


def strip_special(ids: Sequence[int], bos: Optional[int], eos: Optional[int]) -> list[int]:
    """Text ids without a leading BOS / trailing EOS (whichever convention the tokenize stage used)."""
    ids = [int(t) for t in ids]
    if ids and bos is not None and ids[0] == bos:
        ids = ids[1:]
    if ids and eos is not None and ids[-1] == eos:
        ids = ids[:-1]
    return ids


def media_units(media: Sequence[int], clip_spans: Sequence[Sequence[int]], vocab: Vocab) -> list[tuple[int, int]]:
    """The [start, end) pieces of ``media`` that must stay whole: its clips, else each [IMG]…[/IMG] / [MOV]…[/MOV]."""
    if clip_spans:
        return [(int(s), int(e)) for s, e in clip_spans]
    units, start = [], None
    openers, closers = (vocab.img_start, vocab.mov_start), (vocab.img_end, vocab.mov_end)
    for i, t in enumerate(media):
        if t in openers and start is None:
            start = i
        elif t in closers and start is not None:
            units.append((start, i + 1))
            start = None
    if not units and len(media):
        raise ValueError("media has no [IMG]/[MOV] span")
    return units


def fit_media(media: Sequence[int], units: Sequence[tuple[int, int]], budget: int) -> list[int]:
    """The longest run of whole units from the start of ``media`` within ``budget`` ids ([] if not even one fits)."""
    end = 0
    for s, e in units:
        if e > budget:
            break
        end = e
    return list(media[:end])


def pair_sample(media: list[int], units, text: list[int], order: str, bos: int, eos: int, seq_len: int) -> list[int]:
    """``[BOS] media text [EOS]`` or ``[BOS] text media [EOS]``; the media loses whole clips from its end to fit."""
    text = text[: max(0, seq_len - 2 - (units[0][1] if units else 0))]  # a caption never crowds out every clip
    kept = fit_media(media, units, seq_len - 2 - len(text))
    body = kept + text if order == MEDIA_FIRST else text + kept
    return [bos, *body, eos]


def text_chunks(ids: list[int], bos: int, eos: int, seq_len: int) -> list[list[int]]:
    """A long text document as ``[BOS] … [EOS]`` samples of at most ``seq_len`` ids (text may be cut anywhere)."""
    step = seq_len - 2
    return [[bos, *ids[i : i + step], eos] for i in range(0, max(1, len(ids)), step)]


def pack_groups(items: Iterable, seq_len: int, lookahead: int = 64, size: Callable = len) -> Iterator[list]:
    """Groups of whole items whose sizes add up to at most ``seq_len``: first fit among the next ``lookahead`` items.

    A group closes when no pending item fits its rest; the oldest pending item always opens the next group.
    """
    pending: deque = deque()
    source = iter(items)
    group: list = []
    used, exhausted = 0, False
    while True:
        while not exhausted and len(pending) < max(1, lookahead):
            try:
                item = next(source)
            except StopIteration:
                exhausted = True
                break
            if size(item) > seq_len:
                raise ValueError(f"a sample of {size(item)} ids does not fit a window of {seq_len}")
            pending.append(item)
        if not pending:
            if group:
                yield group
            return
        for i, item in enumerate(pending):
            if size(item) <= seq_len - used:
                group.append(item)
                used += size(item)
                del pending[i]
                break
        else:
            yield group
            group, used = [], 0


def pack_windows(samples: Iterable[list[int]], seq_len: int, lookahead: int = 64) -> Iterator[list[int]]:
    """Windows of at most ``seq_len`` ids, each the concatenation of whole samples (``pack_groups``)."""
    for group in pack_groups(samples, seq_len, lookahead):
        yield [t for sample in group for t in sample]


def collate_windows(windows: Sequence[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids`` [B, L], ``labels`` [B, L] (every id, IGNORE on padding) and ``lengths`` [B]."""
    length = max(len(w) for w in windows)
    ids = torch.full((len(windows), length), int(pad_id), dtype=torch.long)  # [B, L]
    labels = torch.full((len(windows), length), IGNORE_INDEX, dtype=torch.long)  # [B, L]
    for i, w in enumerate(windows):
        ids[i, : len(w)] = torch.as_tensor(w, dtype=torch.long)
        labels[i, : len(w)] = ids[i, : len(w)]
    return {"input_ids": ids, "labels": labels, "lengths": torch.tensor([len(w) for w in windows])}


def collate_labeled(rows: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids`` [B, L], the given ``labels`` [B, L] (IGNORE on padding) and ``lengths`` [B]."""
    length = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), length), int(pad_id), dtype=torch.long)  # [B, L]
    labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)  # [B, L]
    for i, (x, y) in enumerate(rows):
        ids[i, : len(x)] = torch.as_tensor(x, dtype=torch.long)
        labels[i, : len(y)] = torch.as_tensor(y, dtype=torch.long)
    return {"input_ids": ids, "labels": labels, "lengths": torch.tensor([len(x) for x, _ in rows])}


# ---- records ------------------------------------------------------------------------------------------------------


def load_media_records(
    tokens_dir: str | Path, split: str, vocab: Vocab, video_input: str = "media", *, part: int = 0, parts: int = 1,
    bos: Optional[int] = None, eos: Optional[int] = None,
) -> list[dict]:
    """The records of ``split`` this reader keeps (every ``parts``-th; whole shards when there are enough), compacted:
    ``{"id", "kind", "media", "units", "caption", "qa": [(question_text, answer_text, type)]}``."""
    if video_input not in VIDEO_INPUTS:
        raise ConfigError(f"lm.video_input must be one of {VIDEO_INPUTS}, got {video_input!r}")
    paths = token_shard_paths(tokens_dir, split)
    whole_shards = len(paths) >= parts > 1
    out = []
    for index, path in enumerate(paths):
        if whole_shards and index % parts != part:
            continue
        with open(path) as f:
            for line_no, line in enumerate(f):
                if not line.strip() or (not whole_shards and parts > 1 and line_no % parts != part):
                    continue
                out.append(_compact(json.loads(line), vocab, video_input, bos, eos))
    return out


def _compact(record: dict, vocab: Vocab, video_input: str, bos, eos) -> dict:
    kind = record["kind"]
    if kind == "video" and video_input == "frames_media":
        if "frames_media" not in record:
            raise MissingArtifactError(f"token record {record['id']!r} has no frames_media (lm.video_input=frames_media)")
        media, spans = record["frames_media"], []
    else:
        media, spans = record["media"], record.get("clip_spans") or []
    media = np.asarray(media, dtype=np.int32)
    return {
        "id": record["id"],
        "kind": kind,
        "media": media,
        "units": media_units(media.tolist(), spans, vocab),
        "caption": np.asarray(strip_special(record.get("caption") or [], bos, eos), dtype=np.int32),
        "qa": [(q.get("question_text", ""), q.get("answer_text", ""), q.get("type")) for q in record.get("qa", [])],
    }


def _paragraphs(path: Path, block: int = 1 << 20) -> Iterator[str]:
    """The blank-line separated texts of a plain file, read a block at a time (as ``text.split("\\n\\n")`` would)."""
    with open(path) as f:
        rest = ""
        while chunk := f.read(block):
            *done, rest = (rest + chunk).split("\n\n")
            yield from done
        yield rest


def iter_text_docs(paths: Sequence[str], encode: Callable[[str], list[int]], part: int = 0, parts: int = 1) -> Iterator[list[int]]:
    """Documents ``part``, ``part + parts``, … of local text files, streamed: ``.jsonl`` ({"text": ...} per line) or plain
    text (blank-line separated). Only this part's documents are parsed and tokenized (each LM loader worker reads its
    share), so the parts together are exactly the documents of one whole pass."""
    index = 0
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise MissingArtifactError(f"pretrain.text_files: '{p}' does not exist (a local .txt or .jsonl file)")
        if path.suffix == ".jsonl":
            with open(path) as f:
                for line in (sub for physical in f for sub in physical.splitlines()):
                    if line.strip():
                        if index % parts == part:
                            yield encode(json.loads(line)["text"])
                        index += 1
        else:
            for text in _paragraphs(path):
                if text.strip():
                    if index % parts == part:
                        yield encode(text.strip())
                    index += 1


def read_text_files(paths: Sequence[str], encode: Callable[[str], list[int]], part: int = 0, parts: int = 1) -> list[list[int]]:
    """This part's documents of the text files (see :func:`iter_text_docs`), tokenized."""
    return list(iter_text_docs(paths, encode, part, parts))


# ---- pretraining --------------------------------------------------------------------------------------------------


class _Cycle:
    """Endless items of one source: epoch e is a permutation seeded by (seed, e)."""

    def __init__(self, items: list, seed: int):
        self.items, self.seed, self.epoch, self.order, self.pos = items, seed, -1, [], 0

    def __next__(self):
        if self.pos >= len(self.order):
            self.epoch += 1
            self.order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.items)).tolist()
            self.pos = 0
        self.pos += 1
        return self.items[self.order[self.pos - 1]]


class PretrainSamples:
    """Builds the samples of each pretraining source from compact records (see ``load_media_records``)."""

    def __init__(self, records: list[dict], text_docs: list[list[int]], vocab: Vocab, seq_len: int, bos: int, eos: int,
                 both_orders: bool = True, qa_sample: Optional[Callable[[dict, tuple], list[int]]] = None):
        self.vocab, self.seq_len, self.bos, self.eos = vocab, int(seq_len), int(bos), int(eos)
        orders = (MEDIA_FIRST, TEXT_FIRST) if both_orders else (MEDIA_FIRST,)
        with_caption = [r for r in records if len(r["caption"])]
        self.sources: dict[str, list] = {
            "video_text": [(r, o) for r in with_caption if r["kind"] == "video" for o in orders],
            "image_text": [(r, o) for r in with_caption if r["kind"] == "image" for o in orders],
            "text": [c for doc in text_docs for c in text_chunks(doc, self.bos, self.eos, self.seq_len)]
            or [[self.bos, *r["caption"].tolist(), self.eos] for r in with_caption],
            "qa": [(r, q) for r in records for q in r["qa"]] if qa_sample is not None else [],
        }
        self.qa_sample = qa_sample

    def build(self, source: str, item) -> Optional[list[int]]:
        if source == "text":
            return list(item)
        if source == "qa":
            ids = self.qa_sample(*item)
            return ids if ids is not None and len(ids) <= self.seq_len else None
        record, order = item
        sample = pair_sample(record["media"], record["units"], record["caption"].tolist(), order, self.bos, self.eos, self.seq_len)
        return sample if len(sample) > 2 else None


def mixed_samples(samples: PretrainSamples, weights: dict[str, float], seed: int) -> Iterator[list[int]]:
    """Endless samples, each from a source drawn with ``weights`` (sources without items are left out)."""
    names = [n for n, w in weights.items() if w > 0 and samples.sources.get(n)]
    if not names:
        raise ConfigError(f"pretrain.mix: no source with a positive weight has data (weights {weights})")
    p = np.asarray([weights[n] for n in names], dtype=np.float64)
    p /= p.sum()
    rng = np.random.default_rng([seed, 7])
    cycles = {n: _Cycle(samples.sources[n], seed + i) for i, n in enumerate(names)}
    skipped, limit = 0, 10 * sum(len(samples.sources[n]) for n in names)
    while True:
        name = names[int(rng.choice(len(names), p=p))]
        sample = samples.build(name, next(cycles[name]))
        if sample is not None:
            skipped = 0
            yield sample
        else:
            skipped += 1
            if skipped > limit:
                raise ConfigError(f"no pretraining sample fits lm.seq_len={samples.seq_len} (sources {names})")


class PretrainStream(IterableDataset):
    """Endless collated batches of packed windows for one rank; dataloader workers take turns (round-robin)."""

    def __init__(self, make_samples: Callable[[int, int], PretrainSamples], weights: dict, seed: int, batch_size: int,
                 seq_len: int, lookahead: int, pad_id: int, rank: int = 0, world: int = 1, start_batch: int = 0):
        self.make_samples, self.weights, self.seed = make_samples, dict(weights), int(seed)
        self.batch_size, self.seq_len, self.lookahead, self.pad_id = int(batch_size), int(seq_len), int(lookahead), pad_id
        self.rank, self.world, self.start_batch = rank, world, int(start_batch)

    def __iter__(self) -> Iterator[dict]:
        me, total, workers = global_worker(self.rank, self.world)
        samples = self.make_samples(me, total)
        windows = pack_windows(mixed_samples(samples, self.weights, self.seed * 1000 + me), self.seq_len, self.lookahead)
        skip = batches_served(self.start_batch, me - self.rank * workers, workers)
        served = 0
        while True:
            batch = [next(windows) for _ in range(self.batch_size)]
            served += 1
            if served > skip:
                yield collate_windows(batch, self.pad_id)


class ListDataset(Dataset):
    def __init__(self, items: list):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        return self.items[index]


class LMDataModule(ResumableDataModule):
    """What both LM data modules share: token meta, vocabulary, text tokenizer (rank and resume: the base)."""

    def __init__(self, cfg: Any, tokenizer, batch_size: int, eval_batch_size: Optional[int] = None):
        super().__init__(cfg)
        self.tokens_dir = Path(cfg.paths.tokens)
        self.meta = read_token_meta(self.tokens_dir)
        self.vocab = vocab_from_meta(self.meta)
        self.tokenizer = tokenizer
        self.seq_len = int(cfg.lm.seq_len)
        self.video_input = str(cfg.lm.video_input)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.bos = tokenizer.bos_token_id
        self.eos = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos
        if self.eos is None:
            raise ConfigError("the text tokenizer has no EOS token; the LM stages separate samples with it")
        if self.bos is None:
            self.bos = self.eos

    def records(self, split: str, part: int = 0, parts: int = 1) -> list[dict]:
        if not token_shard_paths(self.tokens_dir, split):
            raise MissingArtifactError(f"no '{split}' token shards in '{self.tokens_dir}'. Run `videolavit tokenize` first.")
        return load_media_records(self.tokens_dir, split, self.vocab, self.video_input, part=part, parts=parts,
                                  bos=self.bos, eos=self.eos)

    def _loader(self, dataset, batch_size, collate, workers: int = 0) -> DataLoader:
        return DataLoader(dataset, batch_size=batch_size, collate_fn=collate, num_workers=workers, shuffle=False,
                          generator=self._generator(), persistent_workers=False, pin_memory=self.pin_memory)


class PretrainDataModule(LMDataModule):
    """Packed pretraining windows from ``paths.tokens`` (train: endless mixed stream; val: every pair, both orders)."""

    def __init__(self, cfg: Any, tokenizer, batch_size: int, eval_batch_size: Optional[int] = None):
        super().__init__(cfg, tokenizer, batch_size, eval_batch_size)
        p = cfg.pretrain
        self.weights = {k: float(v) for k, v in p.mix.items()}
        self.both_orders = bool(p.both_orders)
        self.text_files = list(p.text_files or [])
        self.lookahead = int(p.pack_lookahead)
        self.template = str(cfg.lm.template)

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def samples(self, split: str, part: int = 0, parts: int = 1) -> PretrainSamples:
        records = self.records(split, part, parts)
        docs = read_text_files(self.text_files, self._encode, part, parts) if split == "train" and self.text_files else []
        qa = self._qa_sample if self.weights.get("qa", 0) > 0 else None
        return PretrainSamples(records, docs, self.vocab, self.seq_len, self.bos, self.eos, self.both_orders, qa)

    def _qa_sample(self, record: dict, qa: tuple) -> Optional[list[int]]:
        from videolavit.data.conversation import build_conversation

        question, answer, _ = qa
        tag = "<video>\n" if record["kind"] == "video" else "<image>\n"
        conv = build_conversation([("user", tag + question), ("assistant", answer)], self.tokenizer,
                                  media=[record["media"].tolist()], template=self.template, vocab=self.vocab)
        return conv.input_ids

    def train_loader(self, start_batch: int = 0) -> DataLoader:
        """The endless training stream from batch ``start_batch`` on (what a run resumed at that step sees)."""
        rank, world = self._rank()
        stream = PretrainStream(
            functools.partial(self.samples, "train"), self.weights, self.seed, self.batch_size,
            self.seq_len, self.lookahead, self.pad_id, rank, world, start_batch,
        )
        return self._loader(stream, None, None, self.num_workers)

    def val_windows(self) -> list[list[int]]:
        """Every val pair in each order once, packed (deterministic)."""
        samples = self.samples("val")
        items = [samples.build(name, item) for name in ("video_text", "image_text") for item in samples.sources[name]]
        return list(pack_windows((s for s in items if s is not None), self.seq_len, self.lookahead))

    def val_dataloader(self) -> DataLoader:
        windows = self.val_windows()
        if not windows:
            raise MissingArtifactError(f"the 'val' token shards in '{self.tokens_dir}' hold no captioned media")
        return self._loader(ListDataset(windows), self.eval_batch_size, lambda b: collate_windows(b, self.pad_id))
