"""The released understanding LM's visual input: continuous merger features through ``vit_proj``, not codes.

The official understanding model (``VideoLaVITLlamaForCausalLM``) replaces each image's ``[IMG] codes [/IMG]`` by
``[IMG]``, ``vit_proj(merger features of the kept patches)``, ``[/IMG]`` in ``inputs_embeds``; motion stays discrete
(``[MOV] ids [/MOV]`` through the embedding table, the same ids as ours). ``VisualEmbedder`` computes those features
with a ``VisualTokenizer`` holding the understanding merger (``visual_weight.bin``) and ``embed_with_features`` builds
the LM input: a prompt of ids whose image spans are placeholders, filled span by span.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from videolavit.errors import MissingArtifactError

MODEL_TYPE = "videolavit_visual_embedder"
FOLDER = "visual_input"  # inside an LM directory: the LM then reads continuous image features


class VisualEmbedder(nn.Module):
    """images [B, 3, S, S] → one [k_i, hidden] tensor per image: ``vit_proj`` of the tokenizer's merger features."""

    def __init__(self, tokenizer, hidden_size: int):
        super().__init__()
        self.tokenizer = tokenizer
        self.vit_proj = nn.Linear(int(tokenizer.config["width"]), int(hidden_size))

    def forward(self, images: torch.Tensor, sample: bool = False) -> list[torch.Tensor]:
        return [self.vit_proj(f) for f in self.tokenizer.encode_features(images, sample=sample)]

    def save_pretrained(self, directory) -> Path:
        """config.json + ``tokenizer/`` (a VisualTokenizer folder) + vit_proj.safetensors."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(directory / "tokenizer")
        save_file({k: v.detach().contiguous() for k, v in self.vit_proj.state_dict().items()},
                  str(directory / "vit_proj.safetensors"))
        config = {"model_type": MODEL_TYPE, "hidden_size": self.vit_proj.out_features}
        (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        return directory

    @classmethod
    def from_pretrained(cls, directory) -> "VisualEmbedder":
        from safetensors.torch import load_file

        from videolavit.models.visual_tokenizer import VisualTokenizer

        directory = Path(directory)
        files = [directory / "config.json", directory / "vit_proj.safetensors", directory / "tokenizer"]
        if not all(p.exists() for p in files):
            raise MissingArtifactError(f"no visual embedder in '{directory}' (expected config.json, "
                                       "vit_proj.safetensors and tokenizer/; written by import-official)")
        config = json.loads(files[0].read_text())
        model = cls(VisualTokenizer.from_pretrained(files[2]), config["hidden_size"])
        model.vit_proj.load_state_dict(load_file(str(files[1])))
        return model.eval()


def image_spans(ids: Sequence[int], vocab) -> list[tuple[int, int]]:
    """(start, end) of every ``[IMG] … [/IMG]`` in ``ids``: start at ``[IMG]``, end at ``[/IMG]`` (inclusive)."""
    spans, start = [], None
    for i, t in enumerate(ids):
        if t == vocab.img_start:
            start = i
        elif t == vocab.img_end and start is not None:
            spans.append((start, i))
            start = None
    return spans


def embed_with_features(lm, ids: Sequence[int], features: Sequence[torch.Tensor], vocab) -> torch.Tensor:
    """``inputs_embeds`` [L', hidden] of ``ids`` with image span i's codes replaced by ``features[i]`` [k_i, hidden]."""
    ids = [int(t) for t in ids]
    spans = image_spans(ids, vocab)
    if len(spans) != len(features):
        raise ValueError(f"the prompt has {len(spans)} image spans but {len(features)} images' features were given")
    table = lm.get_input_embeddings()
    device, dtype = table.weight.device, table.weight.dtype

    def embed(part: list[int]) -> torch.Tensor:
        return table(torch.tensor(part, dtype=torch.long, device=device))

    pieces, cursor = [], 0
    for (start, end), feats in zip(spans, features):
        pieces.append(embed(ids[cursor : start + 1]))  # text/motion before it, and [IMG]
        pieces.append(feats.to(device=device, dtype=dtype))
        cursor = end  # [/IMG] opens the next piece
    pieces.append(embed(ids[cursor:]))
    return torch.cat([p for p in pieces if len(p)], dim=0)
