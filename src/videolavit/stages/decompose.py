"""Stage ``decompose``: every corpus video → (keyframe, motion, frames) clips in WebDataset shards, or a reject line.

Outputs under ``paths.clips``: ``{split}-{i}of{n}-*.tar``, ``stats.json`` (counts, motion mean/std) and
``rejects.jsonl`` (id, path, split, error class, message). ``decompose.shard=i/n`` (CLI ``--shard i/n``) processes the
videos whose index modulo n is i, so a SLURM array or any launcher can fan out; each shard writes its own part files
and the last one to finish merges them. The stage fails only when the reject ratio exceeds
``decompose.max_reject_ratio``, after everything (clips, rejects, stats) is written.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
from omegaconf import DictConfig, OmegaConf

from videolavit.data.shards import SPLITS, ClipShardWriter, clip_key
from videolavit.errors import ConfigError, VideolavitError, require_path
from videolavit.runner import stage_entry

_WORKER_CFG: Optional[DictConfig] = None


def parse_shard(spec: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in str(spec).split("/"))
    except ValueError:
        raise ConfigError(f"decompose.shard must look like 'i/n' (e.g. 0/4), got {spec!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ConfigError(f"decompose.shard {spec!r}: need 0 <= i < n")
    return i, n


def _video_jobs(cfg: DictConfig) -> list[dict]:
    from videolavit.data.manifest import read_manifest

    corpus = require_path(cfg.paths.corpus, "the corpus", "Run `videolavit corpus` (or `dvc repro corpus`) first.")
    jobs = []
    for split in SPLITS:
        if not (corpus / f"{split}.jsonl").is_file():
            continue
        for sample in read_manifest(corpus, split):
            if sample.kind != "video":
                continue
            path = Path(sample.path)
            if not path.is_absolute():
                path = corpus / path
            jobs.append({"id": sample.id, "path": str(path), "split": split, "caption": sample.caption})
    return jobs


def _init_worker(cfg_yaml: str) -> None:
    global _WORKER_CFG
    import warnings

    warnings.filterwarnings("ignore")
    _WORKER_CFG = OmegaConf.create(cfg_yaml)


def _decompose_one(job: dict) -> dict:
    """Worker: one video → its clip records (and whether the file was truncated), or the reject. Raises only for a
    fault of the machine (out of memory, a failing re-encode), which must not be counted against any video."""
    from videolavit.errors import MotionCodecError, VideoError
    from videolavit.video import iter_clips

    cfg = _WORKER_CFG
    keep_frames = bool(cfg.video.frames_height and cfg.video.frames_width)
    try:
        clips = []
        stream = iter_clips(job["path"], cfg.video, keep_frames=keep_frames)
        for clip in stream:
            clips.append(
                {
                    "key": clip_key(job["id"], clip.index),
                    "keyframe": clip.keyframe,
                    "motion": clip.motion,
                    "frames": clip.frames,
                    "meta": {
                        "video_id": job["id"],
                        "clip": int(clip.index),
                        "start_time": float(clip.start_time),
                        "split": job["split"],
                        "caption": job["caption"],
                    },
                }
            )
        if not clips:
            raise VideoError(job["path"], "no clip could be cut (no I-frame followed by a full 24-frame clip)")
        return {"job": job, "clips": clips, "truncated": stream.truncated}
    except MotionCodecError:
        raise
    except MemoryError:
        raise VideolavitError(
            f"{job['path']}: out of memory while decomposing it (not counted as a reject); lower decompose.workers "
            "or video.threads and run the stage again"
        ) from None
    except Exception as exc:  # a reject, whatever the cause: the accounting must be complete
        kind = type(exc).__name__
        message = str(exc) if isinstance(exc, VideoError) else f"{job['path']}: unexpected {kind}: {exc}"
        return {"job": job, "reject": {"error": kind, "message": message}}


class _MotionStats:
    """Streaming per-channel mean/std of the normalized motion (float64 sums)."""

    def __init__(self) -> None:
        self.n = 0
        self.sum = np.zeros(2)
        self.sq = np.zeros(2)
        self.nonzero = 0

    def add(self, motion: np.ndarray) -> None:
        m = motion.reshape(2, -1).astype(np.float64)
        self.n += m.shape[1]
        self.sum += m.sum(1)
        self.sq += (m * m).sum(1)
        self.nonzero += int(np.count_nonzero(np.abs(m).sum(0)))

    def as_dict(self) -> dict:
        if self.n == 0:
            return {"n": 0, "mean": [0.0, 0.0], "std": [0.0, 0.0], "sum": [0.0, 0.0], "sq": [0.0, 0.0], "nonzero": 0}
        mean = self.sum / self.n
        std = np.sqrt(np.maximum(self.sq / self.n - mean**2, 0.0))
        return {
            "n": self.n,
            "mean": mean.tolist(),
            "std": std.tolist(),
            "sum": self.sum.tolist(),
            "sq": self.sq.tolist(),
            "nonzero": self.nonzero,
        }


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _merge_parts(out: Path) -> dict:
    """Merge every shard's part files into stats.json and rejects.jsonl."""
    parts = sorted((out / "parts").glob("stats-*.json"))
    merged: dict = {"videos": 0, "videos_ok": 0, "rejects": 0, "clips": {s: 0 for s in SPLITS}, "shards": []}
    merged["truncated"] = []  # ids of videos kept from their decodable part
    n, s, sq, nonzero = 0, np.zeros(2), np.zeros(2), 0
    rejects: list[str] = []
    for part in parts:
        st = json.loads(part.read_text())
        merged["videos"] += st["videos"]
        merged["videos_ok"] += st["videos_ok"]
        merged["rejects"] += st["rejects"]
        merged["truncated"] += st.get("truncated", [])
        for split in SPLITS:
            merged["clips"][split] += st["clips"].get(split, 0)
        merged["shards"].append(st["shard"])
        m = st["motion"]
        n += m["n"]
        s += np.array(m["sum"])
        sq += np.array(m["sq"])
        nonzero += m["nonzero"]
        merged["video"] = st["video"]
        rej = part.with_name(part.name.replace("stats-", "rejects-").replace(".json", ".jsonl"))
        if rej.is_file():
            rejects.extend(line for line in rej.read_text().splitlines() if line.strip())
    mean = s / max(n, 1)
    merged["motion"] = {
        "mean": mean.tolist(),
        "std": np.sqrt(np.maximum(sq / max(n, 1) - mean**2, 0)).tolist(),
        "nonzero_fraction": nonzero / max(n, 1),
        "units": "normalized tokenizer input (x/W, y/H, / motion_std, × motion_rescale)",
    }
    merged["clips_total"] = sum(merged["clips"].values())
    _write_json_atomic(out / "stats.json", merged)
    (out / "rejects.jsonl").write_text("".join(line + "\n" for line in rejects))
    return merged


