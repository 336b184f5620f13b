"""Decompose work units: one output tar each, resumable at video granularity.

A unit is a fixed run of ``decompose.videos_per_shard`` consecutive videos of one split in this process's share of
the manifest; its clips go to ``<clips>/<split>-<i>of<n>-<k:05d>.tar``, written as ``.tar.partial`` and renamed when
the unit is complete. Beside it, ``parts/journal/<unit>.jsonl`` records, flushed after each video: a header (the
unit's video list digest), ``{"begin": id}`` before a video, then its entry (clip count, motion sums, truncated, or
the reject) with the tar's byte offset after it, and ``{"done": true}`` last. A re-run skips done units and cuts a
partial tar back to the last entry's offset, then goes on with the next video; a video that was begun but has no
entry is decomposed again, unless the parent saw its worker die on it (then it is a reject, see unit_pool.py).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np

from videolavit.data.clip_codec import encode_clip
from videolavit.data.shards import PARTIAL, SPLITS, PartialTar, clip_key
from videolavit.errors import VideolavitError

JOURNAL_DIR = "parts/journal"


@dataclass
class Unit:
    name: str  # <split>-<i>of<n>-<k:05d>: the tar is <name>.tar
    split: str
    jobs: list[dict]  # {"id", "path", "split", "caption"}

    def digest(self) -> str:
        text = json.dumps([(j["id"], j["path"], j["caption"]) for j in self.jobs], ensure_ascii=False)
        return hashlib.sha1(text.encode()).hexdigest()


def plan_units(corpus: Path, tag: str, shard_i: int, shard_n: int, per_tar: int) -> Iterator[Unit]:
    """This shard's units, split by split, streamed from its share of each manifest (one unit held at a time)."""
    from videolavit.data.manifest import iter_manifest_share

    for split in SPLITS:
        if not (corpus / f"{split}.jsonl").is_file():
            continue
        jobs: list[dict] = []
        k = 0
        for sample in iter_manifest_share(corpus, split, shard_i, shard_n):
            if sample.kind != "video":
                continue
            path = str(sample.media_path(corpus))
            jobs.append({"id": sample.id, "path": path, "split": split, "caption": sample.caption})
            if len(jobs) == per_tar:
                yield Unit(f"{split}-{tag}-{k:05d}", split, jobs)
                jobs, k = [], k + 1
        if jobs:
            yield Unit(f"{split}-{tag}-{k:05d}", split, jobs)


# --- the journal ------------------------------------------------------------------------------------------------------


def journal_path(out: Path, name: str) -> Path:
    return out / JOURNAL_DIR / f"{name}.jsonl"


