"""Clips are read with the ``video.*`` settings decompose made them with, or not at all.

decompose records its settings in ``<paths.clips>/stats.json`` (``"video"``; per shard in ``parts/config-*.json``
until the shards are merged). A reader whose config differs on a key that says how to read a field (its shape, its
normalisation) would read wrong values without an error: EPE in px/frame is motion × ``encode_width`` / ``motion_std``
... of the config, so clips made at another size silently scale every EPE. Such a reader stops with a ConfigError
naming the key, the clips' value and the config's. Clips with no recorded settings (hand-made shards) are not checked.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from videolavit.errors import ConfigError

# the video.* keys a reader of each clip field interprets it with
READ_KEYS = {
    "motion": ("clip_frames", "motion_height", "motion_width", "encode_width", "encode_height", "motion_std",
               "motion_rescale"),
    "frames": ("clip_frames", "frames_height", "frames_width"),
    "keyframe": ("keyframe_size",),
}


def recorded_settings(clips_dir: str) -> dict | None:
    """The ``video`` settings the clips in ``clips_dir`` were made with (None when nothing records them)."""
    if str(clips_dir).startswith("pipe:"):
        return None
    from videolavit.data.shards import is_remote, open_shard

    try:
        with open_shard(f"{str(clips_dir).rstrip('/')}/stats.json") as f:
            video = json.load(f).get("video")
        if isinstance(video, dict):
            return video
    except (OSError, ValueError, AttributeError):
        pass
    if is_remote(clips_dir):
        return None
    for marker in sorted(Path(clips_dir, "parts").glob("config-*.json")):  # a sharded run not merged yet
        try:
            video = json.loads(marker.read_text()).get("video")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(video, dict):
            return video
    return None


def check_clip_settings(cfg: Any, fields: Iterable[str]) -> None:
    """Raise ConfigError when ``cfg.video`` differs from the clips' recorded settings on a key ``fields`` are read
    with."""
    recorded = recorded_settings(str(cfg.paths.clips))
    if not recorded:
        return
    keys = dict.fromkeys(k for field in fields for k in READ_KEYS.get(field, ()))
    for key in keys:
        if key not in recorded:
            continue
        made, now = recorded[key], _plain(cfg.video[key])
        if not _same(made, now):
            raise ConfigError(
                f"video.{key}={_show(now)} but the clips in '{cfg.paths.clips}' were made with video.{key}="
                f"{_show(made)} (their stats.json): read them with video.{key}={_show(made)}, or re-run decompose "
                f"with {_show(now)}"
            )


def check_motion_model(clips_dir: str, model: Any, where: str, key: str) -> None:
    """Raise ConfigError when a trained motion tokenizer (``model``, loaded from ``where`` = config ``key``) reads
    another motion grid than the clips in ``clips_dir`` hold (their recorded clip_frames, motion_height/width)."""
    recorded = recorded_settings(str(clips_dir))
    names = ("clip_frames", "motion_height", "motion_width")
    if not recorded or not all(n in recorded for n in names):
        return
    clips = tuple(int(recorded[n]) for n in names)
    reads = (int(model.frames), int(model.height), int(model.width))
    if clips != reads:
        raise ConfigError(
            f"the motion tokenizer at '{where}' ({key}) reads {'x'.join(map(str, reads))} motion (T x H x W) but the "
            f"clips in '{clips_dir}' hold {'x'.join(map(str, clips))} (video.clip_frames x motion_height x "
            "motion_width of their stats.json): train it on these clips, or point the key at one that was"
        )


def _plain(value: Any) -> Any:
    from omegaconf import ListConfig, OmegaConf

    return OmegaConf.to_container(value, resolve=True) if isinstance(value, ListConfig) else value


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, Sequence) and not isinstance(a, str) and isinstance(b, Sequence) and not isinstance(b, str):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=0.0)
    return a == b


def _show(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
