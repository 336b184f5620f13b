"""Corpus-trained evaluators: a video attribute classifier and a small CLIP, for when no I3D / CLIP weights are given.

``VideoAttributeClassifier`` is a 3D-conv net with one head per corpus attribute (shape, color, direction, ...). Its
penultimate features are a Fréchet-distance extractor (``FrechetVideoDistance(classifier)`` → ``t2v/fvd_corpus``) and
its predictions give attribute accuracy of generated videos. ``CorpusCLIP`` pairs a word-level text encoder with a
frame encoder (contrastive InfoNCE) and plugs into ``CLIPSim`` (→ ``t2v/clipsim_corpus``). Both are proxies: their
numbers say how well a model reproduces *this corpus*, never comparable with the paper's I3D FVD or CLIP ViT-B/16.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from videolavit.errors import MissingArtifactError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
VOCAB_NAME = "vocab.json"
CLASSIFIER_DIR = "classifier"
CLIP_DIR = "clip"
IGNORE_LABEL = -100  # cross_entropy's ignore_index: a clip without a value for this attribute


def _check_videos(videos: torch.Tensor, what: str) -> None:
    if not isinstance(videos, torch.Tensor) or videos.ndim != 5 or videos.shape[1] != 3:
        shape = list(videos.shape) if isinstance(videos, torch.Tensor) else type(videos).__name__
        raise ValueError(f"{what} expects videos as a [B, 3, T, H, W] tensor (RGB, channels before time), got {shape}")


def _to_unit_range(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 (or float in [0, 255]) → float32 in [-1, 1]."""
    return pixels.float() / 127.5 - 1.0


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resize the last two (spatial) axes of ``[N, C, H, W]`` or ``[N, C, T, H, W]``; time is never resampled."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    target = (*x.shape[2:-2], *size)
    if x.shape[-2] >= size[0] and x.shape[-1] >= size[1]:
        return F.adaptive_avg_pool3d(x, target) if x.ndim == 5 else F.adaptive_avg_pool2d(x, target)  # area: no aliasing
    return F.interpolate(x, size=target, mode="trilinear" if x.ndim == 5 else "bilinear", align_corners=False)


def _norm(channels: int) -> nn.GroupNorm:
    # GroupNorm, not BatchNorm: features must not depend on the batch they are extracted in (FVD batches vary).
    return nn.GroupNorm(min(8, channels), channels)


class _Pretrained(nn.Module):
    """save_pretrained / from_pretrained as config.json + model.safetensors (+ the subclass's extra files)."""

    config: dict

    def _save_extra(self, out: Path) -> None:
        pass

    @classmethod
    def _load_kwargs(cls, path: Path, config: dict) -> dict:
        return config

    def save_pretrained(self, directory: str | Path) -> Path:
        from safetensors.torch import save_model

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        (out / CONFIG_NAME).write_text(json.dumps(self.config, indent=2) + "\n")
        save_model(self, str(out / WEIGHTS_NAME))
        self._save_extra(out)
        return out

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu"):
        from safetensors.torch import load_model

        path = Path(directory)
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            if not (path / name).is_file():
                raise MissingArtifactError(
                    f"{cls.__name__} not found: '{path / name}' is missing (train it with `videolavit evaluators`)"
                )
        model = cls(**cls._load_kwargs(path, json.loads((path / CONFIG_NAME).read_text())))
        load_model(model, str(path / WEIGHTS_NAME), device=str(map_location))
        return model.eval()


# --------------------------------------------------------------------------------------------------------------------
# Video attribute classifier (FVD features + attribute accuracy)


