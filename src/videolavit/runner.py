"""How a stage runs: inputs checked, seeding, one MLflow run, metrics logged there and written to
``metrics/<stage>.json`` (flat numbers, what DVC compares), ``metrics/<stage>.notes.json`` (the strings: protocol,
why a value is null) and ``metrics/plots/<stage>/<metric>.csv`` (each curve the run logged, for ``dvc plots``).

Stage wiring every stage shares (corpus and report too, which must not load torch or Lightning), so it lives beside
``tracking`` rather than under ``stages/`` (no stage imports another) or ``training/`` (not every stage trains).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from omegaconf import DictConfig

from videolavit import tracking


# Third-party messages that say nothing about this run (each measured in `dvc repro 2>&1 | cat` of the tiny profile):
# Lightning's hardware/tips banner, deprecations inside libraries, and library progress bars when not on a terminal.
NOISY_WARNINGS = (
    r".*isinstance\(treespec, LeafSpec\).*",  # lightning's _pytree on torch >= 2.10
    r"You have overridden `on_(before|after)_batch_transfer`.*",  # the detokenizer and visual tokenizer move batches
    # themselves, on purpose (their DataModules do not define the hook)
    r".*`past_key_values` is deprecated.*",  # transformers 5 renamed it `cache`; 4.x (supported) knows only this name
    r".*does not have many workers.*",  # workers are a config choice (data.num_workers), 0 on the tiny profile
    r".*The number of training batches .* is smaller than the logging interval.*",
)


def quiet_third_party(terminal: bool | None = None) -> None:
    """Filter the known noisy third-party warnings and INFO loggers at their source; off a terminal, also the
    Hugging Face progress bars (``Loading weights``, ``Writing model shards``), which a log file gets as one long line."""
    import logging
    import warnings

    for pattern in NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    # The loggers rank_zero_info writes to (GPU/TPU banner, tips, "limit_val_batches was configured"): the children,
    # since importing lightning resets its top logger to INFO.
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                 "mlflow.store.db.utils", "mlflow.tracking.fluent", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # transformers' warning_once twin of the deprecation above (printed via its own logger)
    logging.getLogger("transformers.utils.generic").addFilter(lambda r: "past_key_values" not in r.getMessage())
    # MLflow 3's usage telemetry fetches a config URL and posts events from every stage process (threads joined at
    # exit with 1 s timeouts each): nothing leaves the machine at run time unless the user sets it otherwise
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    if terminal is None:
        terminal = sys.stderr.isatty()
    if not terminal:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TQDM_DISABLE", "1")


def write_metrics(cfg: DictConfig, stage: str, metrics: dict[str, float]) -> Path:
    """``metrics/<stage>.json`` (for ``dvc metrics show/diff`` and ``dvc exp show``): the numeric keys only, flat,
    non-finite values as null; anything else (a protocol label, notes on why a value is null) goes to
    ``metrics/<stage>.notes.json`` (written only when there is some, removed when there is none)."""
    path = Path(cfg.paths.metrics) / f"{stage}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    clean, notes = {}, {}
    for key, value in sorted(metrics.items()):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            clean[key] = float(value) if math.isfinite(float(value)) else None
        elif value is None:
            clean[key] = None
        else:
            notes[key] = value
    path.write_text(json.dumps(clean, indent=2) + "\n")
    notes_path = notes_file(cfg, stage)
    if notes:
        notes_path.write_text(json.dumps(notes, indent=2, sort_keys=True, default=str) + "\n")
    elif notes_path.exists():
        notes_path.unlink()
    return path


def notes_file(cfg: DictConfig, stage: str) -> Path:
    """``metrics/<stage>.notes.json``: a stage's non-numeric results (not a DVC metric: DVC compares numbers)."""
    return Path(cfg.paths.metrics) / f"{stage}.notes.json"


