"""The text tokenizer: a local pretrained one (Llama-2's for the paper profile) or a byte-level BPE on the corpus.

Both paths return a transformers fast tokenizer (``PreTrainedTokenizerFast``, or a subclass such as LlamaTokenizer),
so the LM and the tokenize stage see one type. The BPE one puts ``<pad> <s> </s> <unk>`` at ids 0–3 and, like Llama,
prepends ``<s>`` (BOS) and no EOS when ``add_special_tokens`` is on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

from videolavit.errors import ConfigError, MissingArtifactError

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")  # ids 0, 1, 2, 3
_BYTE_ALPHABET = 256


def _check_text_size(tokenizer, text_size: Optional[int], where: str):
    if text_size is not None and len(tokenizer) > text_size:
        raise ConfigError(
            f"the text tokenizer in '{where}' has {len(tokenizer)} ids but the vocabulary reserves {text_size} "
            "text ids (vocab text_size); its ids would collide with [IMG] and the visual codes"
        )
    return tokenizer


def load_text_tokenizer(path, text_size: Optional[int] = None):
    """``AutoTokenizer.from_pretrained`` on a local directory; ``text_size`` checks the ids fit the vocabulary."""
    directory = Path(path)
    if not directory.is_dir():
        raise MissingArtifactError(
            f"text tokenizer directory '{path}' does not exist (a saved transformers tokenizer, e.g. Llama-2's, "
            "or one made by train_bpe_tokenizer)"
        )
    from transformers import AutoTokenizer

    from videolavit.pretrained import LOCAL, load_error

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory), **LOCAL)
    except Exception as exc:  # OSError/ValueError from transformers with hub hints that do not apply offline
        raise load_error(exc, directory, "a text tokenizer") from None
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(f"the tokenizer in '{path}' is a slow tokenizer; save it with tokenizer.json (a fast one)")
    return _check_text_size(tokenizer, text_size, str(path))


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int, out_dir, min_frequency: int = 2):
    """Train a byte-level BPE on ``texts``, save tokenizer.json + the transformers files to ``out_dir``, return it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    smallest = _BYTE_ALPHABET + len(SPECIAL_TOKENS)
    if vocab_size < smallest:
        raise ConfigError(
            f"a byte-level BPE needs vocab_size ≥ {smallest} (256 bytes + 4 special tokens), got {vocab_size}"
        )
    texts = list(texts)
    if not any(t.strip() for t in texts):
        raise ValueError("train_bpe_tokenizer needs at least one non-empty text")

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodable: <unk> never needed
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    wrapped.save_pretrained(str(out))
    return wrapped