class VideoAttributeClassifier(_Pretrained):
    """3D-conv video classifier, one head per attribute. ``forward(uint8 [B, 3, T, H, W])`` → features ``[B, D]``."""

    extractor_name = "corpus"

    def __init__(
        self,
        attributes: dict[str, list[str]],
        input_size: Sequence[int] = (32, 48),
        patch: int = 4,
        channels: Sequence[int] = (32, 64, 128),
        feature_dim: int = 128,
        dropout: float = 0.1,
    ):
        super().__init__()
        if not attributes or any(len(v) < 2 for v in attributes.values()):
            raise ValueError(f"the classifier needs at least one attribute with ≥ 2 values, got {attributes}")
        self.attributes = {str(k): [str(x) for x in v] for k, v in attributes.items()}
        self.input_size = tuple(int(s) for s in input_size)
        if any(s % patch for s in self.input_size):
            raise ValueError(f"classifier input_size {list(self.input_size)} must be divisible by patch={patch}")
        self.config = {
            "attributes": self.attributes, "input_size": list(self.input_size), "patch": int(patch),
            "channels": [int(c) for c in channels], "feature_dim": int(feature_dim), "dropout": float(dropout),
        }
        # The stem sees 3 consecutive full-resolution frames per patch, so sub-pixel motion (slow objects move under a
        # pixel per frame at the tiny size) is measured before anything is down-sampled; later layers halve T, H, W.
        self.stem = nn.Sequential(
            nn.Conv3d(3, channels[0], (3, patch, patch), stride=(1, patch, patch), padding=(1, 0, 0)),
            _norm(channels[0]),
            nn.GELU(),
        )
        layers: list[nn.Module] = []
        previous = channels[0]
        for width in channels[1:]:
            layers += [nn.Conv3d(previous, width, 3, stride=2, padding=1), _norm(width), nn.GELU()]
            previous = width
        self.trunk = nn.Sequential(*layers)
        self.project = nn.Sequential(nn.Linear(2 * (channels[0] + previous), feature_dim), nn.GELU())
        self.dropout = nn.Dropout(dropout)
        self.heads = nn.ModuleDict({name: nn.Linear(feature_dim, len(values)) for name, values in self.attributes.items()})

    @property
    def num_features(self) -> int:
        return int(self.config["feature_dim"])

    def features(self, videos: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, 3, T, H, W]`` in [0, 255] → penultimate features ``[B, D]`` (frames resized to ``input_size``)."""
        _check_videos(videos, "VideoAttributeClassifier")
        x = _resize(_to_unit_range(videos).contiguous(), self.input_size)  # [B, 3, T, h, w]
        stem = self.stem(x)  # [B, C0, T, h/p, w/p]
        deep = self.trunk(stem).flatten(2)  # [B, C, t·h·w]
        stem = stem.flatten(2)
        # Max pooling finds a small object anywhere in the clip (the mean alone drowns it in the background); pooling
        # the stem too keeps patch-level evidence (a red patch) that the deep layers blur with the texture around it.
        pooled = [stem.mean(-1), stem.amax(-1), deep.mean(-1), deep.amax(-1)]
        return self.project(torch.cat(pooled, dim=1))  # [B, D]

    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        return self.features(videos)

    def classify(self, videos: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits per attribute, ``{name: [B, K_name]}``."""
        h = self.dropout(self.features(videos))
        return {name: head(h) for name, head in self.heads.items()}

    @torch.no_grad()
    def predict(self, videos: torch.Tensor) -> dict[str, list[str]]:
        """The most likely value of each attribute per video, e.g. ``{"color": ["red", ...], ...}``."""
        logits = self.classify(videos)
        return {name: [self.attributes[name][i] for i in scores.argmax(-1).tolist()] for name, scores in logits.items()}

    def accuracy(self, videos: torch.Tensor, targets: Sequence[dict]) -> dict[str, float]:
        """Fraction of videos whose predicted value equals ``targets[i][name]``, per attribute the targets name."""
        if len(targets) != videos.shape[0]:
            raise ValueError(f"got {videos.shape[0]} videos but {len(targets)} target dicts")
        predictions = self.predict(videos)
        out = {}
        for name, predicted in predictions.items():
            pairs = [(p, t[name]) for p, t in zip(predicted, targets) if t.get(name) is not None]
            if pairs:
                out[name] = sum(p == str(t) for p, t in pairs) / len(pairs)
        return out


# --------------------------------------------------------------------------------------------------------------------
# Corpus CLIP (CLIPSIM proxy)


