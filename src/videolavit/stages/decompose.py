"""Stage ``decompose``: every corpus video → (keyframe, motion, frames) clips in WebDataset shards, or a reject line.

Outputs under ``paths.clips``: ``{split}-{i}of{n}-{k:05d}.tar`` (``decompose.videos_per_shard`` videos each),
``stats.json`` (counts, motion mean/std) and ``rejects.jsonl`` (id, path, split, error class, message).
``decompose.shard=i/n`` (CLI ``--shard i/n``) reads only its share of each manifest (data/manifest.py), so a SLURM
array or any launcher can fan out. Resumable: tars are renamed into place when complete and a re-run goes on from
each unit's journal (data/clip_units.py); a dead worker's video is a reject (data/unit_pool.py). Each shard writes
its part of the stats and rejects; whichever shard completes the set merges them, in shard order, so the result
does not depend on which finishes last. The stage fails only when the reject ratio exceeds
``decompose.max_reject_ratio``, after everything (clips, rejects, stats) is written.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from videolavit.data.clip_codec import check_codec
from videolavit.data.clip_units import (
    JOURNAL_DIR,
    MotionSums,
    journal_path,
    plan_units,
    process_unit,
    read_journal,
)
from videolavit.data.shards import PARTIAL, SPLITS
from videolavit.errors import ConfigError, VideolavitError, require_path
from videolavit.runner import stage_entry


def parse_shard(spec: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in str(spec).split("/"))
    except ValueError:
        raise ConfigError(f"decompose.shard must look like 'i/n' (e.g. 0/4), got {spec!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ConfigError(f"decompose.shard {spec!r}: need 0 <= i < n")
    return i, n


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # per process: shards finishing together do not collide
    tmp.write_text(text)
    os.replace(tmp, path)


def _fingerprint(cfg: DictConfig) -> dict:
    """What the shards' bytes depend on besides the corpus: a change makes a re-run start this shard over."""
    dec = cfg.decompose
    video = OmegaConf.to_container(cfg.video, resolve=True)
    video.pop("threads", None)  # decoder threads change the speed, not the clips
    return {
        "video": video,
        "codec": [dec.frame_codec, dec.motion_dtype, int(dec.frame_crf)],
        "videos_per_shard": int(dec.videos_per_shard),
    }


def _prepare(out: Path, tag: str, shard_n: int, fingerprint: dict) -> None:
    """Keep this shard's earlier work if it was made with the same settings; else clear it (for one shard: all)."""
    marker = out / "parts" / f"config-{tag}.json"
    text = json.dumps(fingerprint, sort_keys=True)
    if marker.is_file() and marker.read_text() == text:
        return
    pattern = "*" if shard_n == 1 else f"*-{tag}-*"
    stale = [*out.glob(f"{pattern}.tar"), *out.glob(f"{pattern}.tar{PARTIAL}")]
    stale += (out / JOURNAL_DIR).glob(f"{pattern}.jsonl")
    stale += [out / "parts" / f"stats-{tag}.json", out / "parts" / f"rejects-{tag}.jsonl"]
    stale += [out / "stats.json", out / "rejects.jsonl"]  # they no longer describe the shards
    for path in stale:
        path.unlink(missing_ok=True)
    if shard_n == 1:
        for path in (out / "parts").glob("*.*"):
            path.unlink()
    _write_atomic(marker, text)


