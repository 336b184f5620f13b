"""Decompose at scale: compact clips, manifest shares, atomic and resumable shards, dead workers, merge order."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from videolavit.data import clip_codec
from videolavit.data.clip_units import journal_path, read_journal
from videolavit.data.manifest import Sample, iter_manifest_share, read_manifest, write_manifest
from videolavit.data.shards import PARTIAL, ClipShardWriter, PartialTar, clip_shard_paths, iter_shard
from videolavit.video.io import write_video

FIELDS = ("keyframe", "motion", "frames", "meta")


def _smooth_frames(t=24, h=32, w=48, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (h // 4 + 2, w // 4 + 2, 3)).astype(np.float32)
    big = np.kron(base, np.ones((4, 4, 1)))
    return np.stack([big[k % 4 : k % 4 + h, (k // 2) % 4 : (k // 2) % 4 + w] for k in range(t)]).astype(np.uint8)


def _psnr(a, b):
    return 10 * np.log10(255**2 / np.mean((a.astype(np.float64) - b) ** 2))


# --- compact clips ----------------------------------------------------------------------------------------------------


def test_frame_codecs_round_trip_and_readers_get_the_old_dtypes(tmp_path):
    frames = _smooth_frames()
    motion = np.random.default_rng(1).normal(0, 3, (2, 24, 8, 12)).astype(np.float32)
    for codec, dtype in (("npy", "float32"), ("ffv1", "float32"), ("h264", "float16")):
        with ClipShardWriter(tmp_path / codec, "train", frame_codec=codec, motion_dtype=dtype) as writer:
            record = {"key": "v__c000", "keyframe": frames[0], "motion": motion, "frames": frames, "meta": {"clip": 0}}
            writer.write(record)
        (record,) = iter_shard(clip_shard_paths(tmp_path / codec, "train")[0], FIELDS)
        assert record["frames"].dtype == np.uint8 and record["frames"].shape == frames.shape
        assert record["motion"].dtype == np.float32 and record["meta"] == {"clip": 0}
        np.testing.assert_array_equal(record["keyframe"], frames[0])
        if codec == "h264":
            assert _psnr(record["frames"], frames) > 30
            np.testing.assert_allclose(record["motion"], motion, rtol=1e-3, atol=1e-3)
        else:  # lossless: the same arrays as before compression
            np.testing.assert_array_equal(record["frames"], frames)
            np.testing.assert_array_equal(record["motion"], motion)
    sizes = {c: clip_shard_paths(tmp_path / c, "train")[0].stat().st_size for c in ("npy", "ffv1", "h264")}
    assert sizes["h264"] < sizes["ffv1"] < sizes["npy"]


def test_bad_codec_settings_name_the_key():
    from videolavit.errors import ConfigError

    with pytest.raises(ConfigError, match="decompose.frame_codec"):
        clip_codec.check_codec("webm", "float16")
    with pytest.raises(ConfigError, match="decompose.motion_dtype"):
        clip_codec.check_codec("h264", "int8")


# --- manifest shares --------------------------------------------------------------------------------------------------


def test_manifest_shares_cover_every_line_once_in_order(tmp_path):
    samples = [Sample(f"v{i}", "video", f"videos/v{i}.mp4", caption="x" * (i * 37 % 200)) for i in range(53)]
    write_manifest(tmp_path, "train", samples)
    ids = [s.id for s in read_manifest(tmp_path, "train")]
    for n in (1, 2, 3, 7, 53, 80):
        shares = [[s.id for s in iter_manifest_share(tmp_path, "train", i, n)] for i in range(n)]
        assert [x for share in shares for x in share] == ids, n
    (tmp_path / "train.jsonl").write_text((tmp_path / "train.jsonl").read_text() + "{not json\n")
    from videolavit.errors import CorpusError

    with pytest.raises(CorpusError, match="train.jsonl: the line at byte"):
        list(iter_manifest_share(tmp_path, "train", 1, 2))


# --- atomic tars ------------------------------------------------------------------------------------------------------


def test_a_partial_tar_is_invisible_and_resumes_at_a_video_boundary(tmp_path):
    tar = PartialTar(tmp_path / "train-0of1-00000.tar")
    tar.write([("a__c000.json", b"{}"), ("a__c000.keyframe.npy", clip_codec.npy_bytes(np.zeros((2, 2, 3), np.uint8)))])
    after_a = tar.sync()
    tar.write([("b__c000.json", b"{}")])  # a video the writer never finished
    tar.abandon()
    assert clip_shard_paths(tmp_path, "train") == [] and (tmp_path / f"train-0of1-00000.tar{PARTIAL}").is_file()
    tar = PartialTar(tmp_path / "train-0of1-00000.tar", resume_at=after_a)
    tar.write([("c__c000.json", b"{}")])
    start = tar.sync()
    tar.write([("d__c000.json", b"{}")])
    tar.rollback(start)  # d turned out to be a reject
    assert tar.finish() == tmp_path / "train-0of1-00000.tar"
    keys = [r["key"] for r in iter_shard(tmp_path / "train-0of1-00000.tar", ("keyframe", "meta"))]
    assert keys == ["a__c000", "c__c000"] and not list(tmp_path.glob(f"*{PARTIAL}"))


def test_a_torn_journal_line_is_skipped_and_cut_before_the_next_one(tmp_path):
    from videolavit.data.clip_units import append

    path = tmp_path / "u.jsonl"
    append(path, {"unit": "u", "digest": "d", "videos": 2})
    append(path, {"video": "a", "clips": 1, "offset": 1536})
    with open(path, "a") as f:
        f.write('{"begin": "b"')  # killed inside the write
    assert read_journal(path)["offset"] == 1536 and path.read_text().endswith('"b"')  # a reader changes nothing
    state = read_journal(path, repair=True)
    assert [e["video"] for e in state["entries"]] == ["a"] and state["begun"] is None
    append(path, {"begin": "b"})
    assert read_journal(path)["begun"] == "b"


# --- the stage --------------------------------------------------------------------------------------------------------


def _square(seconds: float, seed: int, fps: float = 12.0, size=(96, 160)):
    rng = np.random.default_rng(seed)
    h, w = size
    background = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    patch = rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)
    for t in range(int(seconds * fps)):
        frame = background.copy()
        x = 20 + (t * 2) % (w - 50)
        frame[36:60, x : x + 24] = patch
        yield frame


def _corpus(root: Path, seconds=(8.5, 8.5, 8.5, 8.5), val=(8.5,), long_id=None, long_seconds=0.0):
    """Videos of a moving square (8.5 s: two clips each) in train and val, plus one file that is not a video."""
    (root / "videos").mkdir(parents=True)
    rows = {"train": [], "val": [], "test": []}
    for split, lengths in (("train", seconds), ("val", val)):
        for i, length in enumerate(lengths):
            vid = f"{split}_{i}"
            seed = len(rows[split]) + 10 * (split == "val")
            write_video(root / "videos" / f"{vid}.mp4", _square(length, seed=seed), fps=12)
            rows[split].append(Sample(vid, "video", f"videos/{vid}.mp4", caption=f"square {vid}"))
    if long_id:
        write_video(root / "videos" / f"{long_id}.mp4", _square(long_seconds, seed=99), fps=12)
        rows["train"].insert(1, Sample(long_id, "video", f"videos/{long_id}.mp4", caption="a long one"))
    (root / "videos" / "text.mp4").write_text("not a video\n")
    rows["train"].append(Sample("text", "video", "videos/text.mp4"))
    for split, samples in rows.items():
        write_manifest(root, split, samples)


def _overrides(root: Path, clips: str = "clips", *extra: str) -> list[str]:
    paths = [f"paths.{k}={root / k}" for k in ("corpus", "tokens", "models", "metrics", "reports", "runs")]
    return [*paths, f"paths.clips={root / clips}", "tracking.enabled=false", "decompose.max_reject_ratio=1.0", *extra]


def _contents(clips: Path) -> dict:
    """Every final tar's samples (arrays as bytes), plus the stats and rejects."""
    out = {}
    for path in sorted(clips.glob("*.tar")):
        out[path.name] = [
            (r["key"], json.dumps(r["meta"], sort_keys=True), *(r[f].tobytes() for f in FIELDS[:3]))
            for r in iter_shard(path, FIELDS)
        ]
    out["stats"] = json.loads((clips / "stats.json").read_text())
    out["rejects"] = (clips / "rejects.jsonl").read_text()
    return out