def append(path: Path, entry: dict) -> None:
    """One journal line, on disk before the caller goes on."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_journal(path: Path, repair: bool = False) -> dict:
    """{"digest", "entries": [video entries in order], "begun": id begun without an entry or None, "done", "offset"}.
    A torn last line (its writer was killed inside it) is skipped, and with ``repair`` cut off the file, so that the
    next line does not join it (only the unit's one writer may repair)."""
    state: dict = {"digest": None, "entries": [], "begun": None, "done": False, "offset": 0}
    if not path.is_file():
        return state
    lines = path.read_bytes().split(b"\n")
    valid = 0
    for n, line in enumerate(lines):
        if not line:
            valid += 1
            continue
        try:
            entry = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            if n == len(lines) - 1:  # no newline after it: torn
                if repair:
                    with open(path, "r+b") as f:
                        f.truncate(valid)
                break
            raise VideolavitError(f"{path}: line {n + 1} is not JSON; delete the file to redo that shard") from None
        valid += len(line) + 1
        if "digest" in entry:
            state["digest"] = entry["digest"]
        elif "begin" in entry:
            state["begun"] = entry["begin"]
        elif "video" in entry:
            state["entries"].append(entry)
            state["begun"], state["offset"] = None, int(entry["offset"])
        elif entry.get("done"):
            state["done"] = True
    return state


def note_dead_worker(out: Path, unit: Unit, how: str) -> Optional[str]:
    """The parent's record of a worker that died inside a video: that video becomes a reject. Returns its id, or None
    when the worker died between videos (nothing to blame)."""
    path = journal_path(out, unit.name)
    state = read_journal(path, repair=True)
    if state["begun"] is None:
        return None
    job = next(j for j in unit.jobs if j["id"] == state["begun"])
    message = f"{job['path']}: the decompose worker died while decomposing it ({how}); not retried"
    append(path, _reject_entry(job, "WorkerDiedError", message, state["offset"]))
    return job["id"]


def _reject_entry(job: dict, error: str, message: str, offset: int) -> dict:
    reject = {"id": job["id"], "path": job["path"], "split": job["split"], "error": error, "message": message}
    return {"video": job["id"], "reject": reject, "offset": offset}


# --- one unit ---------------------------------------------------------------------------------------------------------


def process_unit(unit: Unit, out: Path, cfg: Any, parent_pid: Optional[int] = None) -> None:
    """Decompose the unit's videos not yet in its journal into its tar, clip by clip; finish and rename the tar."""
    jpath, tar_path = journal_path(out, unit.name), out / f"{unit.name}.tar"
    partial = tar_path.with_name(tar_path.name + PARTIAL)
    state = read_journal(jpath, repair=True)
    digest = unit.digest()
    fresh = state["digest"] != digest or (
        not partial.is_file() and not tar_path.is_file() and any(e.get("clips") for e in state["entries"])
    )  # another video list, or the tar holding its clips is gone: redo the unit
    if fresh:
        for path in (tar_path, partial, jpath):
            path.unlink(missing_ok=True)
        jpath.parent.mkdir(parents=True, exist_ok=True)
        append(jpath, {"unit": unit.name, "digest": digest, "videos": len(unit.jobs)})
        state = read_journal(jpath)
    done = {e["video"] for e in state["entries"]}
    if state["done"] or (len(done) == len(unit.jobs) and not partial.is_file()):
        if not state["done"]:  # killed between the rename and the done line
            append(jpath, {"done": True})
        return
    tar = PartialTar(tar_path, resume_at=state["offset"] if partial.is_file() else None)
    codec = (str(cfg.decompose.frame_codec), str(cfg.decompose.motion_dtype), int(cfg.decompose.frame_crf))
    try:
        for job in unit.jobs:
            if job["id"] in done:
                continue
            append(jpath, {"begin": job["id"]})
            entry = decompose_into(job, cfg.video, tar, codec, parent_pid)
            entry["offset"] = tar.sync()
            append(jpath, entry)
        tar.finish()
    except BaseException:
        tar.abandon()
        raise
    append(jpath, {"done": True})


def decompose_into(job: dict, video_cfg: Any, tar: PartialTar, codec: tuple, parent_pid: Optional[int] = None) -> dict:
    """One video's clips into ``tar`` one at a time (memory: one clip), → its journal entry (without the offset).

    Any fault of the video is a reject entry, its clips taken back out of the tar; a fault of the machine (out of
    memory, a failing re-encode) raises, as it must not be counted against the video."""
    from videolavit.errors import MotionCodecError, VideoError
    from videolavit.video import iter_clips

    start = tar.sync()
    keep_frames = bool(video_cfg.frames_height and video_cfg.frames_width)
    sums = MotionSums()
    try:
        stream = iter_clips(job["path"], video_cfg, keep_frames=keep_frames)
        count = 0
        for clip in stream:
            if parent_pid is not None and os.getppid() != parent_pid:
                raise SystemExit(f"decompose worker: the stage process {parent_pid} is gone")
            meta = {"video_id": job["id"], "clip": int(clip.index), "start_time": float(clip.start_time),
                    "split": job["split"], "caption": job["caption"]}
            record = {"key": clip_key(job["id"], clip.index), "keyframe": clip.keyframe, "motion": clip.motion,
                      "frames": clip.frames, "meta": meta}
            tar.write(encode_clip(record, *codec))
            sums.add(clip.motion.astype(np.float16) if codec[1] == "float16" else clip.motion)  # what readers get
            count += 1
        if not count:
            raise VideoError(job["path"], "no clip could be cut (no I-frame followed by a full 24-frame clip)")
        motion = sums.as_dict(clips=True)
        return {"video": job["id"], "clips": count, "truncated": bool(stream.truncated), "motion": motion}
    except MotionCodecError:
        raise
    except MemoryError:
        raise VideolavitError(
            f"{job['path']}: out of memory while decomposing it (not counted as a reject); lower decompose.workers "
            "or video.threads and run the stage again"
        ) from None
    except Exception as exc:  # a reject, whatever the cause: the accounting must be complete
        tar.rollback(start)
        kind = type(exc).__name__
        message = str(exc) if isinstance(exc, VideoError) else f"{job['path']}: unexpected {kind}: {exc}"
        return _reject_entry(job, kind, message, start)


class MotionSums:
    """Per-channel sums of the normalized motion (float64). A video's entry keeps each clip's sums, so a shard's
    totals are added clip by clip in plan order: the same floats as one pass over the shard, resumed or not."""

    def __init__(self, d: Optional[dict] = None) -> None:
        d = d or {}
        self.n, self.nonzero = int(d.get("n", 0)), int(d.get("nonzero", 0))
        self.sum = np.array(d.get("sum", [0.0, 0.0]), np.float64)
        self.sq = np.array(d.get("sq", [0.0, 0.0]), np.float64)
        self.clips: list[list] = []

    def add(self, motion: np.ndarray) -> None:
        m = motion.reshape(2, -1).astype(np.float64)
        clip = [*m.sum(1).tolist(), *(m * m).sum(1).tolist(), m.shape[1], int(np.count_nonzero(np.abs(m).sum(0)))]
        self.clips.append(clip)
        self.add_clips([clip])

    def add_clips(self, clips: list[list]) -> None:
        for sx, sy, qx, qy, n, nonzero in clips:
            self.n += int(n)
            self.sum += np.array([sx, sy])
            self.sq += np.array([qx, qy])
            self.nonzero += int(nonzero)

    def merge(self, other: "MotionSums") -> None:
        self.n, self.nonzero = self.n + other.n, self.nonzero + other.nonzero
        self.sum, self.sq = self.sum + other.sum, self.sq + other.sq

    def mean_std(self) -> tuple[list, list]:
        mean = self.sum / max(self.n, 1)
        return mean.tolist(), np.sqrt(np.maximum(self.sq / max(self.n, 1) - mean**2, 0.0)).tolist()

    def as_dict(self, clips: bool = False) -> dict:
        mean, std = self.mean_std()
        d = {"n": self.n, "sum": self.sum.tolist(), "sq": self.sq.tolist(), "nonzero": self.nonzero}
        d.update(mean=mean, std=std)
        return {**d, "clips": self.clips} if clips else d