def read_metrics(metrics_dir: str | os.PathLike, stage: str) -> dict:
    """A stage's results as it returned them: ``<stage>.json`` with ``<stage>.notes.json`` merged in."""
    base = Path(metrics_dir)
    out = json.loads((base / f"{stage}.json").read_text())
    notes = base / f"{stage}.notes.json"
    if notes.is_file():
        out.update(json.loads(notes.read_text()))
    return out


NOT_CURVES = ("epoch",)  # Lightning logs the epoch number beside every metric


def write_plots(cfg: DictConfig, stage: str, run: "tracking.Run") -> list[Path]:
    """``metrics/plots/<stage>/<metric>.csv`` (``step,<metric>``) for every metric the MLflow run logged at two or
    more steps (training and validation curves); the folder is emptied first, so it holds this run's curves only."""
    folder = Path(cfg.paths.metrics) / "plots" / stage
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.csv"):
        old.unlink()
    if not run.enabled:
        return []
    written = []
    for key, history in run.metric_histories().items():
        if key in NOT_CURVES:
            continue
        if len(history) < 2:
            continue
        out = folder / (key.replace("/", "_").replace(" ", "_") + ".csv")
        out.write_text(f"step,{key}\n" + "".join(f"{step},{value!r}\n" for step, value in history))
        written.append(out)
    return written


def run_stage(cfg: DictConfig, stage: str, fn: Callable[[], dict]) -> dict[str, float]:
    """Seed, call ``fn()`` inside the stage's MLflow run (or the active one: a sweep trial), log and write its metrics,
    all under the stage's output lock (:func:`output_lock`)."""
    check_inputs(cfg, stage)  # before the lock and the MLflow run: a missing input opens no FAILED run
    with output_lock(cfg, stage):
        seed_everything(int(cfg.seed))
        torch = sys.modules.get("torch")  # loaded by the stage's module when the stage uses it
        if cfg.compute.threads and torch is not None:
            torch.set_num_threads(int(cfg.compute.threads))
        if tracking.active().enabled:
            metrics = fn()
            tracking.active().log_metrics(_numeric(metrics))
        else:
            with tracking.start_run(cfg, stage) as mlrun:
                metrics = fn()
                if stage in PLOT_STAGES:  # before the final values are logged (at step 0, not a point of a curve)
                    write_plots(cfg, stage, mlrun)
                mlrun.log_metrics(_numeric(metrics))
        write_metrics(cfg, stage, metrics)
    return metrics


@dataclass(frozen=True)
class Input:
    """What a stage reads: a data folder ``paths.<key>`` or a trained artifact (``videolavit.artifacts``) that the
    config keys ``keys`` may point elsewhere; ``made_by`` is the stage that writes it."""

    key: str  # "paths.clips" or "artifact:motion_tokenizer"
    made_by: str
    keys: tuple[str, ...] = ()
    what: str = ""


def _data(key: str, made_by: str, what: str) -> Input:
    return Input(f"paths.{key}", made_by, what=what)


def _model(name: str, made_by: str, *keys: str) -> Input:
    return Input(f"artifact:{name}", made_by, keys)


_CORPUS, _CLIPS, _TOKENS = (_data("corpus", "corpus", "the corpus"), _data("clips", "decompose", "the clip shards"),
                            _data("tokens", "tokenize", "the token shards"))


@dataclass(frozen=True)
class StageIO:
    """A stage's inputs (checked before its MLflow run opens), outputs and main config keys: what ``videolavit
    <stage> --help`` prints under the stage module's docstring, with ``example``."""

    inputs: tuple[Input, ...]
    outputs: tuple[str, ...]
    keys: tuple[str, ...]
    example: str