@stage_entry("decompose")
def run(cfg: DictConfig) -> dict[str, float]:
    from tqdm import tqdm

    started = time.perf_counter()
    shard_i, shard_n = parse_shard(cfg.decompose.shard)
    tag = f"{shard_i}of{shard_n}"
    out = Path(cfg.paths.clips)
    (out / "parts").mkdir(parents=True, exist_ok=True)
    # A re-run replaces this shard's output (and, for a single shard, everything from an earlier layout).
    stale = out.glob("*.tar") if shard_n == 1 else out.glob(f"*-{tag}-*.tar")
    for path in stale:
        path.unlink()
    if shard_n == 1:
        for path in (out / "parts").glob("*"):
            path.unlink()

    jobs = [job for k, job in enumerate(_video_jobs(cfg)) if k % shard_n == shard_i]
    if not jobs:
        raise VideolavitError(f"no videos for shard {cfg.decompose.shard} in the corpus at {cfg.paths.corpus}")
    writers = {split: ClipShardWriter(out, split, tag, cfg.decompose.clips_per_shard) for split in SPLITS}
    stats = _MotionStats()
    counts = {split: 0 for split in SPLITS}
    rejects: list[dict] = []
    truncated: list[str] = []
    workers = max(1, min(int(cfg.decompose.workers), len(jobs)))
    cfg_yaml = OmegaConf.to_yaml(cfg)
    if workers > 1:
        pool = mp.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=(cfg_yaml,))
        results = pool.imap(_decompose_one, jobs, chunksize=1)
    else:
        pool = None
        _init_worker(cfg_yaml)
        results = map(_decompose_one, jobs)
    frames_in = 0
    try:
        for result in tqdm(results, total=len(jobs), desc=f"decompose {tag}", unit="video", disable=None):
            job = result["job"]
            if "reject" in result:
                rejects.append({"id": job["id"], "path": job["path"], "split": job["split"], **result["reject"]})
                continue
            if result["truncated"]:
                truncated.append(job["id"])
            for clip in result["clips"]:
                writers[job["split"]].write(clip)
                stats.add(clip["motion"])
                counts[job["split"]] += 1
                frames_in += clip["motion"].shape[1]
    finally:
        for writer in writers.values():
            writer.close()
        if pool is not None:
            pool.close()
            pool.join()
    for writer in writers.values():  # an empty split leaves no empty tar behind
        for path in writer.paths:
            if path.is_file() and path.stat().st_size <= 1024:
                path.unlink()

    part = {
        "shard": tag,
        "videos": len(jobs),
        "videos_ok": len(jobs) - len(rejects),
        "rejects": len(rejects),
        "truncated": truncated,
        "clips": counts,
        "motion": stats.as_dict(),
        "video": OmegaConf.to_container(cfg.video, resolve=True),
    }
    (out / "parts" / f"rejects-{tag}.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rejects))
    _write_json_atomic(out / "parts" / f"stats-{tag}.json", part)
    merged = _merge_parts(out)

    seconds = time.perf_counter() - started
    ratio = len(rejects) / len(jobs)
    metrics = {
        "videos": float(len(jobs)),
        "rejects": float(len(rejects)),
        "reject_ratio": ratio,
        "videos_truncated": float(len(truncated)),
        "clips": float(sum(counts.values())),
        **{f"clips_{split}": float(c) for split, c in counts.items()},
        "motion_std_x": merged["motion"]["std"][0],
        "motion_std_y": merged["motion"]["std"][1],
        "motion_nonzero_fraction": merged["motion"]["nonzero_fraction"],
        "seconds": seconds,
        "clip_frames_per_second": frames_in / max(seconds, 1e-9),
    }
    if ratio > float(cfg.decompose.max_reject_ratio):
        worst = "; ".join(f"{r['id']}: {r['error']}" for r in rejects[:5])
        raise VideolavitError(
            f"{len(rejects)} of {len(jobs)} videos were rejected ({ratio:.0%} > decompose.max_reject_ratio="
            f"{cfg.decompose.max_reject_ratio}); see {out / 'rejects.jsonl'}. First: {worst}"
        )
    return metrics
