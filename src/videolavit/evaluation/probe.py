"""Linear probe of what the motion codes carry: each clip's bag of codes → its main object's direction and speed.

Ridge regression onto one-hot labels (closed form, the ridge strength chosen by leave-one-out accuracy on the train
clips), fit on the train clips and scored on the val clips, beside chance (a uniform guess) and the prior (always the
most frequent train label). A reader of the codes (the LM) cannot answer a motion question the codes do not carry:
this is how far a linear one gets. Labels come from the corpus manifest (synthetic corpora: ``clips[k]``).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Optional

import torch

LABELS = ("direction", "speed")
RIDGE_GRID = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)


def clip_labels(corpus_dir: str | Path, split: str) -> dict[tuple[str, int], dict[str, str]]:
    """(video id, clip index) → {label: value} for the clips whose manifest entry has the labels."""
    from videolavit.data.manifest import read_manifest

    out = {}
    for sample in read_manifest(corpus_dir, split):
        for k, clip in enumerate(sample.clips):
            labels = {name: str(clip[name]) for name in LABELS if name in clip}
            if labels:
                out[(sample.id, k)] = labels
    return out


@torch.no_grad()
def code_histograms(model: Any, records: Iterable[dict], batch_size: int = 32) -> tuple[list[tuple[str, int]], torch.Tensor]:
    """Each clip record's (video id, clip) and its codes' histogram as fractions of its tokens, [N, codebook_size]."""
    device = next(model.parameters()).device
    keys, rows, batch = [], [], []

    def flush() -> None:
        motion = torch.stack([torch.as_tensor(r["motion"]) for r in batch]).to(device)  # [B, 2, T, H, W]
        codes = model.encode(motion)  # [B, N]
        hist = torch.zeros(codes.shape[0], model.codebook_size, dtype=torch.float64, device=device)
        hist.scatter_add_(1, codes, torch.ones_like(codes, dtype=torch.float64))
        rows.append((hist / codes.shape[1]).cpu())
        keys.extend((r["meta"]["video_id"], int(r["meta"]["clip"])) for r in batch)
        batch.clear()

    model.eval()
    for record in records:
        batch.append(record)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    return keys, torch.cat(rows) if rows else torch.zeros(0, model.codebook_size, dtype=torch.float64)


def _design(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    z = (x - mean) / std
    return torch.cat([z, torch.ones(z.shape[0], 1, dtype=z.dtype)], dim=1)  # [N, D + 1]: bias column last


def ridge_probe(x_train: torch.Tensor, y_train: torch.Tensor, x_eval: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Predicted classes of ``x_eval`` [M, D] from ridge regression of one-hot ``y_train`` on standardized ``x_train``
    [N, D]; the strength from RIDGE_GRID with the best leave-one-out accuracy on the train rows (ties: stronger)."""
    x_train, x_eval = x_train.double(), x_eval.double()
    mean, std = x_train.mean(0), x_train.std(0, unbiased=False).clamp_min(1e-6)
    a, b = _design(x_train, mean, std), _design(x_eval, mean, std)
    targets = torch.nn.functional.one_hot(y_train.long(), num_classes).double()  # [N, K]
    gram, eye = a.T @ a, torch.eye(a.shape[1], dtype=a.dtype)
    eye[-1, -1] = 0.0  # the bias is not shrunk
    best = None
    for l2 in RIDGE_GRID:
        inverse = torch.linalg.pinv(gram + l2 * a.shape[0] / max(a.shape[1], 1) * eye)
        weights = inverse @ a.T @ targets  # [D + 1, K]
        leverage = ((a @ inverse) * a).sum(1, keepdim=True)  # diag of the hat matrix, [N, 1]
        loo = targets - (targets - a @ weights) / (1 - leverage).clamp_min(1e-6)  # leave-one-out predictions
        score = float((loo.argmax(1) == y_train).double().mean())
        if best is None or score >= best[0]:
            best = (score, weights)
    return (b @ best[1]).argmax(1)


def probe_motion_codes(model: Any, clips_dir: str | Path, corpus_dir: str | Path, prefix: str = "probe",
                       splits: tuple[str, str] = ("train", "val"), max_clips: Optional[int] = None) -> dict[str, float]:
    """``<prefix>/<label>_acc`` on the val clips with ``_chance``, ``_prior`` and ``<prefix>/clips``; {} when the
    corpus has no clip labels (a real dataset, clips without their corpus) or a split has no labelled clips."""
    from itertools import islice

    from videolavit.data.shards import iter_clip_records
    from videolavit.errors import MissingArtifactError

    data = {}
    for split in splits:
        try:
            labels = clip_labels(corpus_dir, split)
        except MissingArtifactError:
            return {}
        if not labels:
            return {}
        records = islice(iter_clip_records(clips_dir, split, ("motion", "meta")), max_clips)
        keys, hist = code_histograms(model, records)
        chosen = [i for i, key in enumerate(keys) if key in labels]
        data[split] = ([labels[keys[i]] for i in chosen], hist[chosen])
    (train_labels, x_train), (eval_labels, x_eval) = data[splits[0]], data[splits[1]]
    if not train_labels or not eval_labels:
        return {}
    out = {f"{prefix}/clips": float(len(eval_labels))}
    for name in LABELS:
        if not all(name in row for row in train_labels + eval_labels):
            continue
        classes = sorted({row[name] for row in train_labels + eval_labels})
        index = {c: i for i, c in enumerate(classes)}
        y_train = torch.tensor([index[row[name]] for row in train_labels])
        y_eval = torch.tensor([index[row[name]] for row in eval_labels])
        predicted = ridge_probe(x_train, y_train, x_eval, len(classes))
        most = Counter(y_train.tolist()).most_common(1)[0][0]
        out[f"{prefix}/{name}_acc"] = float((predicted == y_eval).double().mean())
        out[f"{prefix}/{name}_chance"] = 1.0 / len(classes)
        out[f"{prefix}/{name}_prior"] = float((y_eval == most).double().mean())
    return out