STAGE_IO: dict[str, StageIO] = {
    "check": StageIO((), ("params.effective.yaml",), ("profile", "seed"), "videolavit check motion_tokenizer.model.codebook_size=64"),
    "corpus": StageIO((), ("data/corpus/", "metrics/corpus.json"),
                      ("corpus.source", "corpus.train_videos", "corpus.val_videos", "corpus.test_videos", "corpus.import_path"),
                      "videolavit corpus corpus.train_videos=32"),
    "decompose": StageIO((_CORPUS,), ("data/clips/", "metrics/decompose.json"),
                         ("video.fps", "video.encode_width", "video.encode_height", "decompose.workers", "decompose.frame_codec"),
                         "videolavit decompose decompose.workers=4"),
    "motion_tokenizer": StageIO((_CLIPS,), ("models/motion_tokenizer/", "metrics/motion_tokenizer.json", "metrics/plots/motion_tokenizer/"),
                                ("motion_tokenizer.model.codebook_size", "motion_tokenizer.model.dim",
                                 "motion_tokenizer.optim.lr", "motion_tokenizer.train.max_steps", "motion_tokenizer.train.batch_size"),
                                "videolavit motion_tokenizer motion_tokenizer.model.codebook_size=64 motion_tokenizer.train.max_steps=200"),
    "visual_tokenizer": StageIO((_CLIPS, _CORPUS), ("models/visual_tokenizer/", "metrics/visual_tokenizer.json", "metrics/plots/visual_tokenizer/"),
                                ("visual_tokenizer.model.codebook_size", "visual_tokenizer.model.keep_ratio",
                                 "visual_tokenizer.model.teacher_path", "visual_tokenizer.optim.lr", "visual_tokenizer.train.max_steps"),
                                "videolavit visual_tokenizer visual_tokenizer.model.keep_ratio=0.5"),
    "tokenize": StageIO((_CORPUS, _CLIPS, _model("visual_tokenizer", "visual_tokenizer", "tokenize.visual_tokenizer_path"),
                         _model("motion_tokenizer", "motion_tokenizer", "tokenize.motion_tokenizer_path")),
                        ("data/tokens/", "metrics/tokenize.json"),
                        ("tokenize.text_tokenizer_path", "tokenize.text_vocab_size", "tokenize.ablation_frames"),
                        "videolavit tokenize --shard 0/4   # then 1/4 ... 3/4; the last one merges"),
    "detokenizer": StageIO((_CLIPS, _model("motion_tokenizer", "motion_tokenizer", "detokenizer.motion_tokenizer_path"),
                            _model("visual_tokenizer", "visual_tokenizer", "detokenizer.visual_tokenizer_path")),
                           ("models/detokenizer/", "metrics/detokenizer.json", "metrics/plots/detokenizer/"),
                           ("detokenizer.models", "detokenizer.video.motion_warp", "detokenizer.train.max_steps",
                            "detokenizer.keyframe.vae_dir", "detokenizer.video.svd_dir"),
                           "videolavit detokenizer detokenizer.train.max_steps=100"),
    "pretrain": StageIO((_TOKENS,), ("models/lm_pretrain/", "metrics/pretrain.json", "metrics/plots/pretrain/"),
                        ("lm.seq_len", "lm.model.pretrained_path", "pretrain.train.max_steps", "pretrain.optim.lr"),
                        "videolavit pretrain pretrain.train.max_steps=500"),
    "instruct": StageIO((_TOKENS, _CORPUS, _model("lm_pretrain", "pretrain", "instruct.init_from")),
                        ("models/lm_instruct/", "metrics/instruct.json", "metrics/plots/instruct/"),
                        ("instruct.init_from", "instruct.train.max_steps", "instruct.optim.lr"),
                        "videolavit instruct instruct.train.max_steps=300"),
    "evaluators": StageIO((_CORPUS, _CLIPS), ("models/evaluators/", "metrics/evaluators.json", "metrics/plots/evaluators/"),
                          ("evaluators.train.max_steps",), "videolavit evaluators evaluators.train.max_steps=100"),
    "evaluate": StageIO((_CORPUS, _CLIPS), ("metrics/evaluate.json", "metrics/evaluate.notes.json", "runs/evaluate/"),
                        ("evaluate.protocol", "evaluate.parts", "generate.video_steps", "evaluate.i3d_path", "evaluate.clip_path"),
                        "videolavit evaluate evaluate.parts=[qa] evaluate.protocol=tiny_v3"),
    "report": StageIO((), ("reports/", "metrics/report.json"), ("report.experiment", "report.curve_stages"), "videolavit report report.experiment=videolavit"),
}
# the training stages: their curves go to metrics/plots/<stage>/ (declared as DVC plots in dvc.yaml)
PLOT_STAGES = ("motion_tokenizer", "visual_tokenizer", "detokenizer", "pretrain", "instruct", "evaluators")