class WordTokenizer:
    """Lowercased words of the corpus captions; id 0 pads, id 1 is any word not seen when it was built."""

    PAD, UNK = "<pad>", "<unk>"
    _WORD = re.compile(r"[a-z0-9]+")

    def __init__(self, words: Sequence[str]):
        words = list(words)
        if words[:2] != [self.PAD, self.UNK]:
            raise ValueError(f"a WordTokenizer vocabulary starts with {self.PAD!r}, {self.UNK!r}; got {words[:2]}")
        self.words = words
        self.ids = {w: i for i, w in enumerate(words)}

    @classmethod
    def split(cls, text: str) -> list[str]:
        return cls._WORD.findall(str(text).lower())

    @classmethod
    def build(cls, texts: Iterable[str], min_count: int = 1) -> "WordTokenizer":
        counts: dict[str, int] = {}
        for text in texts:
            for word in cls.split(text):
                counts[word] = counts.get(word, 0) + 1
        return cls([cls.PAD, cls.UNK, *sorted(w for w, c in counts.items() if c >= min_count)])

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, texts: Sequence[str], max_length: int) -> torch.Tensor:
        """Word ids ``[N, L]`` (L = the longest text, at most ``max_length``), right-padded with 0."""
        if isinstance(texts, str):
            raise ValueError("WordTokenizer.encode takes a list of texts, not one string")
        # an empty text becomes one <unk>: a row of padding only would leave attention nothing to attend to
        rows = [[self.ids.get(w, 1) for w in self.split(t)][:max_length] or [1] for t in texts]
        ids = torch.zeros(len(rows), max(1, max((len(r) for r in rows), default=1)), dtype=torch.long)  # [N, L]
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        return ids

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"words": self.words}, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "WordTokenizer":
        return cls(json.loads(Path(path).read_text())["words"])


class CorpusCLIP(_Pretrained):
    """Word-level text transformer + conv frame encoder in one embedding space; ``CLIPSim(CorpusCLIP)`` works."""

    extractor_name = "corpus"

    def __init__(
        self,
        words: Sequence[str],
        max_words: int = 64,
        embed_dim: int = 128,
        text_dim: int = 128,
        text_layers: int = 2,
        text_heads: int = 4,
        image_size: Sequence[int] = (32, 48),
        patch: int = 4,
        image_channels: Sequence[int] = (32, 64, 128),
    ):
        super().__init__()
        self.tokenizer = WordTokenizer(words)
        self.max_words, self.image_size = int(max_words), tuple(int(s) for s in image_size)
        # the vocabulary is saved in vocab.json, so config.json stays small and readable
        self.config = {
            "max_words": self.max_words, "embed_dim": int(embed_dim), "text_dim": int(text_dim),
            "text_layers": int(text_layers), "text_heads": int(text_heads), "image_size": list(self.image_size),
            "patch": int(patch), "image_channels": [int(c) for c in image_channels],
        }
        self.word_embedding = nn.Embedding(len(self.tokenizer), text_dim, padding_idx=0)
        self.text_pos = nn.Parameter(torch.randn(self.max_words, text_dim) * 0.02)
        layer = nn.TransformerEncoderLayer(text_dim, text_heads, 4 * text_dim, dropout=0.0, batch_first=True, norm_first=True)
        self.text_encoder = nn.TransformerEncoder(layer, text_layers, enable_nested_tensor=False)
        self.text_norm = nn.LayerNorm(text_dim)
        self.text_projection = nn.Linear(text_dim, embed_dim)
        if any(s % patch for s in self.image_size):
            raise ValueError(f"CLIP image_size {list(self.image_size)} must be divisible by patch={patch}")
        layers: list[nn.Module] = [nn.Conv2d(3, image_channels[0], patch, stride=patch), _norm(image_channels[0]), nn.GELU()]
        previous = image_channels[0]
        for width in image_channels[1:]:
            layers += [nn.Conv2d(previous, width, 3, stride=2, padding=1), _norm(width), nn.GELU()]
            previous = width
        self.image_encoder = nn.Sequential(*layers)
        self.image_projection = nn.Linear(2 * previous, embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def _save_extra(self, out: Path) -> None:
        self.tokenizer.save(out / VOCAB_NAME)

    @classmethod
    def _load_kwargs(cls, path: Path, config: dict) -> dict:
        if not (path / VOCAB_NAME).is_file():
            raise MissingArtifactError(
                f"CorpusCLIP not found: '{path / VOCAB_NAME}' is missing (train it with `videolavit evaluators`)"
            )
        return {**config, "words": WordTokenizer.load(path / VOCAB_NAME).words}

    def text_features(self, ids: torch.Tensor) -> torch.Tensor:
        """Word ids ``[N, L]`` → unnormalized embeddings ``[N, E]`` (mean over the words, padding excluded)."""
        ids = ids[:, : self.max_words]
        keep = ids != 0  # [N, L]
        x = self.word_embedding(ids) + self.text_pos[: ids.shape[1]]  # [N, L, C]
        x = self.text_norm(self.text_encoder(x, src_key_padding_mask=~keep))
        pooled = (x * keep[..., None]).sum(1) / keep.sum(1, keepdim=True).clamp(min=1)  # [N, C]
        return self.text_projection(pooled)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 frames ``[N, H, W, 3]`` → unnormalized embeddings ``[N, E]`` (resized to ``image_size``)."""
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[-1] != 3:
            shape = list(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"CorpusCLIP expects frames as a uint8 [N, H, W, 3] tensor (channels last), got {shape}")
        x = _resize(_to_unit_range(images.permute(0, 3, 1, 2)).contiguous(), self.image_size)  # [N, 3, h, w]
        x = self.image_encoder(x).flatten(2)  # [N, C, h·w]
        return self.image_projection(torch.cat([x.mean(-1), x.amax(-1)], dim=1))

    @torch.no_grad()
    def encode_text(self, captions: list[str]) -> torch.Tensor:
        """Captions → ``[N, E]`` (the CLIPSim protocol)."""
        device = self.logit_scale.device
        return self.text_features(self.tokenizer.encode(list(captions), self.max_words).to(device))

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``[N, H, W, 3]`` → ``[N, E]`` (the CLIPSim protocol)."""
        return self.image_features(images.to(self.logit_scale.device))

    def contrastive_loss(self, image_emb: torch.Tensor, text_emb: torch.Tensor, same_caption: torch.Tensor) -> torch.Tensor:
        """Symmetric InfoNCE; pairs whose captions are equal (``same_caption`` [N, N] bool) all count as positives."""
        image_emb, text_emb = F.normalize(image_emb, dim=-1), F.normalize(text_emb, dim=-1)
        logits = self.logit_scale.clamp(max=math.log(100)).exp() * image_emb @ text_emb.T  # [N, N]
        target = same_caption.float() / same_caption.float().sum(1, keepdim=True)  # clips of one video share a caption
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target.T))


