"""Corpus media → token ids with the trained tokenizers: keyframes/images → visual codes, motion → motion codes,
streamed clip by clip so only the videos of the current batch are held (the tokenize stage's engine)."""

from __future__ import annotations

from typing import Iterator, Optional, Sequence

import numpy as np
import torch
from omegaconf import DictConfig

from videolavit.artifacts import artifact
from videolavit.data.images import resize_images
from videolavit.data.shards import iter_clip_records
from videolavit.data.token_parts import clip_orders

CLIP_SPECIALS = 4  # [IMG] [/IMG] [MOV] [/MOV]
IMAGE_SPECIALS = 2  # [IMG] [/IMG]


def clip_tokens(visual: float, motion: float) -> float:
    """Tokens of one clip in the LM sequence: ``[IMG] visual [/IMG] [MOV] motion [/MOV]``."""
    return visual + motion + CLIP_SPECIALS


def per_frame_tokens(visual_per_frame: Sequence[float]) -> float:
    """Tokens of the same clip with every frame tokenized alone as an image: Σ (visual_f + 2)."""
    return float(sum(v + IMAGE_SPECIALS for v in visual_per_frame))


def token_saving(clip: float, per_frame: float) -> float:
    return 1.0 - clip / per_frame if per_frame > 0 else float("nan")


# ---- media --------------------------------------------------------------------------------------------------------
class MediaTokenizer:
    """Both trained tokenizers behind one small API: uint8 images → visual codes, motion → motion codes."""

    def __init__(self, cfg: DictConfig, device: str):
        from videolavit.models.motion_tokenizer import MotionTokenizer
        from videolavit.models.visual_tokenizer import VisualTokenizer

        visual = artifact(cfg, "visual_tokenizer", "tokenize.visual_tokenizer_path")
        motion = artifact(cfg, "motion_tokenizer", "tokenize.motion_tokenizer_path")
        self.visual = VisualTokenizer.from_pretrained(visual).to(device).eval()
        self.motion = MotionTokenizer.from_pretrained(motion).to(device).eval()
        self.paths = {"visual_tokenizer": str(visual), "motion_tokenizer": str(motion)}
        self.device, self.batch_size = device, int(cfg.tokenize.batch_size)
        self.image_size = self.visual.image_size

    def _autocast(self):
        """bf16 autocast on a GPU (the ViT-G passes dominate tokenize at scale); fp32 on the CPU, as before."""
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=str(self.device).startswith("cuda"))

    @torch.inference_mode()
    def images(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """uint8 images [H, W, 3] (any size) → visual codes per image (resized to the tokenizer input as in training)."""
        out: list[np.ndarray] = []
        for i in range(0, len(images), self.batch_size):
            chunk = np.stack([resize_images(im, self.image_size) for im in images[i : i + self.batch_size]])  # [n, S, S, 3]
            with self._autocast():
                codes = self.visual.encode(self.visual.preprocess(chunk))
            out += [c.cpu().numpy().astype(np.int32) for c in codes]
        return out

    @torch.inference_mode()
    def motions(self, motion: np.ndarray) -> list[np.ndarray]:
        """float [N, 2, T, h, w] → motion codes per clip (``tokens_per_clip`` each)."""
        with self._autocast():
            codes = self.motion.encode(torch.as_tensor(motion, device=self.device))  # [N, tokens_per_clip]
        return list(codes.cpu().numpy().astype(np.int32))


def frame_positions(clips: int, frames_per_clip: int, n: Optional[int]) -> list[tuple[int, int]]:
    """(clip rank, frame) of N frames spread uniformly over a video's clips (the centre of N equal segments)."""
    total = clips * frames_per_clip
    n = min(2 * clips if n is None else int(n), total)
    positions = [int((i + 0.5) * total / n) for i in range(n)]
    return [divmod(p, frames_per_clip) for p in positions]


class VideoTokens:
    """Clip tokens of one unit's tars, streamed: clips are encoded in batches and each video is handed on (with its
    sampled frames) as soon as its last clip is encoded, so only the videos of the current batch are held."""

    def __init__(self, media: MediaTokenizer, paths: Sequence[str], ablation_frames: Optional[int], baseline_clips: int):
        self.media, self.paths = media, list(paths)
        self.ablation_frames, self.baseline_left = ablation_frames, baseline_clips
        self.order: dict[str, list[int]] = {}  # video → its clips in time order (videos of the current window)
        self.pending: dict[str, tuple[dict, dict]] = {}  # video → (clip → (visual, motion), sample index → codes)
        self.frames_source = "frames"
        self.clips_seen = False
        self.baseline: list[list] = []  # [clip tokens, per-frame tokens, per-frame visual counts] per baseline clip

    def videos(self) -> Iterator[tuple[str, dict, dict]]:
        """(video, clip → (visual, motion) codes, sample index → frame codes), in shard order."""
        orders = clip_orders(self.paths)
        batch: list[dict] = []
        for record in iter_clip_records(None, "", ("keyframe", "motion", "frames", "meta"), paths=self.paths):
            video = record["meta"]["video_id"]
            while video not in self.order:
                v, clips = next(orders)
                self.order[v], self.pending[v] = clips, ({}, {})
            batch.append(record)
            if len(batch) == self.media.batch_size:
                self._encode(batch)
                batch = []
                yield from self._finished()
        if batch:
            self._encode(batch)
        yield from self._finished()

    def _finished(self) -> Iterator[tuple[str, dict, dict]]:
        while self.pending:
            video = next(iter(self.pending))
            if len(self.pending[video][0]) < len(self.order[video]):
                return
            clips, frames = self.pending.pop(video)
            del self.order[video]
            yield video, clips, frames

    def _encode(self, batch: list[dict]) -> None:
        self.clips_seen = True
        visual = self.media.images([r["keyframe"] for r in batch])
        motion = self.media.motions(np.stack([r["motion"] for r in batch]))
        jobs: list[tuple[str, int]] = []  # (video, sample index) of each ablation frame
        images: list[np.ndarray] = []
        baseline: list[int] = []  # batch positions whose every frame is tokenized for the baseline
        for b, r in enumerate(batch):
            video, clip = r["meta"]["video_id"], int(r["meta"]["clip"])
            self.pending[video][0][clip] = (visual[b], motion[b])
            frames = r.get("frames")
            if frames is None:  # shards without frames: the keyframes are the sampled frames
                self.frames_source, frames = "keyframes", r["keyframe"][None]
            rank = self.order[video].index(clip)
            for i, (c, f) in enumerate(frame_positions(len(self.order[video]), len(frames), self.ablation_frames)):
                if c == rank:
                    jobs.append((video, i))
                    images.append(frames[f])
            if self.baseline_left > 0 and "frames" in r:
                self.baseline_left -= 1
                baseline.append(b)
        for (video, i), codes in zip(jobs, self.media.images(images)):
            self.pending[video][1][i] = codes
        frame_codes = self.media.images([f for b in baseline for f in batch[b]["frames"]])
        for b in baseline:
            counts = [len(c) for c in frame_codes[: len(batch[b]["frames"])]]
            frame_codes = frame_codes[len(counts) :]
            self.baseline.append([clip_tokens(len(visual[b]), len(motion[b])), per_frame_tokens(counts), counts])
