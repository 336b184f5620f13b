"""Constrained decoding: a generated span never leaves its id range, and a motion span always has exactly N codes.

Inside ``[IMG]`` only visual ids may follow, and ``[/IMG]`` only once ``min`` codes are out (forced at ``max``). Inside
``[MOV]`` only motion ids may follow until exactly ``N`` are out, then ``[/MOV]`` is forced. Text decoding (QA)
suppresses every id ≥ ``text_size``. The official code instead lets the LM run free and truncates or pads motion spans
to 135 afterwards; masking makes the count right by construction, whatever the logits (an untrained LM included).

Classifier-free guidance (the official motion CFG is 7.0): ``uncond + s·(cond − uncond)`` over log-probabilities, where
the unconditional context is by default the prompt with its text ids removed: for text→video that is just the span
opener (transformers' CFG likewise falls back to the last prompt token), for image→video the keyframe span stays, so
guidance pushes toward what the *text* adds. Pass ``unconditional_ids`` to choose another (e.g. ``[bos, opener]``).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from transformers import LogitsProcessor

from videolavit.vocab import IMAGE, MOTION, Vocab

KINDS = (IMAGE, MOTION)


def span_ids(vocab: Vocab, kind: str) -> tuple[int, int, range]:
    """``(opener, closer, code range)`` of a span kind (``image`` or ``motion``)."""
    if kind == IMAGE:
        return vocab.img_start, vocab.img_end, vocab.visual_range()
    if kind == MOTION:
        return vocab.mov_start, vocab.mov_end, vocab.motion_range()
    raise ValueError(f"span kind must be one of {KINDS}, got {kind!r}")


def _bounds(kind: str, n_tokens) -> tuple[int, int]:
    low, high = (n_tokens, n_tokens) if isinstance(n_tokens, int) else (int(n_tokens[0]), int(n_tokens[1]))
    if not 0 <= low <= high or high == 0:
        raise ValueError(f"span length must satisfy 0 <= min <= max, max > 0; got {n_tokens!r}")
    if kind == MOTION and low != high:
        raise ValueError(f"a motion span has an exact length (motion_tokens); got {n_tokens!r}")
    return low, high


class SpanLogitsProcessor(LogitsProcessor):
    """Keeps decoding inside one span: codes of its kind, and its closing token only between ``min`` and ``max`` codes.

    ``prompt_length``: the length of the sequence when generation starts, ending with the opener (plus any codes of
    this span already there, counted by ``codes_in_prompt``). Works with ``model.generate(logits_processor=[...])``.
    """

    def __init__(self, vocab: Vocab, kind: str, prompt_length: int, n_tokens, codes_in_prompt: int = 0):
        self.vocab = vocab
        self.kind = kind
        self.opener, self.closer, self.codes = span_ids(vocab, kind)
        self.min_tokens, self.max_tokens = _bounds(kind, n_tokens)
        self.prompt_length = int(prompt_length)
        self.codes_in_prompt = int(codes_in_prompt)
        self._masks: dict[tuple, torch.Tensor] = {}

    def allowed(self, count: int, width: int, device) -> torch.Tensor:
        """Boolean mask [width] of the ids allowed after ``count`` codes of this span."""
        codes_ok, close_ok = count < self.max_tokens, count >= self.min_tokens
        key = (codes_ok, close_ok, width, str(device))
        if key not in self._masks:
            mask = torch.zeros(width, dtype=torch.bool, device=device)  # [V]
            if codes_ok:
                mask[self.codes.start : self.codes.stop] = True
            if close_ok:
                mask[self.closer] = True
            self._masks[key] = mask
        return self._masks[key]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        count = self.codes_in_prompt + input_ids.shape[-1] - self.prompt_length
        return scores.masked_fill(~self.allowed(count, scores.shape[-1], scores.device), float("-inf"))


class TextOnlyLogitsProcessor(LogitsProcessor):
    """Suppresses every id ≥ ``text_size`` (special, visual and motion ids) for text answers."""

    def __init__(self, vocab: Vocab):
        self.text_size = vocab.text_size

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores.clone()
        scores[..., self.text_size :] = float("-inf")
        return scores


# ---- sampling with a KV cache ---------------------------------------------------------------------------------------


def sample_next(
    logits: torch.Tensor, temperature: float | None = 1.0, top_k: int | None = None, top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> int:
    """One id from masked logits [V] (−inf = forbidden): greedy when ``temperature`` is 0/None, else top-k/top-p."""
    if not temperature or temperature <= 0:
        return int(torch.argmax(logits))
    logits = logits.float() / temperature  # [V]
    if top_k:
        kth = torch.topk(logits, min(int(top_k), logits.shape[-1])).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = torch.softmax(sorted_logits, -1)
        drop = (probs.cumsum(-1) - probs) > top_p  # the first (most likely) id is always kept
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    probs = torch.softmax(logits, -1)
    if generator is not None:
        probs = probs.to(generator.device)
    return int(torch.multinomial(probs, 1, generator=generator))


class _Decoder:
    """Feeds ids one at a time through the model, keeping its KV cache (``past_key_values``)."""

    def __init__(self, model, ids: Sequence[int]):
        self.model = model
        self.device = next(model.parameters()).device
        params = inspect.signature(model.forward).parameters
        self.keep_last = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        self.past = None
        self.logits = self._run(list(ids))

    def _run(self, ids: list[int]) -> torch.Tensor:
        x = torch.tensor([ids], dtype=torch.long, device=self.device)  # [1, L]
        out = self.model(input_ids=x, past_key_values=self.past, use_cache=True, **self.keep_last)
        self.past = out.past_key_values
        return out.logits[0, -1].float()  # [V]

    def feed(self, token: int) -> torch.Tensor:
        self.logits = self._run([token])
        return self.logits


def _check_room(model, needed: int) -> None:
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if limit is not None and needed > limit:
        raise ValueError(f"prompt + generation needs {needed} positions, more than the LM's {limit}")


class _EvalMode:
    def __init__(self, model):
        self.model, self.was_training = model, model.training

    def __enter__(self):
        self.model.eval()

    def __exit__(self, *exc):
        self.model.train(self.was_training)


def _open_span(prompt: list[int], vocab: Vocab) -> tuple[int | None, int]:
    """(opener, its position) of a span left open at the end of the prompt, else (None, -1)."""
    specials = {vocab.img_start, vocab.img_end, vocab.mov_start, vocab.mov_end}
    for pos in range(len(prompt) - 1, -1, -1):
        if prompt[pos] in specials:
            return (prompt[pos], pos) if prompt[pos] in (vocab.img_start, vocab.mov_start) else (None, -1)
    return None, -1


def generate_span(
    model,
    prompt_ids: Sequence[int],
    kind: str,
    vocab: Vocab,
    n_tokens,
    temperature: float | None = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    guidance_scale: float | None = None,
    generator: torch.Generator | None = None,
    unconditional_ids: Sequence[int] | None = None,
) -> list[int]:
    """Sample one ``[IMG]``/``[MOV]`` span after ``prompt_ids``: its code ids plus the closing token.

    The opener is appended when the prompt does not end inside a span of this kind. ``n_tokens``: N (exact) or
    ``(min, max)`` (image only). ``temperature`` 0 is greedy (the official motion decoding).
    """
    opener, closer, _ = span_ids(vocab, kind)
    processor_prompt = [int(t) for t in prompt_ids]
    open_id, open_pos = _open_span(processor_prompt, vocab)
    if open_id is None:
        processor_prompt.append(opener)
        open_pos = len(processor_prompt) - 1
    elif open_id != opener:
        raise ValueError(f"the prompt ends inside a span opened by id {open_id}; close it before a {kind} span")
    already = len(processor_prompt) - open_pos - 1
    constraint = SpanLogitsProcessor(vocab, kind, len(processor_prompt), n_tokens, codes_in_prompt=already)
    if already > constraint.max_tokens:
        raise ValueError(f"the prompt's open {kind} span already has {already} codes (max {constraint.max_tokens})")
    _check_room(model, len(processor_prompt) + constraint.max_tokens - already)
    if unconditional_ids is None and guidance_scale is not None:
        unconditional_ids = [t for t in processor_prompt if t >= vocab.text_size]

    out: list[int] = []
    with torch.inference_mode(), _EvalMode(model):
        cond = _Decoder(model, processor_prompt)
        uncond = _Decoder(model, unconditional_ids) if guidance_scale is not None else None
        if cond.logits.shape[-1] < vocab.size:
            raise ValueError(f"the LM has {cond.logits.shape[-1]} output ids, fewer than the vocabulary's {vocab.size}")
        while True:
            logits = cond.logits
            if uncond is not None:
                c, u = torch.log_softmax(cond.logits, -1), torch.log_softmax(uncond.logits, -1)
                logits = u + guidance_scale * (c - u)
            count = already + len(out)
            logits = logits.masked_fill(~constraint.allowed(count, logits.shape[-1], logits.device), float("-inf"))
            token = sample_next(logits, temperature, top_k, top_p, generator)
            out.append(token)
            if token == closer:
                return out
            cond.feed(token)
            if uncond is not None:
                uncond.feed(token)


def generate_text(
    model,
    prompt_ids: Sequence[int],
    vocab: Vocab,
    max_new_tokens: int,
    eos_id: int,
    temperature: float | None = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> list[int]:
    """Text-only decoding (ids < ``text_size``) until ``eos_id`` or ``max_new_tokens``; the EOS is not returned."""
    if not 0 <= int(eos_id) < vocab.text_size:
        raise ValueError(f"eos_id {eos_id} is not a text id (< {vocab.text_size})")
    if max_new_tokens <= 0:
        return []
    prompt = [int(t) for t in prompt_ids]
    _check_room(model, len(prompt) + max_new_tokens - 1)
    text_only = TextOnlyLogitsProcessor(vocab)
    out: list[int] = []
    with torch.inference_mode(), _EvalMode(model):
        decoder = _Decoder(model, prompt)
        while len(out) < max_new_tokens:
            logits = text_only(None, decoder.logits)
            token = sample_next(logits, temperature, top_k, top_p, generator)
            if token == int(eos_id):
                break
            out.append(token)
            if len(out) < max_new_tokens:
                decoder.feed(token)
    return out