def _run_inline(root: Path, clips: str = "clips", *extra: str) -> dict:
    from videolavit.config import load_config
    from videolavit.stages.decompose import run

    return run(load_config(profile="tiny", overrides=_overrides(root, clips, *extra), params_file=None))


def test_rerun_resumes_a_killed_unit_after_its_last_whole_video(tmp_path, monkeypatch):
    from videolavit.data import clip_units

    _corpus(tmp_path / "corpus")
    _run_inline(tmp_path, "reference", "decompose.workers=0", "decompose.videos_per_shard=3")
    calls = []
    real = clip_units.decompose_into

    def dies_on_the_third(job, *args, **kwargs):
        calls.append(job["id"])
        if len(calls) == 3:
            raise KeyboardInterrupt  # stands for SIGKILL: nothing after this point runs
        return real(job, *args, **kwargs)

    monkeypatch.setattr(clip_units, "decompose_into", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        _run_inline(tmp_path, "clips", "decompose.workers=0", "decompose.videos_per_shard=3")
    clips = tmp_path / "clips"
    assert not clip_shard_paths(clips, "train") and (clips / f"train-0of1-00000.tar{PARTIAL}").is_file()
    entries = read_journal(journal_path(clips, "train-0of1-00000"))["entries"]
    assert [e["video"] for e in entries] == ["train_0", "train_1"]
    calls.clear()

    def spy(job, *args, **kwargs):
        calls.append(job["id"])
        return real(job, *args, **kwargs)

    monkeypatch.setattr(clip_units, "decompose_into", spy)
    _run_inline(tmp_path, "clips", "decompose.workers=0", "decompose.videos_per_shard=3")
    assert calls == ["train_2", "train_3", "text", "val_0"]  # the two whole videos were not decomposed again
    assert _contents(clips) == _contents(tmp_path / "reference")


def test_new_settings_redo_the_shards_and_a_finished_run_is_not_redone(tmp_path, monkeypatch):
    from videolavit.data import clip_units

    _corpus(tmp_path / "corpus", seconds=(8.5,), val=())
    _run_inline(tmp_path, "clips", "decompose.workers=0", "decompose.frame_codec=npy")
    calls = []
    real = clip_units.decompose_into
    monkeypatch.setattr(clip_units, "decompose_into", lambda job, *a: calls.append(job["id"]) or real(job, *a))
    _run_inline(tmp_path, "clips", "decompose.workers=0", "decompose.frame_codec=npy", "decompose.workers=0")
    assert calls == []  # every unit done: nothing decomposed again
    _run_inline(tmp_path, "clips", "decompose.workers=0", "decompose.frame_codec=h264")
    assert calls == ["train_0", "text"]
    import tarfile

    (path,) = clip_shard_paths(tmp_path / "clips", "train")
    names = tarfile.open(path).getnames()
    assert any(n.endswith(".frames.mp4") for n in names) and not any(n.endswith(".frames.npy") for n in names)


def test_merged_stats_do_not_depend_on_which_shard_finishes_last(tmp_path):
    _corpus(tmp_path / "corpus")
    for order, clips in (((0, 1), "a"), ((1, 0), "b")):
        for i in order:
            _run_inline(tmp_path, clips, "decompose.workers=0", f"decompose.shard={i}/2")
            assert (tmp_path / clips / "stats.json").is_file() == (i == order[1])  # merged only once both are in
    a, b = _contents(tmp_path / "a"), _contents(tmp_path / "b")
    assert a == b and a["stats"]["shards"] == ["0of2", "1of2"] and a["stats"]["videos"] == 6


def _cli(root: Path, clips: str, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "videolavit.cli", "decompose", *_overrides(root, clips, *extra)]
    return subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 300.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.01)
    raise AssertionError("timed out waiting for the decompose CLI")


