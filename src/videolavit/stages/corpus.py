"""The ``corpus`` stage: build the synthetic corpus or import a real dataset into ``paths.corpus`` (the manifest).

The new corpus is built beside the old one and swapped in only when complete, so a failed build leaves the previous
corpus intact. Only the entries a corpus consists of are replaced; anything else in the folder is left alone.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from omegaconf import DictConfig

from videolavit import tracking
from videolavit.data.manifest import INSTRUCT_FILE, META_FILE, MISSING_FILE, SPLITS
from videolavit.errors import ConfigError
from videolavit.runner import stage_entry

CORPUS_ENTRIES = (META_FILE, INSTRUCT_FILE, MISSING_FILE, *(f"{s}.jsonl" for s in SPLITS), "videos", "images")


@stage_entry("corpus")
def run(cfg: DictConfig) -> dict[str, float]:
    c = cfg.corpus
    out = Path(cfg.paths.corpus)
    _check_inputs(c, out)
    building = out.parent / f".{out.name}.building"
    if building.exists():
        shutil.rmtree(building)
    building.mkdir(parents=True)
    started = time.perf_counter()
    try:
        if c.source == "synthetic":
            from videolavit.data.synthetic import build_synthetic

            counts = build_synthetic(building, c, video_fps=float(cfg.video.fps), clip_frames=int(cfg.video.clip_frames), workers=int(c.workers))
        else:
            from videolavit.data.importers import import_dataset, write_imported

            result = import_dataset(c.source, c.import_path, c.media_dir, split=c.import_split)
            extra = {"import_path": os.path.abspath(c.import_path), "media_dir": os.path.abspath(c.media_dir) if c.media_dir else None}
            counts = write_imported(building, result, seed=int(c.seed), val_fraction=float(c.val_fraction), extra_meta=extra)
        _swap_in(building, out)
    finally:
        if building.exists():
            shutil.rmtree(building)
    tracking.active().log_artifact(out / META_FILE)
    metrics = {k: float(v) for k, v in counts.items()}
    metrics["build_seconds"] = time.perf_counter() - started
    return metrics


def _check_inputs(c, out: Path) -> None:
    """Fail before touching the old corpus: bad source, or a dataset that lives inside what would be replaced."""
    from videolavit.data.importers import SOURCES

    if c.source not in ("synthetic", *SOURCES):
        raise ConfigError(f"corpus.source '{c.source}' is unknown. Valid: synthetic, {', '.join(SOURCES)}")
    if c.source == "synthetic":
        return
    for key in ("import_path", "media_dir"):
        value = getattr(c, key)
        if not value:
            continue
        target = Path(os.path.abspath(value))
        for entry in CORPUS_ENTRIES:
            owned = Path(os.path.abspath(out / entry))
            if target == owned or owned in target.parents:
                raise ConfigError(f"corpus.{key} '{value}' lies inside the corpus output '{owned}', which the stage replaces")


def _swap_in(building: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for entry in CORPUS_ENTRIES:
        old = out / entry
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        elif old.exists() or old.is_symlink():
            old.unlink()
    for new in sorted(building.iterdir()):
        os.replace(new, out / new.name)