# --------------------------------------------------------------------------------------------------------------------


@dataclass
class CorpusEvaluators:
    """What ``videolavit evaluators`` trains; either may be None when the corpus gave it nothing to learn from."""

    classifier: Optional[VideoAttributeClassifier]
    clip: Optional[CorpusCLIP]

    def save_pretrained(self, directory: str | Path) -> Path:
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        if self.classifier is not None:
            self.classifier.save_pretrained(out / CLASSIFIER_DIR)
        if self.clip is not None:
            self.clip.save_pretrained(out / CLIP_DIR)
        return out


def load_evaluators(directory: str | Path, map_location: str | torch.device = "cpu") -> CorpusEvaluators:
    """The classifier (``<dir>/classifier``) and CLIP (``<dir>/clip``) saved by the evaluators stage, in eval mode."""
    path = Path(directory)
    found = {name: (path / name / CONFIG_NAME).is_file() for name in (CLASSIFIER_DIR, CLIP_DIR)}
    if not any(found.values()):
        raise MissingArtifactError(
            f"no corpus evaluators in '{path}' (expected {CLASSIFIER_DIR}/ and {CLIP_DIR}/ with config.json). "
            "Run `videolavit evaluators` first, or configure evaluate.i3d_path / evaluate.clip_path."
        )
    classifier = VideoAttributeClassifier.from_pretrained(path / CLASSIFIER_DIR, map_location) if found[CLASSIFIER_DIR] else None
    clip = CorpusCLIP.from_pretrained(path / CLIP_DIR, map_location) if found[CLIP_DIR] else None
    return CorpusEvaluators(classifier, clip)
