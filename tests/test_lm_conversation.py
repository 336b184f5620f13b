"""The Vicuna-v1 conversation template: ids, answer-only labels, media placeholders, inference prompts."""

from __future__ import annotations

import pytest

from videolavit.data.conversation import (
    IGNORE_INDEX,
    VICUNA_SYSTEM,
    VIDEO_LAVIT_RELEASED,
    build_conversation,
    build_prompt,
    render,
)
from videolavit.vocab import Vocab

VOCAB = Vocab(text_size=200, visual_codes=50, motion_codes=20)
BOS, EOS = 1, 2


class WordTokenizer:
    """Whitespace word-level tokenizer exposing only ``encode(text, add_special_tokens=False)``."""

    def __init__(self):
        self.ids: dict[str, int] = {}

    def encode(self, text, add_special_tokens=False):
        return [self.ids.setdefault(w, 3 + len(self.ids)) for w in text.split()]

    def decode(self, ids):
        words = {i: w for w, i in self.ids.items()} | {BOS: "<s>", EOS: "</s>"}
        return " ".join(words[i] for i in ids)


def _hf_tokenizer(words):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {w: 3 + i for i, w in enumerate(sorted(set(words)))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


CLIP = VOCAB.clip_span([3, 4, 5], [0, 1, 2, 3])
MESSAGES = [
    {"from": "human", "value": "<video>\nWhat moves?"},
    {"from": "gpt", "value": "a red ball"},
    {"from": "human", "value": "Where to?"},
    {"from": "gpt", "value": "to the left"},
]


def test_render_is_the_vicuna_v1_template():
    assert render(MESSAGES) == (
        f"{VICUNA_SYSTEM} USER: <video>\nWhat moves? ASSISTANT: a red ball</s>"
        "USER: Where to? ASSISTANT: to the left</s>"
    )
    assert render([("user", "hi")]).endswith(" USER: hi ASSISTANT:")
    assert render([("user", "q"), ("assistant", "a")], VIDEO_LAVIT_RELEASED).endswith("ASSISTANT: a \\n</s>")


def test_labels_cover_only_the_answers_and_their_end_token():
    tok = WordTokenizer()
    conv = build_conversation(MESSAGES, tok, media=[CLIP], vocab=VOCAB, bos_id=BOS, eos_id=EOS)
    assert len(conv.input_ids) == len(conv.labels)
    assert conv.input_ids[0] == BOS and conv.labels[0] == IGNORE_INDEX
    targets = [(i, t) for i, t in enumerate(conv.labels) if t != IGNORE_INDEX]
    assert all(conv.input_ids[i] == t for i, t in targets)
    assert tok.decode([t for _, t in targets]) == "a red ball </s> to the left </s>"
    # the clip sits where <video> was, with no loss on it
    start = conv.input_ids.index(VOCAB.img_start)
    assert conv.input_ids[start : start + len(CLIP)] == CLIP
    assert set(conv.labels[start : start + len(CLIP)]) == {IGNORE_INDEX}
    # the ids are the rendered text: every word, in order, the clip in place of <video>
    text_ids = [t for t in conv.input_ids if t < VOCAB.text_size]
    words = render(MESSAGES).replace("<video>", " ").replace("</s>", " </s> ").split()
    assert tok.decode(text_ids) == " ".join(["<s>", *words])


def test_inference_prompt_is_the_prefix_the_model_was_trained_on():
    tok = _hf_tokenizer(render(MESSAGES).replace("</s>", " ").split())
    conv = build_conversation(MESSAGES[:2], tok, media=[CLIP], vocab=VOCAB)
    prompt = build_prompt("What moves?", tok, media=[CLIP], vocab=VOCAB)
    assert conv.input_ids[: len(prompt)] == prompt
    assert all(label == IGNORE_INDEX for label in conv.labels[: len(prompt)])
    assert conv.labels[len(prompt) :] == conv.input_ids[len(prompt) :]  # everything after ASSISTANT: is target
    assert prompt[0] == tok.bos_token_id and conv.input_ids[-1] == tok.eos_token_id
    assert tok.decode(prompt[-1:]) == "ASSISTANT:"
    assert tok.decode(conv.input_ids[len(prompt) :], skip_special_tokens=True) == "a red ball"


def test_released_template_puts_the_literal_backslash_n_in_the_target():
    tok = WordTokenizer()
    conv = build_conversation([("user", "q"), ("assistant", "yes")], tok, template=VIDEO_LAVIT_RELEASED, eos_id=EOS)
    assert tok.decode([t for t in conv.labels if t != IGNORE_INDEX]) == "yes \\n </s>"


def test_several_media_go_in_order():
    tok = WordTokenizer()
    image = VOCAB.image_span([7, 8])
    conv = build_conversation([("user", "<image> then <video> ?"), ("assistant", "ok")], tok, media=[image, CLIP],
                              eos_id=EOS)
    i, j = conv.input_ids.index(VOCAB.img_start), conv.input_ids.index(VOCAB.mov_start)
    assert conv.input_ids[i : i + len(image)] == image
    assert conv.input_ids.index(VOCAB.img_start, i + 1) < j  # the clip's keyframe comes after the image


def test_bad_conversations_are_clear_errors():
    tok = WordTokenizer()
    with pytest.raises(ValueError, match="placeholders"):
        build_conversation(MESSAGES, tok, media=[], eos_id=EOS)
    with pytest.raises(ValueError, match="placeholders"):
        build_conversation(MESSAGES, tok, media=[CLIP, CLIP], eos_id=EOS)
    with pytest.raises(ValueError, match="media range"):
        build_conversation(MESSAGES, tok, media=[[5, 6]], vocab=VOCAB, eos_id=EOS)
    with pytest.raises(ValueError, match="alternate"):
        build_conversation([("assistant", "a"), ("user", "q")], tok, eos_id=EOS)
    with pytest.raises(ValueError, match="role"):
        build_conversation([("robot", "q")], tok, eos_id=EOS)
    with pytest.raises(ValueError, match="eos"):
        build_conversation([("user", "q"), ("assistant", "a")], tok)
    small = Vocab(text_size=4, visual_codes=2, motion_codes=2)
    with pytest.raises(ValueError, match="text_size"):
        build_conversation([("user", "many different words here")], tok, vocab=small, eos_id=EOS)


def test_ids_equal_one_pass_tokenization_with_a_llama_style_tokenizer():
    # Llama-2's SentencePiece adds a prefix space to every piece it encodes, also after </s>: then encoding piece by
    # piece (which keeps labels exact) gives the very ids of tokenizing the rendered conversation in one pass.
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    messages = [("user", "What moves in the video?"), ("assistant", "a red ball moves left"), ("user", "Why?"),
                ("assistant", "it is pushed")]
    text = render(messages)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.train_from_iterator([text.replace("</s>", " ")] * 5,
                            trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"]))
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    conv = build_conversation(messages, hf)
    assert conv.input_ids == [hf.bos_token_id] + hf.encode(text, add_special_tokens=False)
    answers = [t for t in conv.labels if t != IGNORE_INDEX]
    assert hf.decode(answers) == "a red ball moves left</s> it is pushed</s>"


def test_ids_equal_one_pass_tokenization_with_a_byte_level_bpe():
    # GPT-2-style byte-level BPE has no prefix space: "ASSISTANT: a" must still give "Ġa", not a bare "a".
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    messages = [("user", "What moves?"), ("assistant", "a red ball"), ("user", "Why?"), ("assistant", "a push")]
    text = render(messages)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([text.replace("</s>", " ")] * 5,
                            trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"],
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    conv = build_conversation(messages, hf)
    assert conv.input_ids == [hf.bos_token_id] + hf.encode(text, add_special_tokens=False)
    assert hf.decode([t for t in conv.labels if t != IGNORE_INDEX]) == " a red ball</s> a push</s>"
