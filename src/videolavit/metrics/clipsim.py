"""CLIPSIM (GODIVA; used by Make-A-Video, VideoPoet, Video-LaVIT Table 4): caption–frame CLIP cosine, frames then videos averaged.

Raw cosine (published values are about 0.30), not ×100 and not clipped at 0. Video-LaVIT's protocol is CLIP ViT-B/16 on
224² frames, all frames averaged, one caption per MSR-VTT test video (2990 pairs); only such a CLIP makes the number
comparable. Any other encoder (e.g. the corpus CLIP of the ``evaluators`` stage) is a proxy: name it with
``metric_name("t2v/clipsim", metric)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric

from videolavit.errors import ConfigError, MissingArtifactError


class CaptionFrameEncoder(Protocol):
    def encode_text(self, captions: list[str]) -> Tensor: ...  # [N, D]

    def encode_images(self, images: Tensor) -> Tensor: ...  # uint8 [N, H, W, 3] → [N, D]


def _pooled(output) -> Tensor:
    # transformers 5 returns a ModelOutput whose pooler_output is the projected embedding; 4.x returns the tensor.
    return output if isinstance(output, Tensor) else output.pooler_output


class LocalCLIP(nn.Module):
    """A transformers ``CLIPModel`` + ``CLIPProcessor`` read from a local directory (never downloads)."""

    extractor_name = "clip"

    def __init__(self, path: str | Path):
        super().__init__()
        path = Path(path).expanduser()
        if not path.is_dir():
            raise MissingArtifactError(f"CLIP directory {path} does not exist (nothing is downloaded at run time)")
        from transformers import CLIPModel, CLIPProcessor

        from videolavit.pretrained import LOCAL, load_error

        try:
            # The processor first: a missing tokenizer file fails before a large model is read.
            self.processor = CLIPProcessor.from_pretrained(path, **LOCAL)
            self.model = CLIPModel.from_pretrained(path, **LOCAL).eval()
        except Exception as exc:
            refused = load_error(exc, path, "evaluate.clip_path")
            if not isinstance(refused, MissingArtifactError):  # a refused pickle or auto_map: say that
                raise refused from None
            raise MissingArtifactError(
                f"{path} is not a complete CLIP directory (needs the model, tokenizer and image-processor files that "
                f"CLIPModel/CLIPProcessor.save_pretrained write): {exc}"
            ) from None
        self.max_length = self.model.config.text_config.max_position_embeddings

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def encode_text(self, captions: list[str]) -> Tensor:
        """captions → ``[N, D]`` projected text embeddings (truncated to the model's context)."""
        inputs = self.processor(
            text=list(captions), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return _pooled(self.model.get_text_features(**inputs.to(self.device)))

    @torch.no_grad()
    def encode_images(self, images: Tensor) -> Tensor:
        """uint8 ``[N, H, W, 3]`` → ``[N, D]``; the processor resizes, center-crops and normalizes as CLIP was trained."""
        inputs = self.processor(images=list(images.cpu().numpy()), return_tensors="pt")
        return _pooled(self.model.get_image_features(pixel_values=inputs["pixel_values"].to(self.device)))


class CLIPSim(Metric):
    """Mean caption–frame cosine; ``update(videos uint8 [B, T, H, W, 3], captions)``, ``compute()`` → scalar."""

    higher_is_better = True
    is_differentiable = False
    full_state_update = False

    def __init__(self, model: str | Path | CaptionFrameEncoder, **kwargs):
        super().__init__(**kwargs)
        if isinstance(model, (str, Path)):
            model = LocalCLIP(model)
        elif not (callable(getattr(model, "encode_text", None)) and callable(getattr(model, "encode_images", None))):
            raise ConfigError(
                f"CLIPSim model must be a local CLIP directory or have encode_text(list[str]) and "
                f"encode_images(uint8 [N, H, W, 3]); got {type(model).__name__}"
            )
        self.encoder = model
        self.extractor_name = getattr(model, "extractor_name", "custom")
        self.add_state("similarity_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("num_videos", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, videos: Tensor, captions: Sequence[str]) -> None:
        if not isinstance(videos, Tensor) or videos.ndim != 5 or videos.shape[-1] != 3:
            shape = list(videos.shape) if isinstance(videos, Tensor) else type(videos).__name__
            raise ValueError(f"CLIPSim expects videos as [B, T, H, W, 3] (channels last), got {shape}")
        if videos.dtype != torch.uint8:
            raise ValueError(f"CLIPSim expects uint8 frames in [0, 255], got {videos.dtype}")
        if isinstance(captions, str):
            captions = [captions]
        b, t = videos.shape[:2]
        if len(captions) != b:
            raise ValueError(f"CLIPSim got {b} videos but {len(captions)} captions (one caption per video)")
        frames = self.encoder.encode_images(videos.reshape(b * t, *videos.shape[2:]))  # [B*T, D]
        text = self.encoder.encode_text(list(captions))  # [B, D]
        if frames.ndim != 2 or text.ndim != 2 or frames.shape[0] != b * t or text.shape != (b, frames.shape[1]):
            raise ValueError(
                f"encoder returned image embeddings {list(frames.shape)} and text embeddings {list(text.shape)}; "
                f"expected [{b * t}, D] and [{b}, D]"
            )
        frames = F.normalize(frames.to(torch.float64), dim=-1).reshape(b, t, -1)  # [B, T, D]
        text = F.normalize(text.to(torch.float64), dim=-1)  # [B, D]
        per_video = torch.einsum("btd,bd->bt", frames, text).mean(dim=1)  # [B]
        self.similarity_sum += per_video.sum().to(self.similarity_sum.device)
        self.num_videos += b

    def compute(self) -> Tensor:
        if int(self.num_videos) == 0:
            raise ValueError("CLIPSim has no videos: call update() first")
        return self.similarity_sum / self.num_videos
