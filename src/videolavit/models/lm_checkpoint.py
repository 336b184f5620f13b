"""A trained LM directory that stands alone (the LM's counterpart of the other models' ``save_pretrained``).

``save_lm_checkpoint`` writes the transformers model (safetensors + config.json), the text tokenizer beside it and
``vocab.json`` (the unified id layout), so ``load_lm_checkpoint(dir)`` needs nothing else: no config, no token shards.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import torch

from videolavit.errors import MissingArtifactError
from videolavit.vocab import Vocab

VOCAB_FILE = "vocab.json"


def save_lm_checkpoint(model, tokenizer, vocab: Vocab, out_dir, state_dict: Optional[dict] = None, **extra: Any) -> Path:
    """Model + tokenizer + ``vocab.json`` (with ``extra`` keys, e.g. motion_tokens_per_clip) into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), state_dict=state_dict, safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    write_lm_vocab(out, vocab, **extra)
    return out


def write_lm_vocab(out_dir, vocab: Vocab, **extra: Any) -> Path:
    """``vocab.json`` of an LM directory: the id layout (and ``extra``), what ``load_lm_checkpoint`` reads."""
    info = {"text_size": vocab.text_size, "visual_codes": vocab.visual_codes, "motion_codes": vocab.motion_codes,
            "size": vocab.size, "special_ids": vocab.special_ids, **extra}
    path = Path(out_dir) / VOCAB_FILE
    path.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return path


def read_lm_vocab(directory) -> tuple[Vocab, dict]:
    """The vocabulary of a saved LM and everything else its vocab.json holds."""
    path = Path(directory) / VOCAB_FILE
    if not path.is_file():
        raise MissingArtifactError(f"'{directory}' has no {VOCAB_FILE}: not an LM saved by the pretrain/instruct stages "
                                   "or imported by `videolavit import-official`")
    info = json.loads(path.read_text())
    return Vocab(int(info["text_size"]), int(info["visual_codes"]), int(info["motion_codes"])), info


def load_lm_checkpoint(directory, dtype=None, device: str | torch.device = "cpu"):
    """``(model, tokenizer, vocab)`` of an LM directory written by ``save_lm_checkpoint`` (model in eval mode)."""
    from videolavit.models.lm import build_lm
    from videolavit.data.text_tokenizer import load_text_tokenizer

    directory = Path(directory)
    if not directory.is_dir():
        raise MissingArtifactError(f"LM directory '{directory}' does not exist. Run `videolavit pretrain` first.")
    vocab, _ = read_lm_vocab(directory)
    model = build_lm(vocab, pretrained_path=str(directory), dtype=dtype)
    tokenizer = load_text_tokenizer(directory, vocab.text_size)
    return model.to(device).eval(), tokenizer, vocab