def _lock(out: Path, tag: str):
    handle = open(out / "parts" / f"lock-{tag}", "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise VideolavitError(f"another `videolavit decompose` of shard {tag} is writing to {out}") from None
    return handle


def _summarize(out: Path, units: list, tag: str, settings: dict) -> tuple[dict, list[dict]]:
    """This shard's part: its units' journals read in plan order (not finishing order)."""
    part: dict = {"shard": tag, "videos": 0, "videos_ok": 0, "rejects": 0, "truncated": []}
    part["clips"] = dict.fromkeys(SPLITS, 0)
    sums, rejects = MotionSums(), []
    for name, split in units:
        for entry in read_journal(journal_path(out, name))["entries"]:
            part["videos"] += 1
            if "reject" in entry:
                rejects.append(entry["reject"])
                continue
            part["videos_ok"] += 1
            part["clips"][split] += entry["clips"]
            sums.add_clips(entry["motion"]["clips"])
            if entry["truncated"]:
                part["truncated"].append(entry["video"])
    part["rejects"] = len(rejects)
    part["motion"] = sums.as_dict()
    part["video"], part["settings"] = settings["video"], settings
    return part, rejects


def _merge_parts(out: Path, shard_n: int) -> dict | None:
    """stats.json and rejects.jsonl from every shard's part, once all ``shard_n`` exist (else None)."""
    paths = [out / "parts" / f"stats-{i}of{shard_n}.json" for i in range(shard_n)]
    if not all(p.is_file() for p in paths):
        return None
    parts = [json.loads(p.read_text()) for p in paths]
    if any(st["settings"] != parts[0]["settings"] for st in parts):  # some shard still to re-run with new settings
        return None
    merged: dict = {"videos": 0, "videos_ok": 0, "rejects": 0, "shards": [], "truncated": []}
    merged["clips"] = dict.fromkeys(SPLITS, 0)
    sums, rejects = MotionSums(), []
    for path, st in zip(paths, parts):
        for key in ("videos", "videos_ok", "rejects"):
            merged[key] += st[key]
        merged["truncated"] += st["truncated"]
        for split in SPLITS:
            merged["clips"][split] += st["clips"][split]
        merged["shards"].append(st["shard"])
        sums.merge(MotionSums(st["motion"]))
        merged["video"] = st["video"]
        rejects.append(path.with_name(path.name.replace("stats-", "rejects-").replace(".json", ".jsonl")).read_text())
    mean, std = sums.mean_std()
    merged["motion"] = {
        "mean": mean,
        "std": std,
        "nonzero_fraction": sums.nonzero / max(sums.n, 1),
        "units": "normalized tokenizer input (x/W, y/H, / motion_std, × motion_rescale)",
    }
    merged["clips_total"] = sum(merged["clips"].values())
    _write_atomic(out / "rejects.jsonl", "".join(rejects))
    _write_atomic(out / "stats.json", json.dumps(merged, indent=2, sort_keys=True) + "\n")
    return merged


@stage_entry("decompose")
def run(cfg: DictConfig) -> dict[str, float]:
    from tqdm import tqdm

    from videolavit.data.unit_pool import peak_rss_mb, run_units

    started = time.perf_counter()
    shard_i, shard_n = parse_shard(cfg.decompose.shard)
    dec = cfg.decompose
    check_codec(dec.frame_codec, dec.motion_dtype, dec.frame_crf)
    if int(dec.videos_per_shard) < 1 or int(dec.workers) < 0:
        raise ConfigError(f"decompose.videos_per_shard={dec.videos_per_shard} must be >= 1 and decompose.workers="
                          f"{dec.workers} >= 0 (0: in this process)")
    corpus = require_path(cfg.paths.corpus, "the corpus", "Run `videolavit corpus` (or `dvc repro corpus`) first.")
    tag = f"{shard_i}of{shard_n}"
    out = Path(cfg.paths.clips)
    (out / JOURNAL_DIR).mkdir(parents=True, exist_ok=True)
    lock = _lock(out, tag)
    try:
        _prepare(out, tag, shard_n, _fingerprint(cfg))
        planned: list[tuple[str, str]] = []

        def units():
            for unit in plan_units(corpus, tag, shard_i, shard_n, int(dec.videos_per_shard)):
                planned.append((unit.name, unit.split))
                yield unit

        peak = [0.0]
        bar = tqdm(desc=f"decompose {tag}", unit="tar", disable=None)

        def done(report: dict) -> None:
            peak[0] = max(peak[0], report["peak_rss_mb"])
            bar.update()

        if int(dec.workers) == 0:
            for unit in units():
                process_unit(unit, out, cfg)
                done({"peak_rss_mb": peak_rss_mb()})
        else:
            run_units(units(), out, OmegaConf.to_yaml(cfg), int(dec.workers), done)
        bar.close()
        if not planned:
            raise VideolavitError(f"no videos for shard {dec.shard} in the corpus at {cfg.paths.corpus}")
        names = {f"{name}.tar" for name, _ in planned}
        for path in out.glob(f"*-{tag}-*.tar"):  # tars of a unit the corpus no longer has
            if path.name not in names:
                path.unlink()
        part, rejects = _summarize(out, planned, tag, _fingerprint(cfg))
        lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rejects)
        _write_atomic(out / "parts" / f"rejects-{tag}.jsonl", lines)
        _write_atomic(out / "parts" / f"stats-{tag}.json", json.dumps(part, indent=2, sort_keys=True) + "\n")
        merged = _merge_parts(out, shard_n)
    finally:
        lock.close()
    own = part["motion"]  # until every shard is in, the metrics describe this one
    motion = merged["motion"] if merged else {"std": own["std"], "nonzero_fraction": own["nonzero"] / max(own["n"], 1)}
    seconds = time.perf_counter() - started
    clips = sum(part["clips"].values())
    ratio = part["rejects"] / max(part["videos"], 1)
    metrics = {
        "videos": float(part["videos"]),
        "rejects": float(part["rejects"]),
        "reject_ratio": ratio,
        "videos_truncated": float(len(part["truncated"])),
        "clips": float(clips),
        **{f"clips_{split}": float(c) for split, c in part["clips"].items()},
        "motion_std_x": motion["std"][0],
        "motion_std_y": motion["std"][1],
        "motion_nonzero_fraction": motion["nonzero_fraction"],
        "seconds": seconds,
        "clip_frames_per_second": clips * int(cfg.video.clip_frames) / max(seconds, 1e-9),
        "worker_peak_rss_mb": peak[0],
    }
    if ratio > float(dec.max_reject_ratio):
        worst = "; ".join(f"{r['id']}: {r['error']}" for r in rejects[:5])
        raise VideolavitError(
            f"{len(rejects)} of {part['videos']} videos were rejected ({ratio:.0%} > decompose.max_reject_ratio="
            f"{dec.max_reject_ratio}); see {out / 'rejects.jsonl'}. First: {worst}"
        )
    return metrics
