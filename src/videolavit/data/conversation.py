"""The Vicuna-v1 conversation template of the official understanding code, as ``input_ids`` + answer-only ``labels``.

Rendered text (separator style TWO): ``system + " " + "USER: " + q1 + " " + "ASSISTANT: " + a1 + sep2 + "USER: " …``;
an inference prompt ends with ``"ASSISTANT:"``. ``<image>`` / ``<video>`` in a user message are replaced by the id
span the caller gives for that medium (e.g. ``vocab.video_span(clips)``); media and prompts get IGNORE labels, each
answer and its end token get their ids as labels (the LLaVA-v1.5 recipe the paper says instruction tuning follows).

sep2: the released code has ``sep2=" \\\\n </s>"``, i.e. a literal backslash-n before ``</s>``, and its runner stops on
and splits at that literal ``\\n``, so the released SFT weights were most likely tuned with it. It is an escaping slip
(LLaVA's vicuna_v1 has ``sep2="</s>"``) that costs two tokens per answer. ``VICUNA_V1`` (the default, for models trained
here) ends an answer with the EOS id only; ``VIDEO_LAVIT_RELEASED`` adds the literal ``" \\n"`` to match the
released weights. ``</s>`` is always the tokenizer's EOS *id*, never the string, so a tokenizer that does not parse
special tokens in text cannot break it.

Text is encoded piece by piece (split at media, like the official ``tokenizer_image_token``, and at answer boundaries)
so labels line up exactly with answer tokens; an answer gets the ids it has in the rendered text (the text before it
and the answer are encoded together, then split), so with Llama-2's SentencePiece or a byte-level BPE the ids of a
conversation without media equal a one-pass tokenization of ``render(...)``. Training and inference share this code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from collections.abc import Iterable, Sequence
from typing import Any

from videolavit.vocab import Vocab

IGNORE_INDEX = -100
IMAGE_PLACEHOLDER = "<image>"
VIDEO_PLACEHOLDER = "<video>"
_PLACEHOLDER = re.compile(f"({re.escape(IMAGE_PLACEHOLDER)}|{re.escape(VIDEO_PLACEHOLDER)})")
_USER_ROLES = {"user", "human"}
_ASSISTANT_ROLES = {"assistant", "gpt"}

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


@dataclass(frozen=True)
class ConversationTemplate:
    """Separator style TWO: ``sep`` after the system prompt and user turns; answers end with ``answer_suffix`` + EOS."""

    name: str
    system: str = VICUNA_SYSTEM
    roles: tuple[str, str] = ("USER", "ASSISTANT")
    sep: str = " "
    answer_suffix: str = ""


VICUNA_V1 = ConversationTemplate("vicuna_v1")
VIDEO_LAVIT_RELEASED = ConversationTemplate("video_lavit_released", answer_suffix=" \\n")
TEMPLATES = {t.name: t for t in (VICUNA_V1, VIDEO_LAVIT_RELEASED)}


@dataclass
class ConversationIds:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX except on answer tokens and their end token


def get_template(name: str) -> ConversationTemplate:
    if name not in TEMPLATES:
        raise ValueError(f"unknown conversation template {name!r}; known: {sorted(TEMPLATES)}")
    return TEMPLATES[name]


def normalize_messages(messages: Iterable[Any]) -> list[tuple[str, str | None]]:
    """``[(user, answer|None), …]`` from dicts (``role``/``from`` + ``content``/``value``, LLaVA JSON) or pairs."""
    flat: list[tuple[str, str | None]] = []
    for m in messages:
        if isinstance(m, dict):
            role = m.get("role", m.get("from"))
            text = m.get("content", m.get("value"))
        else:
            role, text = m
        role = str(role).lower()
        if role in _USER_ROLES:
            flat.append(("user", text))
        elif role in _ASSISTANT_ROLES:
            flat.append(("assistant", text))
        else:
            raise ValueError(f"unknown conversation role {role!r}; use user/human or assistant/gpt")
    turns: list[tuple[str, str | None]] = []
    for i in range(0, len(flat), 2):
        user = flat[i]
        answer = flat[i + 1] if i + 1 < len(flat) else ("assistant", None)
        if user[0] != "user" or answer[0] != "assistant":
            raise ValueError(f"messages must alternate user, assistant starting with user (turn {i // 2})")
        if user[1] is None:
            raise ValueError(f"user message of turn {i // 2} is empty")
        if answer[1] is None and i + 2 < len(flat):
            raise ValueError(f"only the last answer may be missing (turn {i // 2} has none)")
        turns.append((str(user[1]), None if answer[1] is None else str(answer[1])))
    if not turns:
        raise ValueError("a conversation needs at least one user message")
    return turns


def render(messages: Iterable[Any], template: ConversationTemplate = VICUNA_V1, eos: str = "</s>") -> str:
    """The template as text (for logs and inspection); ``build_conversation`` produces the ids of this string."""
    t = template
    out = t.system + t.sep
    for user, answer in normalize_messages(messages):
        out += f"{t.roles[0]}: {user}{t.sep}"
        out += f"{t.roles[1]}:" if answer is None else f"{t.roles[1]}: {answer}{t.answer_suffix}{eos}"
    return out


def _encode(tokenizer, text: str) -> list[int]:
    if not text:
        return []
    ids = tokenizer.encode(text, add_special_tokens=False)
    return list(getattr(ids, "ids", ids))  # a tokenizers.Tokenizer returns an Encoding


def _answer_ids(tokenizer, before: str, answer: str) -> list[int]:
    """The answer's ids as in a one-pass encoding of ``before + " " + answer`` (the rendered text)."""
    head = _encode(tokenizer, before)
    joint = _encode(tokenizer, f"{before} {answer}")
    if joint[: len(head)] == head:
        return joint[len(head) :]
    return _encode(tokenizer, answer)  # a token spans the boundary: fall back to the answer on its own


