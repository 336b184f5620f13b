"""The understanding LM's visual input: ``visual_weight.bin`` over the visual tokenizer's files → ``VisualEmbedder``.

The official understanding model loads ``tokenizer_encoder.bin`` into its DynamicVisualTokenizer and then
``language_model_sft/visual_weight.bin`` over it (the merger and ``vit_proj`` trained with the LM); its LM input for an
image is ``vit_proj`` of the merger's kept features (models/understanding.py). The same overlay, in our layout.
"""

from __future__ import annotations

import json
from pathlib import Path

from videolavit.errors import ReleaseFormatError

PREFIX = "model.visual_tokenizer."  # how the tensors are named inside the LM's own shards


def convert_visual_input(release: Path, out: Path, lm_dir: Path, options: dict):
    """(VisualEmbedder in eval mode, notes); the EVA must already be converted in ``out/eva_clip``."""
    from videolavit.convert.checkpoint import read_state_dict
    from videolavit.convert.visual_tokenizer import PAPER_HEADS, convert_visual_tokenizer, encoder_layout
    from videolavit.models.understanding import VisualEmbedder

    folder = release / "visual_tokenizer"
    weights = release / "language_model_sft" / "visual_weight.bin"
    encoder = read_state_dict(folder / "tokenizer_encoder.bin")
    decoder = read_state_dict(folder / "highres_tokenizer_decoder.bin")
    visual = {k.removeprefix(PREFIX): v for k, v in read_state_dict(weights).items()}
    eva = json.loads((out / "eva_clip" / "config.json").read_text())
    eva.pop("model_type", None)
    hidden = int(json.loads((lm_dir / "config.json").read_text())["hidden_size"])
    width = int(eva["width"])
    known = set(encoder_layout(width, 1, 1, 1, 1, hidden)) | set(encoder)
    # layer indices vary: compare names with the block number taken out
    pattern = {_blockless(k) for k in known}
    foreign = sorted(k for k in visual if _blockless(k) not in pattern)
    if foreign:
        raise ReleaseFormatError(f"'{weights}' has tensors no visual tokenizer has, e.g. {foreign[:4]}")
    merged = {**encoder, **visual}
    if "vit_proj.weight" not in merged:
        raise ReleaseFormatError(f"neither '{weights}' nor '{folder / 'tokenizer_encoder.bin'}' has vit_proj.weight")
    if tuple(merged["vit_proj.weight"].shape) != (hidden, width):
        raise ReleaseFormatError(f"'{weights}': vit_proj.weight is {list(merged['vit_proj.weight'].shape)}, the LM "
                                 f"(hidden {hidden}) over the EVA ({width}) needs [{hidden}, {width}]")
    tokenizer, notes = convert_visual_tokenizer(
        merged, decoder, teacher_path=str((out / "eva_clip").resolve()), eva=eva,
        heads=options.get("visual_heads", PAPER_HEADS), decoder_heads=options.get("visual_decoder_heads", PAPER_HEADS),
        where=str(weights),
    )
    embedder = VisualEmbedder(tokenizer, hidden)
    embedder.vit_proj.load_state_dict({"weight": merged["vit_proj.weight"].float(),
                                       "bias": merged["vit_proj.bias"].float()})
    replaced = sum(k in encoder for k in visual)
    notes = [n for n in notes if not n.startswith("vit_proj")]
    notes.append(f"visual_weight.bin replaced {replaced} of tokenizer_encoder.bin's tensors (the understanding merger)")
    return embedder.eval(), notes


def _blockless(name: str) -> str:
    import re

    return re.sub(r"\.blocks\.\d+\.", ".blocks.#.", name)
