"""The released generation LM (``language_model/``, a plain transformers Llama) → a safetensors checkpoint of ours.

The weights map 1:1 (same names, same 49,412-row id layout as ``vocab.PAPER_VOCAB``); the conversion only re-reads
every shard safely, checks each name and shape against the Llama layout its config.json implies, drops the rotary
``inv_freq`` buffers older transformers saved, and writes safetensors. Its slow sentencepiece tokenizer
(``use_fast=False`` in the official code) is converted once to ``tokenizer.json``, the fast form this project loads.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

from videolavit.errors import MissingArtifactError, ReleaseFormatError

INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
SINGLE_FILES = ("model.safetensors", "pytorch_model.bin")
COPIED_FILES = ("generation_config.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json")
DROPPED_SUFFIX = "rotary_emb.inv_freq"  # a recomputed buffer, persistent in transformers < 4.32


def llama_layout(config: dict) -> dict[str, tuple[int, ...]]:
    """Every tensor name of a transformers ``LlamaForCausalLM`` with this config.json, and its shape."""
    hidden, vocab = int(config["hidden_size"]), int(config["vocab_size"])
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or hidden // heads)
    inter, layers = int(config["intermediate_size"]), int(config["num_hidden_layers"])
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,)}
    if not config.get("tie_word_embeddings", False):
        shapes["lm_head.weight"] = (vocab, hidden)
    for i in range(layers):
        p = f"model.layers.{i}"
        out = {"q_proj": heads * head_dim, "k_proj": kv_heads * head_dim, "v_proj": kv_heads * head_dim}
        for name, rows in out.items():
            shapes[f"{p}.self_attn.{name}.weight"] = (rows, hidden)
        shapes[f"{p}.self_attn.o_proj.weight"] = (hidden, heads * head_dim)
        if config.get("attention_bias", False):
            for name, rows in {**out, "o_proj": hidden}.items():
                shapes[f"{p}.self_attn.{name}.bias"] = (rows,)
        shapes[f"{p}.mlp.gate_proj.weight"] = shapes[f"{p}.mlp.up_proj.weight"] = (inter, hidden)
        shapes[f"{p}.mlp.down_proj.weight"] = (hidden, inter)
        shapes[f"{p}.input_layernorm.weight"] = shapes[f"{p}.post_attention_layernorm.weight"] = (hidden,)
    return shapes


def _weight_files(source: Path) -> list[Path]:
    for name in INDEX_FILES:
        if (source / name).is_file():
            index = json.loads((source / name).read_text())
            return [source / f for f in sorted(set(index.get("weight_map", {}).values()))]
    for name in SINGLE_FILES:
        if (source / name).is_file():
            return [source / name]
    raise MissingArtifactError(f"'{source}' has no weights ({' / '.join(INDEX_FILES + SINGLE_FILES)})")


def _read_config(source: Path) -> dict:
    path = source / "config.json"
    if not path.is_file():
        raise MissingArtifactError(f"'{path}' is missing: the language model folder needs its transformers config")
    config = json.loads(path.read_text())
    if config.get("model_type") != "llama":
        raise ReleaseFormatError(f"'{path}' has model_type {config.get('model_type')!r}; the released LM is 'llama'")
    return config


def convert_language_model(
    source: Path, out: Path, writer: Callable, drop_prefixes: tuple[str, ...] = (), vocab_info: dict | None = None
) -> tuple[str, list[str], int]:
    """Write ``out`` (config, safetensors shards, tokenizer, ``vocab.json``); return (summary, notes, tensor count).

    ``drop_prefixes``: tensors of modules our LM does not have (the understanding LM's embedded tokenizers), skipped
    and counted in a note. ``vocab_info``: extra ``vocab.json`` keys (e.g. the conversation template)."""
    from videolavit.vocab import PAPER_VOCAB

    source = Path(source)
    config = _read_config(source)
    rows = int(config["vocab_size"])
    layout = llama_layout(config)
    files = _weight_files(source)
    notes: list[str] = []
    count = 0

    def write(tmp: Path) -> None:
        nonlocal count
        from safetensors.torch import save_file

        from videolavit.convert.checkpoint import read_state_dict

        tmp.mkdir(parents=True)
        weight_map: dict[str, str] = {}
        dropped = total = 0
        skipped: dict[str, int] = {}
        for i, path in enumerate(files):
            state = read_state_dict(path)
            kept = {}
            for name, tensor in state.items():
                if name.endswith(DROPPED_SUFFIX):
                    dropped += 1
                    continue
                prefix = next((p for p in drop_prefixes if name.startswith(p)), None)
                if prefix is not None:
                    skipped[prefix] = skipped.get(prefix, 0) + 1
                    continue
                if name not in layout:
                    raise ReleaseFormatError(f"'{path}' has '{name}', which a Llama with '{source / 'config.json'}' lacks")
                if tuple(tensor.shape) != layout[name]:
                    raise ReleaseFormatError(
                        f"'{path}': '{name}' has shape {list(tensor.shape)}, its config implies {list(layout[name])}"
                    )
                if name in weight_map:
                    raise ReleaseFormatError(f"'{path}': '{name}' is also in '{weight_map[name]}'")
                kept[name] = tensor.contiguous()
                total += tensor.numel() * tensor.element_size()
            shard = "model.safetensors" if len(files) == 1 else f"model-{i + 1:05d}-of-{len(files):05d}.safetensors"
            save_file(kept, str(tmp / shard), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(kept, shard))
            del state, kept
        missing = sorted(set(layout) - set(weight_map))
        if missing:
            raise ReleaseFormatError(f"'{source}' lacks {len(missing)} Llama tensor(s), e.g. {missing[:3]}")
        if len(files) > 1:
            index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
            (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        # our loader builds a plain LlamaForCausalLM (the understanding LM's subclass only adds the tokenizers)
        (tmp / "config.json").write_text(json.dumps({**config, "architectures": ["LlamaForCausalLM"]}, indent=2) + "\n")
        for name in COPIED_FILES:  # JSON and the sentencepiece proto: data, never unpickled
            if (source / name).is_file():
                shutil.copyfile(source / name, tmp / name)
        if dropped:
            notes.append(f"dropped {dropped} rotary_emb.inv_freq buffer(s) (recomputed from the config)")
        notes.extend(f"left out {n} '{p}*' tensor(s): no such module in our LM" for p, n in skipped.items())
        notes.append(_fast_tokenizer(tmp))
        if rows == PAPER_VOCAB.size:  # the official id layout (vocab.py): what load_lm_checkpoint needs beside it
            from videolavit.models.lm_checkpoint import VOCAB_FILE, write_lm_vocab

            write_lm_vocab(tmp, PAPER_VOCAB, source="import-official", **(vocab_info or {}))
            notes.append(f"{VOCAB_FILE}: the paper id layout {PAPER_VOCAB.text_size} text + {PAPER_VOCAB.visual_codes} "
                         f"visual + {PAPER_VOCAB.motion_codes} motion codes + 4 specials")
        count = len(weight_map)

    writer(out, write)
    if rows != PAPER_VOCAB.size:
        notes.append(f"vocab_size {rows} is not the paper layout's {PAPER_VOCAB.size}: no vocab.json written, so "
                     "generate/evaluate cannot load it until one says its text/visual/motion sizes")
    detail = (
        f"Llama, {config['num_hidden_layers']} layers, hidden {config['hidden_size']}, {rows} ids, "
        f"{len(files)} shard(s) -> safetensors"
    )
    return detail, notes, count


def _fast_tokenizer(folder: Path) -> str:
    """Convert the slow sentencepiece tokenizer in ``folder`` to ``tokenizer.json``; a note saying what happened.

    Reads the sentencepiece proto with protobuf (no sentencepiece package needed) and lets transformers build the
    equivalent BPE from the piece scores; BOS/EOS follow the release's tokenizer_config.json as the slow one did.
    """
    if (folder / "tokenizer.json").is_file():
        return "tokenizer.json came with the release"
    if not (folder / "tokenizer.model").is_file():
        return "no tokenizer.model in the release: set the text tokenizer path yourself"
    try:
        from tokenizers import processors
        from transformers import PreTrainedTokenizerFast
        from transformers.convert_slow_tokenizer import SpmConverter, import_protobuf

        proto = import_protobuf().ModelProto()
        proto.ParseFromString((folder / "tokenizer.model").read_bytes())
        settings = json.loads((folder / "tokenizer_config.json").read_text()) if (folder / "tokenizer_config.json").is_file() else {}
        legacy = settings.get("legacy")
        backend = SpmConverter.build_tokenizer_from_spm_proto(
            proto, {p.piece: i for i, p in enumerate(proto.pieces)}, legacy=True if legacy is None else bool(legacy)
        )  # legacy None: the slow LlamaTokenizer's default, the legacy behaviour
        bos, eos, unk = (proto.trainer_spec.bos_piece, proto.trainer_spec.eos_piece, proto.trainer_spec.unk_piece)
        ids = {bos: proto.trainer_spec.bos_id, eos: proto.trainer_spec.eos_id}
        head = [bos] if settings.get("add_bos_token", True) else []
        tail = [eos] if settings.get("add_eos_token", False) else []
        single = " ".join([*head, "$A", *tail])
        pair = " ".join([*head, "$A", *tail, *head, "$B", *tail])
        backend.post_processor = processors.TemplateProcessing(
            single=single, pair=pair, special_tokens=[(t, ids[t]) for t in dict.fromkeys(head + tail)]
        )
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=bos, eos_token=eos, unk_token=unk)
        tokenizer.save_pretrained(str(folder))
    except Exception as exc:  # protobuf missing, or a transformers without build_tokenizer_from_spm_proto
        return f"tokenizer.model NOT converted to tokenizer.json ({type(exc).__name__}: {exc})"
    return f"sentencepiece tokenizer converted to tokenizer.json ({len(tokenizer)} ids)"
