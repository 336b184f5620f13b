"""Question answering about media with an instruction-tuned LM: greedy text answers, every non-text id suppressed."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from videolavit.inference.constraints import TextOnlyLogitsProcessor, generate_text
from videolavit.data.conversation import IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER, build_prompt, get_template
from videolavit.vocab import Vocab


def _placeholder(media: Sequence[int], vocab: Vocab) -> str:
    return VIDEO_PLACEHOLDER if vocab.mov_start in media else IMAGE_PLACEHOLDER


def _clean_answer(text: str, template) -> str:
    suffix = template.answer_suffix.strip()
    if suffix and suffix in text:  # the released template ends answers with a literal "\n"
        text = text.split(suffix, 1)[0]
    return text.strip()


def question_prompts(tokenizer, vocab: Vocab, media_ids_list, questions, template="vicuna_v1") -> list[list[int]]:
    """Each question as an inference prompt (``... ASSISTANT:``), its medium (None: text only) in place of the tag."""
    if len(media_ids_list) != len(questions):
        raise ValueError(f"got {len(media_ids_list)} media for {len(questions)} questions")
    prompts = []
    for media, question in zip(media_ids_list, questions):
        media = [] if media is None else [int(t) for t in media]
        spans = [media] if media else []
        placeholder = _placeholder(media, vocab) if media else None
        prompts.append(build_prompt(question, tokenizer, media=spans, placeholder=placeholder, template=template, vocab=vocab))
    return prompts


@torch.no_grad()
def answer_questions(
    model,
    tokenizer,
    vocab: Vocab,
    media_ids_list: Sequence[Optional[Sequence[int]]],
    questions: Sequence[str],
    max_new_tokens: int = 16,
    template="vicuna_v1",
    batch_size: int = 16,
) -> list[str]:
    """Greedy text answers (ids ≥ text_size suppressed), one per (medium, question).

    ``batch_size`` 1 decodes each prompt with ``generate_text`` (KV cache); larger batches left-pad prompts of similar
    length and run transformers' ``generate`` with the same text-only mask, which gives the same greedy answers.
    """
    t = get_template(template) if isinstance(template, str) else template
    prompts = question_prompts(tokenizer, vocab, media_ids_list, questions, t)
    eos = int(tokenizer.eos_token_id)
    answers: list[Optional[list[int]]] = [None] * len(prompts)
    if batch_size <= 1:
        for i, prompt in enumerate(prompts):
            answers[i] = generate_text(model, prompt, vocab, max_new_tokens, eos)
    else:
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            for i, ids in zip(chunk, _generate_batch(model, [prompts[i] for i in chunk], vocab, max_new_tokens, eos)):
                answers[i] = ids
    return [_clean_answer(tokenizer.decode(ids, skip_special_tokens=True), t) for ids in answers]


def _generate_batch(model, prompts: list[list[int]], vocab: Vocab, max_new_tokens: int, eos: int) -> list[list[int]]:
    from transformers import GenerationConfig, LogitsProcessorList

    device = next(model.parameters()).device
    length = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), length), eos, dtype=torch.long, device=device)  # [B, L], left-padded
    mask = torch.zeros((len(prompts), length), dtype=torch.long, device=device)  # [B, L]
    for row, prompt in enumerate(prompts):
        ids[row, length - len(prompt) :] = torch.as_tensor(prompt, device=device)
        mask[row, length - len(prompt) :] = 1
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos, pad_token_id=eos)
    was_training = model.training
    model.eval()
    try:
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config,
                             logits_processor=LogitsProcessorList([TextOnlyLogitsProcessor(vocab)]))
    finally:
        model.train(was_training)
    result = []
    for row in out[:, length:].tolist():
        result.append(row[: row.index(eos)] if eos in row else row)
    return result


@torch.no_grad()
def answer_with_features(model, tokenizer, vocab: Vocab, embedder, media_ids_list, images_list, questions,
                         max_new_tokens: int = 16, template="vicuna_v1") -> list[str]:
    """Greedy text answers of an LM that reads continuous image features (the released understanding LM).

    ``media_ids_list[i]``: the medium's ids (its ``[IMG] … [/IMG]`` spans are placeholders, motion spans stay ids);
    ``images_list[i]``: uint8 [H, W, 3] images, one per image span in order; ``embedder``: a ``VisualEmbedder``.
    """
    features_list = []
    for images in images_list:
        has_images = images is not None and len(images) > 0
        features_list.append(embedder(embedder.tokenizer.preprocess(np.stack(images))) if has_images else [])
    scored = answer_from_features(model, tokenizer, vocab, media_ids_list, features_list, questions, max_new_tokens,
                                  template)
    return [answer for answer, _ in scored]


@torch.no_grad()
def answer_from_features(model, tokenizer, vocab: Vocab, media_ids_list, features_list, questions,
                         max_new_tokens: int = 16, template="vicuna_v1") -> list[tuple[str, float]]:
    """(greedy answer, its log-probability) per question; ``features_list[i]``: one [k, hidden] tensor per image span
    of ``media_ids_list[i]`` (the ``VisualEmbedder``'s output), spliced into the prompt's ``inputs_embeds``.

    The log-probability sums the chosen tokens' (the closing EOS included when reached) under the text-only mask."""
    from videolavit.models.understanding import embed_with_features

    t = get_template(template) if isinstance(template, str) else template
    prompts = question_prompts(tokenizer, vocab, media_ids_list, questions, t)
    eos = int(tokenizer.eos_token_id)
    text_only = TextOnlyLogitsProcessor(vocab)
    device = next(model.parameters()).device
    answers = []
    was_training = model.training
    model.eval()
    try:
        for prompt, features in zip(prompts, features_list):
            embeds = embed_with_features(model, prompt, features, vocab)
            result = model(inputs_embeds=embeds[None], use_cache=True)
            out: list[int] = []
            logprob = 0.0
            while len(out) < max_new_tokens:
                scores = text_only(None, result.logits[:, -1].float()).log_softmax(-1)  # [1, V]
                token = int(scores.argmax(-1))
                logprob += float(scores[0, token])
                if token == eos:
                    break
                out.append(token)
                step = torch.tensor([[token]], device=device)
                result = model(input_ids=step, past_key_values=result.past_key_values, use_cache=True)
            answers.append((_clean_answer(tokenizer.decode(out, skip_special_tokens=True), t), logprob))
    finally:
        model.train(was_training)
    return answers