def _is_url(path: str) -> bool:
    return "://" in path or path.startswith("pipe:")


def check_inputs(cfg: DictConfig, stage: str) -> None:
    """Raise MissingArtifactError naming the first input of ``stage`` (:data:`STAGE_IO`) that is not there and the
    stage that makes it. A remote or ``pipe:`` data location is left to the loader."""
    from videolavit.artifacts import artifact
    from videolavit.errors import require_path

    spec = STAGE_IO.get(stage)
    for item in spec.inputs if spec else ():
        if item.key.startswith("artifact:"):
            artifact(cfg, item.key.split(":", 1)[1], item.keys)
            continue
        value = str(cfg.paths[item.key.split(".", 1)[1]])
        if not _is_url(value):
            require_path(value, item.what, f"Run `videolavit {item.made_by}` (or `dvc repro {item.made_by}`) first.")


def lock_path(cfg: DictConfig, stage: str) -> Path:
    """``<paths.runs>/.locks/<stage>.lock`` (one per decompose shard: shards write disjoint outputs)."""
    name = stage
    shard = str(cfg.get("decompose", {}).get("shard", "0/1")) if stage == "decompose" else "0/1"
    if shard != "0/1":
        name += "-shard" + shard.replace("/", "of")
    return Path(cfg.paths.runs) / ".locks" / f"{name}.lock"


def _launcher_rank() -> int:
    # Lightning's DDP children, torchrun and srun start the stage once per process; only the first one locks.
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        value = os.environ.get(key, "0")
        if value.isdigit() and int(value) != 0:
            return int(value)
    return 0


@contextlib.contextmanager
def output_lock(cfg: DictConfig, stage: str):
    """Hold an exclusive lock on :func:`lock_path` while the stage runs: a second run of the same stage (an orphan
    left by a killed ``dvc repro`` and a new one) fails fast with StageBusyError naming the holder's PID. The kernel
    drops the lock with the process, so a killed run never leaves it stale."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        fcntl = None
    if fcntl is None or _launcher_rank() != 0:
        yield
        return
    from videolavit.errors import StageBusyError

    path = lock_path(cfg, stage)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "a process that wrote no PID yet"
        handle.close()
        raise StageBusyError(
            f"{stage}: another run of this stage is writing its outputs ({holder}; lock {path}). Wait for it to "
            f"finish or stop it (kill <pid>): the lock is released when that process exits"
        ) from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"PID {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def stage_entry(stage: str) -> Callable[[Callable[[DictConfig], dict]], Callable[[DictConfig], dict]]:
    """Wrap a stage's ``run(cfg)`` in :func:`run_stage`."""

    def decorate(fn: Callable[[DictConfig], dict]) -> Callable[[DictConfig], dict]:
        @functools.wraps(fn)
        def run(cfg: DictConfig) -> dict[str, float]:
            return run_stage(cfg, stage, lambda: fn(cfg))

        run.stage_name = stage  # type: ignore[attr-defined]
        return run

    return decorate


def _numeric(metrics: dict) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v)):
            out[k] = float(v)
    return out


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and, when it is loaded, torch's global generators. Every module that draws from torch
    imports it first; a stage that never does (corpus, decompose, report) is spared importing it (~2.5 s)."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(seed)