@pytest.mark.slow
def test_sigkill_at_three_moments_then_rerun_gives_the_uninterrupted_shards(tmp_path):
    import psutil

    _corpus(tmp_path / "corpus", seconds=(20, 20, 20, 20, 20), val=(20, 20))
    opts = ("decompose.workers=2", "decompose.videos_per_shard=2")
    ref = _cli(tmp_path, "reference", *opts)
    assert ref.wait() == 0, ref.stderr.read().decode()
    clips = tmp_path / "clips"
    partial = lambda: any(clips.glob(f"*{PARTIAL}"))  # noqa: E731
    moments = [
        partial,  # inside the first units
        lambda: len(list(clips.glob("*.tar"))) >= 1 and partial(),  # one tar done, others half-written
        lambda: len(list(clips.glob("*.tar"))) >= 3,  # most tars done
    ]
    killed = 0
    for moment in moments:
        proc = _cli(tmp_path, "clips", *opts)
        workers = []
        if _wait_for(moment, proc):
            workers = psutil.Process(proc.pid).children()
            proc.send_signal(signal.SIGKILL)
        killed += proc.wait() == -signal.SIGKILL
        gone, alive = psutil.wait_procs(workers, timeout=10)
        assert not alive  # its workers die with it (PR_SET_PDEATHSIG): no orphan keeps writing
        for path in clips.glob("*.tar"):  # every tar under its final name reads to the end
            assert all(set(FIELDS) <= set(r) for r in iter_shard(path, FIELDS)), path
    assert killed >= 2  # (a fast machine may finish before the last moment)
    final = _cli(tmp_path, "clips", *opts)
    assert final.wait() == 0, final.stderr.read().decode()
    assert _contents(clips) == _contents(tmp_path / "reference")
    assert not list(clips.glob(f"*{PARTIAL}"))


