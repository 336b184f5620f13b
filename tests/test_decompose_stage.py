"""The decompose stage: accounting (every video is in the clips or in rejects.jsonl), shards, stats, fan-out."""

from __future__ import annotations

import json

import numpy as np
import pytest

from videolavit.data.shards import clip_shard_paths, iter_clip_records
from videolavit.errors import ConfigError, VideolavitError
from videolavit.video.io import write_video


def _moving_square(seconds: float, fps: float = 12.0, size=(96, 160), seed: int = 0):
    rng = np.random.default_rng(seed)
    h, w = size
    background = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    patch = rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)
    for t in range(int(seconds * fps)):
        frame = background.copy()
        x = 20 + (t * 2) % (w - 50)
        frame[36:60, x : x + 24] = patch
        yield frame


def _corpus(root, good: int = 3):
    """A corpus with `good` playable videos plus a missing, an empty and a not-a-video file."""
    (root / "videos").mkdir(parents=True)
    rows = []
    for i in range(good):
        write_video(root / "videos" / f"ok_{i}.mp4", _moving_square(8.5, seed=i), fps=12)
        rows.append({"id": f"ok_{i}", "path": f"videos/ok_{i}.mp4"})
    (root / "videos" / "empty.mp4").write_bytes(b"")
    (root / "videos" / "text.mp4").write_text("this is not a video\n")
    rows += [
        {"id": "missing", "path": "videos/missing.mp4"},
        {"id": "empty", "path": "videos/empty.mp4"},
        {"id": "text", "path": "videos/text.mp4"},
    ]
    with open(root / "train.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps({**row, "kind": "video", "caption": "a square moves", "qa": [], "attributes": {}, "clips": []}) + "\n")
    for split in ("val", "test"):
        (root / f"{split}.jsonl").write_text("")
    return [r["id"] for r in rows]


def _run(cfg):
    from videolavit.stages.decompose import run

    return run(cfg)


def test_every_input_is_in_the_clips_or_in_rejects(tiny_cfg_factory, tmp_path):
    ids = _corpus(tmp_path / "corpus")
    cfg = tiny_cfg_factory("tracking.enabled=false", "decompose.workers=1", "decompose.max_reject_ratio=1.0")
    metrics = _run(cfg)

    clips = list(iter_clip_records(cfg.paths.clips, "train", fields=("motion", "keyframe", "frames", "meta")))
    rejects = [json.loads(line) for line in (tmp_path / "clips" / "rejects.jsonl").read_text().splitlines()]
    clipped = {c["meta"]["video_id"] for c in clips}
    rejected = {r["id"] for r in rejects}
    assert clipped | rejected == set(ids) and not clipped & rejected
    assert rejected == {"missing", "empty", "text"}
    assert {r["error"] for r in rejects} >= {"VideoNotFoundError", "EmptyVideoError"}
    assert all(r["message"] and r["path"] for r in rejects)

    # 8.5 s at 6 fps = 51 frames: two non-overlapping 24-frame clips per good video
    assert len(clips) == 6 and metrics["clips"] == 6 and metrics["rejects"] == 3
    c = clips[0]
    assert c["motion"].shape == (2, 24, cfg.video.motion_height, cfg.video.motion_width) and c["motion"].dtype == np.float32
    assert c["keyframe"].shape == (cfg.video.keyframe_size, cfg.video.keyframe_size, 3) and c["keyframe"].dtype == np.uint8
    assert c["frames"].shape == (24, cfg.video.frames_height, cfg.video.frames_width, 3)
    assert c["meta"]["split"] == "train" and c["meta"]["clip"] in (0, 1)

    stats = json.loads((tmp_path / "clips" / "stats.json").read_text())
    assert stats["clips"]["train"] == 6 and stats["rejects"] == 3 and stats["videos"] == 6
    assert stats["motion"]["std"][0] > 0  # the square moves horizontally


def test_reject_ratio_over_the_limit_fails_after_writing_everything(tiny_cfg_factory, tmp_path):
    _corpus(tmp_path / "corpus", good=1)
    cfg = tiny_cfg_factory("tracking.enabled=false", "decompose.workers=1", "decompose.max_reject_ratio=0.5")
    with pytest.raises(VideolavitError, match="rejected"):
        _run(cfg)
    assert len((tmp_path / "clips" / "rejects.jsonl").read_text().splitlines()) == 3
    assert clip_shard_paths(cfg.paths.clips, "train")


def test_shards_split_the_videos_and_merge(tiny_cfg_factory, tmp_path):
    ids = _corpus(tmp_path / "corpus", good=2)
    seen = set()
    for i in range(2):
        cfg = tiny_cfg_factory("tracking.enabled=false", "decompose.workers=2", "decompose.max_reject_ratio=1.0", f"decompose.shard={i}/2")
        _run(cfg)
    for record in iter_clip_records(tmp_path / "clips", "train", fields=("meta",)):
        seen.add(record["meta"]["video_id"])
    stats = json.loads((tmp_path / "clips" / "stats.json").read_text())
    rejected = {json.loads(line)["id"] for line in (tmp_path / "clips" / "rejects.jsonl").read_text().splitlines()}
    assert seen | rejected == set(ids)
    assert sorted(stats["shards"]) == ["0of2", "1of2"] and stats["videos"] == len(ids)


def test_bad_shard_spec_is_a_config_error(tiny_cfg_factory):
    from videolavit.stages.decompose import parse_shard

    assert parse_shard("1/4") == (1, 4)
    for bad in ("4/4", "x", "1-4", "0/0"):
        with pytest.raises(ConfigError):
            parse_shard(bad)


def test_missing_corpus_names_the_fix(tiny_cfg_factory):
    from videolavit.errors import MissingArtifactError

    with pytest.raises(MissingArtifactError, match="videolavit corpus"):
        _run(tiny_cfg_factory("tracking.enabled=false"))
