"""Constrained generation from an UNTRAINED tiny LM: spans never leave their range; motion spans have exactly N."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from videolavit.inference.constraints import (
    SpanLogitsProcessor,
    generate_span,
    generate_text,
)
from videolavit.models.lm import build_lm
from videolavit.vocab import Vocab

VOCAB = Vocab(text_size=64, visual_codes=48, motion_codes=32)
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
        "max_position_embeddings": 256}
PROMPT = [1, 10, 11, 12, 13]  # bos + a caption
EOS = 2


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    return build_lm(VOCAB, TINY).eval()


class Tempted(nn.Module):
    """Wraps an LM and adds a large bonus to some ids: an LM that wants to leave its span (or close it early)."""

    def __init__(self, lm, ids, bonus: float = 30.0):
        super().__init__()
        self.lm, self.config = lm, lm.config
        self.register_buffer("bias", torch.zeros(VOCAB.size))
        self.bias[list(ids)] = bonus

    def forward(self, input_ids, past_key_values=None, use_cache=True):
        out = self.lm(input_ids=input_ids, past_key_values=past_key_values, use_cache=use_cache)
        out.logits = out.logits + self.bias
        return out


def _leave_motion(lm):
    """Wants text, visual codes and an early [/MOV]."""
    return Tempted(lm, [*range(VOCAB.text_size), *VOCAB.visual_range(), VOCAB.mov_end, VOCAB.img_start])


def _assert_motion_span(span, n):
    assert len(span) == n + 1, span
    assert span[-1] == VOCAB.mov_end
    assert all(t in VOCAB.motion_range() for t in span[:-1]), span


def test_motion_spans_always_have_exactly_n_codes(lm):
    settings = itertools.product([0, 1, 2], [0.7, 1.0, 2.5], [None, 5], [None, 0.9])
    for seed, temperature, top_k, top_p in settings:
        for model in (lm, _leave_motion(lm)):
            g = torch.Generator().manual_seed(seed)
            span = generate_span(model, PROMPT, "motion", VOCAB, 12, temperature=temperature, top_k=top_k,
                                 top_p=top_p, generator=g)
            _assert_motion_span(span, 12)


def test_paper_count_of_135_motion_codes(lm):
    span = generate_span(_leave_motion(lm), PROMPT, "motion", VOCAB, 135, temperature=1.0,
                         generator=torch.Generator().manual_seed(0))
    _assert_motion_span(span, 135)


def test_image_spans_stay_visual_and_respect_min_and_max(lm):
    for seed in range(6):
        g = torch.Generator().manual_seed(seed)
        span = generate_span(lm, PROMPT, "image", VOCAB, (3, 9), temperature=1.3, top_k=20, generator=g)
        assert 4 <= len(span) <= 10 and span[-1] == VOCAB.img_end
        assert all(t in VOCAB.visual_range() for t in span[:-1])
    closes_early = Tempted(lm, [VOCAB.img_end])
    assert len(generate_span(closes_early, PROMPT, "image", VOCAB, (3, 9), temperature=1.0)) == 3 + 1
    never_closes = Tempted(lm, [*range(VOCAB.text_size), *VOCAB.motion_range()])
    span = generate_span(never_closes, PROMPT, "image", VOCAB, (3, 9), temperature=1.0)
    assert len(span) == 9 + 1 and all(t in VOCAB.visual_range() for t in span[:-1])


def test_kv_cache_decoding_equals_full_recomputation(lm):
    span = generate_span(lm, PROMPT, "motion", VOCAB, 10, temperature=0)
    ids = PROMPT + [VOCAB.mov_start]
    constraint = SpanLogitsProcessor(VOCAB, "motion", len(ids), 10)
    reference = []
    with torch.no_grad():
        while not reference or reference[-1] != VOCAB.mov_end:
            x = torch.tensor([ids + reference])  # [1, L]
            scores = constraint(x, lm(input_ids=x, use_cache=False).logits[:, -1])
            reference.append(int(scores.argmax()))
    assert span == reference


def test_processor_works_inside_transformers_generate(lm):
    ids = torch.tensor([PROMPT + [VOCAB.mov_start]])  # [1, L]
    processor = SpanLogitsProcessor(VOCAB, "motion", ids.shape[1], 8)
    torch.manual_seed(0)
    out = lm.generate(ids, logits_processor=[processor], do_sample=True, top_k=0, max_new_tokens=20,
                      eos_token_id=VOCAB.mov_end, pad_token_id=0)
    _assert_motion_span(out[0, ids.shape[1]:].tolist(), 8)


def test_sampling_is_reproducible_per_seed(lm):
    def sample(seed):
        g = torch.Generator().manual_seed(seed)
        return generate_span(lm, PROMPT, "motion", VOCAB, 16, temperature=1.0, generator=g)

    assert sample(3) == sample(3)
    assert len({tuple(sample(s)) for s in range(4)}) > 1


def test_guidance(lm):
    plain = generate_span(lm, PROMPT, "motion", VOCAB, 10, temperature=0)
    assert generate_span(lm, PROMPT, "motion", VOCAB, 10, temperature=0, guidance_scale=1.0) == plain
    # scale 0 keeps only the unconditional branch: the prompt without its text, i.e. the span opener alone
    unconditional = generate_span(lm, [VOCAB.mov_start], "motion", VOCAB, 10, temperature=0)
    assert generate_span(lm, PROMPT, "motion", VOCAB, 10, temperature=0, guidance_scale=0.0) == unconditional
    guided = generate_span(lm, PROMPT, "motion", VOCAB, 10, temperature=1.0, guidance_scale=7.0,
                           generator=torch.Generator().manual_seed(0))
    _assert_motion_span(guided, 10)


def test_image_to_video_continues_after_the_keyframe_and_an_open_span(lm):
    keyframe = VOCAB.image_span([1, 2, 3])
    _assert_motion_span(generate_span(lm, PROMPT + keyframe, "motion", VOCAB, 6, temperature=1.0), 6)
    partial = PROMPT + keyframe + VOCAB.motion_span([4, 5])[:-1]  # [MOV] + 2 codes already there
    _assert_motion_span(generate_span(lm, partial, "motion", VOCAB, 6, temperature=1.0), 4)  # the 4 still missing


def test_text_decoding_never_emits_media_ids(lm):
    wants_media = Tempted(lm, [*range(VOCAB.text_size, VOCAB.size)])
    for seed in range(4):
        out = generate_text(wants_media, PROMPT, VOCAB, 15, eos_id=EOS, temperature=1.5,
                            generator=torch.Generator().manual_seed(seed))
        assert len(out) <= 15 and all(0 <= t < VOCAB.text_size for t in out) and EOS not in out
    assert generate_text(Tempted(lm, [EOS]), PROMPT, VOCAB, 15, eos_id=EOS) == []  # stops at EOS
    assert len(generate_text(Tempted(lm, [5]), PROMPT, VOCAB, 7, eos_id=EOS)) == 7


def test_bad_requests_are_clear_errors(lm):
    with pytest.raises(ValueError, match="kind"):
        generate_span(lm, PROMPT, "audio", VOCAB, 4)
    with pytest.raises(ValueError, match="exact length"):
        generate_span(lm, PROMPT, "motion", VOCAB, (2, 5))
    with pytest.raises(ValueError, match="inside a span"):
        generate_span(lm, PROMPT + [VOCAB.img_start, VOCAB.visual_offset], "motion", VOCAB, 4)
    with pytest.raises(ValueError, match="positions"):
        generate_span(lm, PROMPT, "motion", VOCAB, 300)
    with pytest.raises(ValueError, match="eos_id"):
        generate_text(lm, PROMPT, VOCAB, 5, eos_id=VOCAB.img_end)