@pytest.mark.slow
def test_a_killed_worker_is_a_reject_and_the_stage_goes_on(tmp_path):
    import psutil

    _corpus(tmp_path / "corpus", long_id="long", long_seconds=120)
    proc = _cli(tmp_path, "clips", "decompose.workers=1", "decompose.videos_per_shard=2")
    journal = journal_path(tmp_path / "clips", "train-0of1-00000")
    assert _wait_for(lambda: read_journal(journal)["begun"] == "long", proc)
    (worker,) = [p for p in psutil.Process(proc.pid).children() if "resource_tracker" not in " ".join(p.cmdline())]
    worker.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()
    rejects = {r["id"]: r for r in map(json.loads, (tmp_path / "clips" / "rejects.jsonl").read_text().splitlines())}
    assert set(rejects) == {"long", "text"}
    assert rejects["long"]["error"] == "WorkerDiedError" and "SIGKILL" in rejects["long"]["message"]
    videos = {r["meta"]["video_id"] for p in (tmp_path / "clips").glob("*.tar") for r in iter_shard(p, ("meta",))}
    assert videos == {"train_0", "train_1", "train_2", "train_3", "val_0"}
    stats = json.loads((tmp_path / "clips" / "stats.json").read_text())
    assert stats["videos"] == 7 and stats["rejects"] == 2