def build_conversation(
    messages: Iterable[Any],
    tokenizer,
    media: Sequence[Sequence[int]] = (),
    template: ConversationTemplate | str = VICUNA_V1,
    vocab: Vocab | None = None,
    bos_id: int | None = None,
    eos_id: int | None = None,
    add_bos: bool = True,
) -> ConversationIds:
    """Ids and labels of a conversation; the i-th ``<image>``/``<video>`` becomes ``media[i]`` (the caller's id span).

    BOS/EOS default to the tokenizer's. With ``vocab``, text ids must be below ``vocab.text_size``, media ids not.
    A missing last answer gives an inference prompt ending in ``ASSISTANT:`` with no targets.
    """
    t = get_template(template) if isinstance(template, str) else template
    if bos_id is None and add_bos:
        bos_id = getattr(tokenizer, "bos_token_id", None)
    if eos_id is None:
        eos_id = getattr(tokenizer, "eos_token_id", None)
    turns = normalize_messages(messages)
    if eos_id is None and any(answer is not None for _, answer in turns):
        raise ValueError("no eos_id given and the tokenizer has no eos_token_id: answers need an end token")

    ids: list[int] = [bos_id] if (add_bos and bos_id is not None) else []
    labels: list[int] = [IGNORE_INDEX] * len(ids)
    media_iter = iter(media)
    used = 0

    def add_context(text: str) -> str:
        """Add prompt text with its media; return the text after the last placeholder."""
        nonlocal used
        last = ""
        for piece in _PLACEHOLDER.split(text):
            if piece in (IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER):
                span = next(media_iter, None)
                if span is None:
                    raise ValueError(f"more <image>/<video> placeholders than the {len(media)} media given")
                span = [int(x) for x in span]
                if vocab is not None and any(not vocab.text_size <= x < vocab.size for x in span):
                    raise ValueError(f"media {used} has ids outside the media range [{vocab.text_size}, {vocab.size})")
                used += 1
                ids.extend(span)
                labels.extend([IGNORE_INDEX] * len(span))
                last = ""
            else:
                add_ids(_encode(tokenizer, piece), target=False)
                last = piece
        return last

    def add_ids(piece: list[int], target: bool) -> None:
        if vocab is not None and any(x >= vocab.text_size for x in piece):
            raise ValueError(f"the tokenizer produced an id >= text_size {vocab.text_size}, where media ids start")
        ids.extend(piece)
        labels.extend(piece if target else [IGNORE_INDEX] * len(piece))

    context = t.system + t.sep
    for user, answer in turns:
        context += f"{t.roles[0]}: {user}{t.sep}{t.roles[1]}:"
        before = add_context(context)
        context = ""
        if answer is not None:
            add_ids(_answer_ids(tokenizer, before, answer + t.answer_suffix), target=True)
            ids.append(int(eos_id))
            labels.append(int(eos_id))
    if used != len(media):
        raise ValueError(f"{len(media)} media given but the conversation has {used} <image>/<video> placeholders")
    return ConversationIds(ids, labels)


def build_prompt(
    question: str,
    tokenizer,
    media: Sequence[Sequence[int]] = (),
    placeholder: str | None = VIDEO_PLACEHOLDER,
    **kwargs,
) -> list[int]:
    """The official runner's prompt: ``"<video>\\n" + question`` (one placeholder per medium), up to ``ASSISTANT:``."""
    if placeholder and media and not _PLACEHOLDER.search(question):
        question = f"{placeholder}\n" * len(media) + question
    return build_conversation([("user", question)], tokenizer, media=media, **kwargs).input_ids
