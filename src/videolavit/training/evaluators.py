"""Training of the corpus evaluators (video attribute classifier and corpus CLIP, side by side in one
LightningModule), the clip labels they learn from the manifest, and their validation metrics beside chance."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
import torch.nn.functional as F

from videolavit.data.manifest import SPLITS, read_manifest, read_meta
from videolavit.errors import ConfigError
from videolavit.models.evaluators import IGNORE_LABEL, CorpusCLIP, VideoAttributeClassifier
from videolavit.training.optim import adamw_with_cosine, decay_groups
from videolavit.training.trainer import TrainLoss

class ClipLabels:
    """(video id, clip number) → attribute values and caption, from the corpus manifest and meta.json."""

    def __init__(self, corpus_dir: str | Path, requested: Optional[list], fps: float, clip_frames: int):
        meta = read_meta(corpus_dir)
        vocab = {str(k): [str(v) for v in values] for k, values in (meta.get("attributes") or {}).items()}
        self.clip_seconds = clip_frames / fps
        self.videos: dict[str, Any] = {}
        self.splits: dict[str, list[str]] = {}
        for split in SPLITS:
            if (Path(corpus_dir) / f"{split}.jsonl").is_file():
                samples = [s for s in read_manifest(corpus_dir, split) if s.kind == "video"]
                self.videos.update({s.id: s for s in samples})
                self.splits[split] = [s.id for s in samples]
        if requested is not None:
            unknown = [a for a in requested if a not in vocab]
            if unknown:
                raise ConfigError(
                    f"evaluators.attributes: {unknown} not in the corpus meta.json attributes "
                    f"({', '.join(vocab) or 'none recorded'})"
                )
            vocab = {a: vocab[a] for a in requested}
        # an attribute no training clip has a value for would give a head that never learns
        labelled = Counter(
            a for vid in self.splits.get("train", []) for k in range(self._num_clips(vid)) for a in self.values(vid, k)
        )
        self.attributes = {a: values for a, values in vocab.items() if labelled[a] and len(values) >= 2}

    def _num_clips(self, video_id: str) -> int:
        sample = self.videos[video_id]
        return max(len(sample.clips), int(sample.attributes.get("num_clips") or 0), 1)

    def values(self, video_id: str, clip: int) -> dict[str, str]:
        """Attribute → value of one clip (clip-level values override the video's)."""
        sample = self.videos.get(video_id)
        if sample is None:
            return {}
        out = {k: str(v) for k, v in sample.attributes.items() if isinstance(v, (str, int)) and not isinstance(v, bool)}
        if 0 <= clip < len(sample.clips):
            out.update({k: str(v) for k, v in sample.clips[clip].items() if isinstance(v, (str, int))})
        return out

    def clip_index(self, meta: dict) -> int:
        """The manifest clip a shard clip covers, by its start time; -1 if it straddles two."""
        position = float(meta.get("start_time", 0.0)) / self.clip_seconds
        return int(round(position)) if abs(position - round(position)) < 0.25 else -1

    def labels(self, metas: list[dict]) -> torch.Tensor:
        """Value ids ``[B, A]`` in ``self.attributes`` order; IGNORE_LABEL where a clip has no known value."""
        out = torch.full((len(metas), len(self.attributes)), IGNORE_LABEL, dtype=torch.long)  # [B, A]
        for i, meta in enumerate(metas):
            values = self.values(str(meta.get("video_id")), self.clip_index(meta))
            for j, (name, vocab) in enumerate(self.attributes.items()):
                if values.get(name) in vocab:
                    out[i, j] = vocab.index(values[name])
        return out

    def majority(self, split: str = "train") -> dict[str, int]:
        """The most frequent value id per attribute over the split's manifest clips (the chance baseline)."""
        out = {}
        for name, vocab in self.attributes.items():
            counts = Counter(
                v for vid in self.splits.get(split, []) for k in range(self._num_clips(vid))
                if (v := self.values(vid, k).get(name)) in vocab
            )
            out[name] = vocab.index(counts.most_common(1)[0][0]) if counts else 0
        return out

    def captions(self, split: str = "train") -> list[str]:
        return [self.videos[v].caption for v in self.splits.get(split, []) if self.videos[v].caption]


def as_videos(frames: torch.Tensor) -> torch.Tensor:
    return frames.permute(0, 4, 1, 2, 3)  # [B, T, H, W, 3] → [B, 3, T, H, W]


class EvaluatorMetrics:
    """Validation metrics over many batches: attribute accuracy vs chance, retrieval top-1 vs chance, CLIPSIM."""

    def __init__(self, labels: ClipLabels, eval_frames: int):
        self.labels, self.eval_frames = labels, eval_frames
        self.majority = labels.majority("train")
        self.correct = Counter()
        self.chance_correct = Counter()
        self.counted = Counter()
        self.video_embeddings: dict[str, list[torch.Tensor]] = {}
        self.video_captions: dict[str, str] = {}

    @torch.no_grad()
    def update(self, batch: dict, classifier: Optional[VideoAttributeClassifier], clip: Optional[CorpusCLIP]) -> None:
        # on the models' device: validation batches arrive there, the post-fit loader's on the host
        device = next(next(m for m in (classifier, clip) if m is not None).parameters()).device
        frames = batch["frames"].to(device)  # [B, T, H, W, 3]
        if classifier is not None:
            target = self.labels.labels(batch["meta"]).to(device)  # [B, A] (made on the host from the metadata)
            logits = classifier.classify(as_videos(frames))
            for j, name in enumerate(self.labels.attributes):
                known = target[:, j] != IGNORE_LABEL
                self.counted[name] += int(known.sum())
                self.correct[name] += int((logits[name].argmax(-1) == target[:, j])[known].sum())
                self.chance_correct[name] += int((target[:, j] == self.majority[name])[known].sum())
        if clip is not None:
            b, t = frames.shape[:2]
            picks = torch.linspace(0, t - 1, min(self.eval_frames, t)).round().long()
            chosen = frames[:, picks].reshape(-1, *frames.shape[2:])  # [B*k, H, W, 3]
            emb = F.normalize(clip.image_features(chosen), dim=-1).reshape(b, len(picks), -1)  # [B, k, E]
            for meta, e in zip(batch["meta"], emb):
                vid = str(meta.get("video_id"))
                self.video_embeddings.setdefault(vid, []).append(e.cpu())
                self.video_captions[vid] = str(meta.get("caption", ""))

    def compute(self, clip: Optional[CorpusCLIP], prefix: str = "val") -> dict[str, float]:
        out: dict[str, float] = {}
        for name in self.labels.attributes:
            if self.counted[name]:
                out[f"{prefix}/attr_acc_{name}"] = self.correct[name] / self.counted[name]
                out[f"{prefix}/attr_chance_{name}"] = self.chance_correct[name] / self.counted[name]
        if out:
            accs = [v for k, v in out.items() if "/attr_acc_" in k]
            chances = [v for k, v in out.items() if "/attr_chance_" in k]
            out[f"{prefix}/attr_acc_mean"] = sum(accs) / len(accs)
            out[f"{prefix}/attr_chance_mean"] = sum(chances) / len(chances)
        if clip is not None and len(self.video_embeddings) >= 2:
            out.update(self._retrieval(clip, prefix))
        return out

    @torch.no_grad()
    def _retrieval(self, clip: CorpusCLIP, prefix: str) -> dict[str, float]:
        ids = sorted(self.video_embeddings)
        frames = [torch.cat(self.video_embeddings[v]) for v in ids]  # per video [k·clips, E]
        videos = F.normalize(torch.stack([f.mean(0) for f in frames]), dim=-1)  # [V, E]
        captions = [self.video_captions[v] for v in ids]
        text = F.normalize(clip.encode_text(captions).cpu(), dim=-1)  # [V, E]
        same = torch.tensor([[a == b for b in captions] for a in captions])  # [V, V]: equal captions both count
        scores = text @ videos.T  # [V(text), V(video)]
        t2v = same[torch.arange(len(ids)), scores.argmax(1)].float().mean()
        v2t = same[torch.arange(len(ids)), scores.T.argmax(1)].float().mean()
        # CLIPSIM as the metric defines it (frames averaged), with the video's own caption and with another's
        per_frame = [f @ t for f, t in zip(frames, text)]
        shuffled = [f @ text[(i + 1) % len(ids)] for i, f in enumerate(frames)]
        return {
            f"{prefix}/clip_retrieval_top1": float(t2v + v2t) / 2,
            f"{prefix}/clip_retrieval_chance": float(same.float().mean()),
            f"{prefix}/clipsim_corpus_matched": float(torch.stack([s.mean() for s in per_frame]).mean()),
            f"{prefix}/clipsim_corpus_mismatched": float(torch.stack([s.mean() for s in shuffled]).mean()),
        }


class EvaluatorsModule(TrainLoss, L.LightningModule):
    """Both evaluators trained side by side: summed attribute cross-entropies + the CLIP's InfoNCE."""

    def __init__(
        self,
        classifier_kwargs: Optional[dict],
        clip_kwargs: Optional[dict],
        optim: dict,
        max_steps: int,
        labels: ClipLabels,
        eval_frames: int,
    ):
        super().__init__()
        self.classifier = VideoAttributeClassifier(**classifier_kwargs) if classifier_kwargs else None
        self.clip = CorpusCLIP(**clip_kwargs) if clip_kwargs else None
        self.optim, self.max_steps, self.labels, self.eval_frames = optim, int(max_steps), labels, int(eval_frames)
        self.evaluation: Optional[EvaluatorMetrics] = None

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        frames = batch["frames"]  # [B, T, H, W, 3] uint8
        logs, loss = {}, frames.new_zeros((), dtype=torch.float32)
        if self.classifier is not None:
            target = self.labels.labels(batch["meta"]).to(frames.device)  # [B, A]
            logits = self.classifier.classify(as_videos(frames))
            # the mean over the attributes this batch labels, as masked sums (no host sync on which ones)
            known = (target != IGNORE_LABEL).sum(0)  # [A] labelled clips per attribute
            terms = torch.stack([
                F.cross_entropy(logits[name], target[:, j], ignore_index=IGNORE_LABEL, reduction="sum") / known[j].clamp(min=1)
                for j, name in enumerate(self.labels.attributes)
            ])
            present = (known > 0).to(terms.dtype)
            logs["train/classifier_loss"] = (terms * present).sum() / present.sum().clamp(min=1)
            loss = loss + logs["train/classifier_loss"]
        if self.clip is not None:
            b, t = frames.shape[:2]
            picks = torch.randint(0, t, (b,), device=frames.device)  # one random frame per clip
            images = frames[torch.arange(b, device=frames.device), picks]  # [B, H, W, 3]
            captions = [str(m.get("caption", "")) for m in batch["meta"]]
            ids = self.clip.tokenizer.encode(captions, self.clip.max_words).to(frames.device)
            same = torch.tensor([[a == c for c in captions] for a in captions], device=frames.device)  # [B, B]
            image_emb, text_emb = self.clip.image_features(images), self.clip.text_features(ids)
            logs["train/clip_loss"] = self.clip.contrastive_loss(image_emb, text_emb, same)
            loss = loss + logs["train/clip_loss"]
        logs["train/loss"] = loss
        self.log_dict(logs, batch_size=frames.shape[0])
        self.remember_train_loss(loss)
        return loss

    def on_validation_epoch_start(self) -> None:
        self.evaluation = EvaluatorMetrics(self.labels, self.eval_frames)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.evaluation.update(batch, self.classifier, self.clip)

    def on_validation_epoch_end(self) -> None:
        metrics = self.evaluation.compute(self.clip, "val") if self.evaluation else {}
        if metrics:
            self.log_dict(metrics)

    def configure_optimizers(self):
        groups = decay_groups(self.named_parameters(), self.optim["weight_decay"], no_decay=("text_pos",))
        return adamw_with_cosine(groups, self.optim, self.max_steps)


def evaluate(module: EvaluatorsModule, loader, prefix: str = "val") -> dict[str, float]:
    """Metrics of both models over every batch of ``loader`` (eval mode)."""
    module.eval()
    evaluation = EvaluatorMetrics(module.labels, module.eval_frames)
    with torch.no_grad():
        for batch in loader:
            evaluation.update(batch, module.classifier, module.clip)
    return evaluation.compute(module.clip, prefix)
