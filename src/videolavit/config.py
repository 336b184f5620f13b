"""Configuration: typed schemas and the merge order every stage uses.

Merge order (later wins): schema defaults (the paper's values) → ``conf/base.yaml`` (paths, tracking: every profile)
→ ``conf/profile/<profile>.yaml`` → ``params.yaml`` (the keys DVC tracks; ``null`` there keeps the profile's value)
→ CLI ``key=value`` overrides.

Each default has one home: a hyperparameter's paper value in its schema, its tiny CPU recipe in ``profile/tiny.yaml``;
``profile/paper.yaml`` only adds the cluster's hardware and data, so it never undoes a tiny value (tests/test_config.py).
Every key is checked against the schema: an unknown key raises :class:`ConfigError` listing the valid keys there (a
``null`` in params.yaml included); every value against its field's type and range (``videolavit.constraints``: a
schema field's default is written as ``at_least(1, 8)``, ``positive(1e-4)``, ...), NaN and unresolved ``${...}``
interpolations rejected, each error naming the dotted key.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from videolavit.constraints import (
    at_least,
    bounds,
    check_values,
    checked,
    fraction,
    positive,
)
from videolavit.errors import ConfigError

CONF_DIR = Path(__file__).resolve().parent / "conf"
PROFILES = ("tiny", "mini", "paper")
STAGES = (
    "check",  # validates the whole config and writes params.effective.yaml, before any stage touches outputs
    "corpus",
    "decompose",
    "motion_tokenizer",
    "visual_tokenizer",
    "tokenize",
    "detokenizer",
    "pretrain",
    "instruct",
    "evaluators",
    "evaluate",
    "report",
)


# --------------------------------------------------------------------------------------------------------------------
# Schemas. One dataclass per section; a section's docstring says what it configures.


@dataclass
class PathsConfig:
    """Where stages read and write, relative to the project root (the working directory)."""

    corpus: str = "data/corpus"
    clips: str = "data/clips"
    tokens: str = "data/tokens"
    models: str = "models"
    metrics: str = "metrics"
    reports: str = "reports"
    runs: str = "runs"  # checkpoints (last.ckpt) and per-run scratch, persisted by DVC


@dataclass
class TrackingConfig:
    """MLflow. ``uri`` None means env ``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` in the project root."""

    enabled: bool = True
    uri: Optional[str] = None
    experiment: str = "videolavit"
    run_name: Optional[str] = None


@dataclass
class ComputeConfig:
    """Lightning hardware settings shared by every training stage (a stage may override strategy/precision)."""

    accelerator: str = "cpu"
    devices: Any = 1
    num_nodes: int = at_least(1, 1)
    strategy: str = "auto"
    precision: str = "32-true"
    num_workers: int = at_least(0, 0)
    shuffle_buffer_bytes: int = at_least(0, 512 << 20)  # decoded clip bytes a loader worker holds to shuffle
    threads: Optional[int] = at_least(1, None)  # torch.set_num_threads; None leaves torch's default


@dataclass
class VideoConfig:
    """Decomposition contract (paper §1): 6 fps, MPEG-4 Part 2 re-encode, GOP 12, 24-frame clips, macroblock motion."""

    fps: float = positive(6.0)
    clip_frames: int = at_least(1, 24)
    gop: int = at_least(1, 12)
    encode_width: int = at_least(1, 576)  # multiple of 16: 576×320 has a 36×20 macroblock grid
    encode_height: int = at_least(1, 320)
    bitrate: int = at_least(1, 8_000_000)
    motion_height: int = at_least(1, 20)  # tokenizer input grid (paper: 20×36)
    motion_width: int = at_least(1, 36)
    motion_std: list = field(default_factory=lambda: [0.0993703, 0.1130276], metadata=bounds(gt=0))
    motion_rescale: float = positive(10.0)  # the official "rescale" path multiplies normalized motion by 10
    keyframe_size: int = at_least(1, 224)
    clip_policy: str = "all"  # all | every_other | max
    # clip_policy max or every_other: keep at most this many, uniformly spread
    max_clips: Optional[int] = at_least(1, None)
    # stop decoding after this many source frames (None: whole video)
    max_source_frames: Optional[int] = at_least(1, None)
    # size of the RGB clip frames kept for the video detokenizer (its training target)
    frames_height: int = at_least(1, 320)
    frames_width: int = at_least(1, 576)
    # source decoder threads per video (0: one per core); the decompose stage runs videos in parallel
    threads: int = at_least(0, 1)
    # Skip the source decoder's in-loop deblocking filter (H.264/HEVC) and allow its non-bit-exact shortcuts: lossy but
    # below the re-encode's own loss (benchmark 720p input at 576×320: 48.9 dB PSNR against the exact decode, while the
    # MPEG-4 re-encode is 35.2 dB against its input); off = exact. CPU on that input: 8-14% less in four of five
    # benchmark runs, 7% more in one (a noisy shared VM). The vectors move too: mean EPE vs exact
    # 0.01-0.02 px/frame on that input, up to 0.36 px/frame (13% of the motion) on synthetic-corpus clips under the
    # paper profile, where the motion search on flat texture amplifies small pixel changes.
    fast_decode: bool = False
    # Bounds on what the resampler makes of a source's timestamps (null: no bound); past one the video is a reject.
    # Not from the paper, whose clips are seconds long: a frame held 50 s at 6 fps, or an hour in all, means broken
    # timestamps (a 60-frame file with 1-hour gaps became 50 K identical clips and exhausted memory), not footage.
    max_frames_per_source_frame: Optional[int] = at_least(1, 300)
    max_span_seconds: Optional[float] = positive(3600.0)


@dataclass
class CorpusConfig:
    """The corpus stage: the synthetic corpus, or an importer for a real dataset layout."""

    source: str = "synthetic"  # synthetic | webvid | msrvtt | msvd_qa | msrvtt_qa | llava | videochatgpt
    seed: int = 0
    train_videos: int = at_least(0, 96)
    val_videos: int = at_least(0, 16)
    test_videos: int = at_least(0, 16)
    images: int = at_least(0, 64)
    width: int = at_least(1, 256)
    height: int = at_least(1, 160)
    fps: float = positive(12.0)  # source frame rate; deliberately not 6 so resampling is exercised
    min_clips: int = at_least(1, 1)
    max_clips: int = at_least(1, 3)
    heldout_pairs: int = at_least(0, 4)  # (shape, color) pairs seen only in the test split
    # synthetic: share of samples with a second object (distinct shape and color)
    two_object_probability: float = fraction(0.4)
    workers: int = at_least(0, 1)  # processes rendering the synthetic corpus (output is identical for any count)
    import_path: Optional[str] = None  # annotation file of a real dataset (CSV or JSON)
    media_dir: Optional[str] = None  # where the real dataset's videos/images are
    import_split: Optional[str] = None  # split an imported file fills; None: its own split field, file name, or default
    # imported data without a val split: move this seeded fraction of train to val
    val_fraction: float = checked(0.0, ge=0, lt=1)


@dataclass
class DecomposeConfig:
    """The decompose stage: corpus videos → WebDataset clip shards, stats.json, rejects.jsonl."""

    # worker processes (0: decompose in the stage's own process, no dead-worker detection)
    workers: int = at_least(0, 2)
    # videos per output tar (~4 clips each on WebVid: ~300 MB tars at ~1.2 MB a clip)
    videos_per_shard: int = at_least(1, 64)
    max_reject_ratio: float = fraction(0.2)
    shard: str = "0/1"  # i/n: this process handles the i-th of n byte ranges of each split's manifest
    # Clip frames as H.264 (x264 veryfast, CRF frame_crf, 4:4:4), motion as float16: 1.23 MB a paper-profile clip of
    # textured 720p footage instead of 13.57 MB raw, decoded frames 35.6 dB PSNR against the raw ones, motion within
    # 4e-3 (std 0.7); CRF 14: 1.62 MB, 37.1 dB; 18: 0.90 MB, 34.2 dB (benchmarks/data_scale.py clips). ffv1: lossless.
    frame_codec: str = "h264"  # npy (raw) | ffv1 (lossless) | h264
    frame_crf: int = checked(16, ge=0, le=51)
    motion_dtype: str = "float16"  # float32 | float16


@dataclass
class Config:
    profile: str = "tiny"
    seed: int = 0
    paths: PathsConfig = field(default_factory=PathsConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    compute: ComputeConfig = field(default_factory=ComputeConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    decompose: DecomposeConfig = field(default_factory=DecomposeConfig)


# Later stages register their section here (name → dataclass) so the schema grows without editing Config.
_EXTRA_SECTIONS: dict[str, type] = {}


def register_section(name: str, schema: type) -> None:
    """Add a top-level config section with its typed schema (called at import of videolavit.schemas)."""
    _EXTRA_SECTIONS[name] = schema


# --------------------------------------------------------------------------------------------------------------------
# Loading


def _schema() -> DictConfig:
    """A fresh copy of the typed schema (built once per set of registered sections: building it is the slow part)."""
    import videolavit.schemas  # noqa: F401  (registers the stage sections)

    key = tuple(_EXTRA_SECTIONS.items())
    if _SCHEMA_CACHE.get("key") != key:
        _SCHEMA_CACHE.update(key=key, schema=_build_schema())
    return copy.deepcopy(_SCHEMA_CACHE["schema"])


_SCHEMA_CACHE: dict[str, Any] = {}


def _build_schema() -> DictConfig:
    base = OmegaConf.structured(Config)
    OmegaConf.set_struct(base, False)
    for name, schema in _EXTRA_SECTIONS.items():
        base[name] = OmegaConf.structured(schema)
    OmegaConf.set_struct(base, True)
    return base


def _valid_keys(node: Any) -> list[str]:
    return sorted(node.keys()) if isinstance(node, DictConfig) else []


def _check_keys(schema: DictConfig, update: Any, source: str, prefix: str = "") -> None:
    """Raise ConfigError for the first key in ``update`` the schema does not know, listing the valid ones."""
    if not isinstance(update, (dict, DictConfig)):
        return
    for key, value in update.items():
        path = f"{prefix}{key}"
        if not isinstance(schema, DictConfig) or key not in schema:
            where = prefix.rstrip(".") or "the top level"
            raise ConfigError(
                f"unknown config key '{path}' (from {source}). Valid keys at {where}: {', '.join(_valid_keys(schema))}"
            )
        child = schema._get_node(key)
        if isinstance(child, DictConfig) and isinstance(value, (dict, DictConfig)):
            _check_keys(child, value, source, prefix=f"{path}.")


def _merge(cfg: DictConfig, update: Any, source: str) -> DictConfig:
    if update is None:
        return cfg
    if isinstance(update, (DictConfig, ListConfig)):
        update = OmegaConf.to_container(update, resolve=False)
    _check_keys(cfg, update, source)
    try:
        cfg.merge_with(update)  # in place: OmegaConf.merge deep-copies the whole tree on every layer
        return cfg
    except Exception as exc:  # omegaconf validation error: wrong type for a key
        raise ConfigError(f"invalid value in {source}: {exc}") from None


def _read_yaml(path: Path) -> Any:
    try:
        stat = Path(path).stat()
        return copy.deepcopy(_read_yaml_cached(str(Path(path).resolve()), stat.st_mtime_ns, stat.st_size))
    except Exception as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None


@functools.lru_cache(maxsize=64)
def _read_yaml_cached(path: str, mtime_ns: int, size: int) -> Any:
    """The parsed file, once per process and version of the file (load_config reads a dozen files per call)."""
    return OmegaConf.to_container(OmegaConf.load(path), resolve=False)


def _drop_nulls(tree: dict) -> dict:
    """params.yaml lists the keys DVC tracks; ``null`` there means "keep the profile's value", so it is not merged."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            value = _drop_nulls(value)
            if value:
                out[key] = value
        elif value is not None:
            out[key] = value
    return out


def parse_overrides(overrides: Iterable[str]) -> dict:
    """Turn ``["a.b=1", "c=x"]`` into a nested dict; values are parsed as YAML (numbers, bools, lists)."""
    out: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        key, value = item.split("=", 1)
        key = key.strip().lstrip("+")
        if not key:
            raise ConfigError(f"override '{item}' has an empty key")
        try:
            parsed = OmegaConf.to_container(OmegaConf.from_dotlist([f"{key}={value}"]), resolve=False)
        except (yaml.YAMLError, OmegaConfBaseException) as exc:  # yaml's ParserError on e.g. `max_steps=[1,2`
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ConfigError(f"override '{item}': the value of '{key}' is not valid YAML ({first})") from None
        out = OmegaConf.to_container(OmegaConf.merge(out, parsed), resolve=False)
    return out


def profile_path(profile: str) -> Path:
    return Path(profile) if Path(profile).is_file() else CONF_DIR / "profile" / f"{profile}.yaml"


def profile_layers(profile: str, _seen: tuple[str, ...] = ()) -> list[tuple[str, dict]]:
    """``[(label, values), ...]`` the profile merges over base.yaml, first to last: a profile whose file starts with
    ``extends: <profile>`` (mini extends tiny) is that profile's layers, then its own keys."""
    if profile in _seen:
        raise ConfigError(f"profile '{profile}' extends itself (through {' -> '.join(_seen)})")
    if profile not in PROFILES and not Path(profile).is_file():
        raise ConfigError(f"unknown profile '{profile}'. Valid profiles: {', '.join(PROFILES)} (or a path to a YAML file)")
    data = dict(_read_yaml(profile_path(profile)) or {})
    parent = data.pop("extends", None)
    layers = profile_layers(str(parent), (*_seen, profile)) if parent else []
    return [*layers, (f"profile '{profile}'", data)]


def load_config(
    profile: Optional[str] = None,
    stage: Optional[str] = None,
    overrides: Iterable[str] = (),
    params_file: Optional[str | os.PathLike] = "params.yaml",
) -> DictConfig:
    """The merged, validated configuration.

    ``profile`` None takes ``profile`` from params.yaml or the overrides, else ``tiny``. ``stage`` is recorded as
    ``cfg.stage`` (it selects nothing else: every stage sees the whole tree so it can read its inputs' settings).
    ``params_file`` is read when it exists (relative to the working directory); pass None to skip it. A profile given
    as a path merges over the paper schemas like a shipped one (start a CPU variant from a copy of tiny.yaml).
    """
    overrides = list(overrides)
    cli = parse_overrides(overrides)
    params = None
    if params_file is not None and Path(params_file).is_file():
        params = _read_yaml(Path(params_file)) or {}
    if profile is None:
        profile = cli.get("profile") or (params or {}).get("profile") or "tiny"
    if profile not in PROFILES and not Path(str(profile)).is_file():
        raise ConfigError(f"unknown profile '{profile}'. Valid profiles: {', '.join(PROFILES)} (or a path to a YAML file)")
    if stage is not None and stage not in STAGES and stage != "sweep":
        raise ConfigError(f"unknown stage '{stage}'. Valid stages: {', '.join(STAGES)}")

    cfg = _schema()
    cfg = _merge(cfg, _read_yaml(CONF_DIR / "base.yaml"), "conf/base.yaml")
    for label, layer in profile_layers(str(profile)):
        cfg = _merge(cfg, layer, label)
    if params:
        _check_keys(cfg, params, str(params_file))  # before dropping nulls: a typo'd key set to null is still a typo
        params = _drop_nulls(dict(params))
        params.pop("profile", None)  # the profile was chosen above; params must not silently switch it
        cfg = _merge(cfg, params, str(params_file))
    cli.pop("profile", None)
    cfg = _merge(cfg, cli, "command-line overrides")
    OmegaConf.set_struct(cfg, False)
    cfg.profile = str(profile)
    cfg.stage = stage
    OmegaConf.set_struct(cfg, True)
    check_values(cfg)
    return cfg


def apply_overrides(cfg: DictConfig, overrides: Iterable[str], source: str = "overrides") -> DictConfig:
    """A copy of ``cfg`` with ``key=value`` overrides merged in (validated like CLI overrides)."""
    merged = copy.deepcopy(cfg)
    OmegaConf.set_struct(merged, True)
    merged = _merge(merged, parse_overrides(overrides), source)
    OmegaConf.set_struct(merged, True)
    check_values(merged)
    return merged


def flatten(tree: Any, prefix: str = "", keep_empty: bool = False) -> dict[str, Any]:
    """``{"video.fps": 6.0, ...}`` from a nested dict; an empty sub-dict is dropped, or with ``keep_empty`` kept as
    a value of its own (what ``config --changed`` shows: ``unet: {}`` differs from a default). A non-dict ``tree`` is
    ``{prefix without its dot: tree}``. The one flattener of config trees: MLflow params, checkpoint fingerprints,
    ``config --changed`` and the tests use it."""
    if not isinstance(tree, dict):
        return {prefix[:-1] if prefix.endswith(".") else prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and (value or not keep_empty):
            out.update(flatten(value, f"{prefix}{key}.", keep_empty))
        else:
            out[f"{prefix}{key}"] = value
    return out


def to_flat_dict(cfg: DictConfig) -> dict[str, Any]:
    """``{"video.fps": 6.0, ...}``: the flattened form logged to MLflow as params."""
    return flatten(OmegaConf.to_container(cfg, resolve=True))


def section_kwargs(section: Any) -> dict[str, Any]:
    """A config section as plain keyword arguments (for building a model from its config)."""
    if isinstance(section, DictConfig):
        return OmegaConf.to_container(section, resolve=True)
    if dataclasses.is_dataclass(section):
        return dataclasses.asdict(section)
    return dict(section)


def project_path(cfg: DictConfig, key: str, *parts: str) -> Path:
    """``cfg.paths.<key>`` joined with ``parts``, relative to the working directory (the project root)."""
    return Path(getattr(cfg.paths, key)).joinpath(*parts)
