"""What ``videolavit <command> --help`` and ``videolavit config --changed`` print, built when asked (the CLI pays for
no config load or docstring parse otherwise).

One source per text: a stage's purpose is its module's docstring (read from the file, not imported: no torch), its
inputs, outputs, main keys and example are ``runner.STAGE_IO`` (the same inputs the runner checks before a run opens),
each key's values come from the profiles themselves, sweep options from ``sweep.SWEEP_OPTIONS``.
"""

from __future__ import annotations

import argparse
import ast
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

STAGES_DIR = Path(__file__).resolve().parent / "stages"
COMMANDS_WITHOUT_STAGE = ("generate", "show-motion", "plan", "import-official")  # config --stage: the plain tree


def _plain(text: str) -> str:
    """RST ``literal`` → `literal`, for a terminal."""
    return re.sub(r"``([^`]+)``", r"`\1`", text)


def stage_docstring(stage: str) -> str:
    path = STAGES_DIR / f"{stage}.py"
    if not path.is_file():
        return f"run the {stage} stage"
    return _plain(ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or f"run the {stage} stage")


def _value(cfg: Any, key: str) -> str:
    from omegaconf import OmegaConf

    value = OmegaConf.select(cfg, key, default="<absent>")
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=True)
    return "null" if value is None else str(value)


def key_table(keys: Iterable[str]) -> list[str]:
    """``  key   tiny: X   paper: Y`` per key (the shipped profiles, without params.yaml or overrides)."""
    from videolavit.config import load_config

    keys = list(keys)
    if not keys:
        return []
    tiny = load_config(profile="tiny", params_file=None)
    paper = load_config(profile="paper", params_file=None)
    width = max(len(k) for k in keys)
    return [f"  {k:<{width}}  tiny: {_value(tiny, k):<10} paper: {_value(paper, k)}" for k in keys]


def _input_path(key: str) -> str:
    """``paths.clips`` → ``data/clips/ (paths.clips)``; ``artifact:lm_pretrain`` → ``models/lm_pretrain/``."""
    from videolavit.artifacts import ARTIFACTS
    from videolavit.config import PathsConfig

    if key.startswith("artifact:"):
        return f"models/{ARTIFACTS[key.split(':', 1)[1]].directory}/"
    return f"{getattr(PathsConfig, key.split('.', 1)[1])}/ ({key})"


def stage_epilog(stage: str) -> str:
    from videolavit.runner import STAGE_IO

    spec = STAGE_IO.get(stage)
    if spec is None:
        return ""
    inputs = [f"  {_input_path(i.key)}  (from `videolavit {i.made_by}`"
              + (f"; or set {' / '.join(i.keys)}" if i.keys else "") + ")" for i in spec.inputs] or ["  none"]
    lines = ["inputs (checked before the MLflow run opens):", *inputs, "", "outputs:",
             *[f"  {o}" for o in spec.outputs], "",
             ("main keys (any key of `videolavit config` can be set as key=value; params.yaml and the command line "
              "override the profile):"), *key_table(spec.keys), "", "example:", f"  {spec.example}",
             f"  dvc repro {stage}        # through DVC, with params.yaml", ""]
    return "\n".join(lines)


GENERATE_EPILOG = """\
tasks (generate.task=...; every generate.* key is listed by `videolavit config --stage generate`):
  text_to_video   (default) one 24-frame clip from the prompt
      videolavit generate "a red circle moves left" --out runs/generate/circle.mp4
  long video      text_to_video (or image_to_video) with generate.clips=N > 1: each later clip's keyframe starts
                  from the previous clip's last frame (generate.noise_constraint, generate.inverse_rate; paper Eq. 4)
      videolavit generate "a blue square moves up" generate.clips=3 --out runs/generate/long.mp4
  image_to_video  generate.image=<PNG/JPEG> is frame 0, kept as it is; only motion is sampled for the first clip;
                  the prompt may be empty ("")
      videolavit generate "it moves right" generate.task=image_to_video generate.image=first_frame.png
  qa              answer the prompt about generate.media (an image or a video file) with the instruction-tuned LM
      videolavit generate "which way does the shape move?" generate.task=qa generate.media=clip.mp4

outputs: <out>.mp4, <out>.gif (generate.gif=true), <out>.preview.gif (nearest-neighbour, short side >= 128 px)
and <out>.strip.png (every frame side by side); qa prints the answer. --out defaults to runs/generate/<prompt>.mp4.
models: models/lm_pretrain (qa: models/lm_instruct), the tokenizers and detokenizers under models/, or
generate.lm_path / generate.detokenizer_path for other copies.

main keys:
"""
GENERATE_KEYS = ("generate.task", "generate.clips", "generate.image", "generate.media", "generate.video_steps",
                 "generate.keyframe_steps", "generate.noise_constraint", "generate.seed", "generate.lm_path")

SWEEP_OPTION_HELP = {
    "trials": "trials this process runs (several processes may share a study)",
    "mode": "single: minimize the stage's objective (val/epe), pruned at each validation; multi: its objectives "
            "(e.g. val/epe and tokens_per_clip), Pareto front",
    "storage": "any Optuna storage URL: sqlite:///FILE, an RDB URL, or journal:PATH for a shared file",
    "study": "the study's name (default <stage>-<mode>); the same name + storage resumes or joins it",
    "pruning": "stop unpromising trials early (single mode)",
    "out": "folder of the study's outputs: best.yaml (overrides a stage accepts with --overrides), pareto.png",
}


def sweep_epilog() -> str:
    from videolavit.sweep import SWEEP_OPTIONS

    width = max(len(k) for k in SWEEP_OPTIONS)
    rows = [f"  {k + '=':<{width + 1}}  {SWEEP_OPTION_HELP.get(k, '')} (default: {v})" for k, v in SWEEP_OPTIONS.items()]
    return "\n".join([
        "sweep options (key=value, beside config overrides):", *rows, "",
        "search spaces, objectives and the per-trial budget: conf/sweep/<stage>.yaml; every trial is a nested MLflow run",
        "under one parent run per study.", "",
        "examples:",
        "  videolavit sweep motion_tokenizer trials=8",
        "  videolavit sweep motion_tokenizer mode=multi trials=16 study=mt-pareto storage=journal:sweeps/mt.log",
        "  videolavit motion_tokenizer --overrides sweeps/motion_tokenizer-single/best.yaml   # apply the best trial",
        "",
    ])


def sweep_description() -> str:
    from videolavit import sweep

    return _plain(sweep.__doc__ or "")


class LazyHelp(argparse.Action):
    """``-h/--help`` that builds its description and epilog only when asked (loading two profiles takes ~0.5 s)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None, epilog=None,
                 description=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)
        self.epilog, self.description = epilog, description

    def __call__(self, parser, namespace, values, option_string=None):
        if self.description is not None:
            parser.description = self.description() if callable(self.description) else self.description
        parser.epilog = self.epilog() if callable(self.epilog) else self.epilog
        parser.print_help()
        parser.exit()


def add_lazy_help(parser: argparse.ArgumentParser, epilog, description=None) -> None:
    parser.add_argument("-h", "--help", action=LazyHelp, epilog=epilog, description=description,
                        help="show this help message and exit")


# --------------------------------------------------------------------------------------------------------------------
# `videolavit config --changed`: the values that differ from the schema's (paper) defaults and the layer that set them


def changed_values(profile: str | None, stage: str | None, overrides: list[str],
                   params_file: str = "params.yaml") -> list[tuple[str, Any, Any, str]]:
    """``(key, value, schema default, source)`` of every key whose merged value differs from the schema default,
    source being the last layer that set it: ``conf/base.yaml``, ``profile <name>``, ``params.yaml`` or
    ``command line``. Uses the same files and merge as ``load_config`` (which also validates them)."""
    from omegaconf import OmegaConf

    from videolavit import config as C

    cfg = C.load_config(profile=profile, stage=stage, overrides=overrides, params_file=params_file)
    schema = C.flatten(OmegaConf.to_container(C._schema(), resolve=False), keep_empty=True)
    final = C.flatten(OmegaConf.to_container(cfg, resolve=False), keep_empty=True)
    name = str(cfg.profile)
    params = C._read_yaml(Path(params_file)) if Path(params_file).is_file() else {}
    layers = [("conf/base.yaml", C.flatten(C._read_yaml(C.CONF_DIR / "base.yaml") or {}, keep_empty=True)),
              *((label.replace("'", ""), C.flatten(layer, keep_empty=True)) for label, layer in C.profile_layers(name)),
              (params_file, C.flatten(C._drop_nulls({k: v for k, v in (params or {}).items() if k != "profile"}), keep_empty=True)),
              ("command line", C.flatten(C.parse_overrides(overrides), keep_empty=True))]
    rows = []
    for key, value in final.items():
        if key in ("stage", "profile") or (key in schema and schema[key] == value):
            continue
        source = next((label for label, layer in reversed(layers) if any(k == key or k.startswith(key + ".")
                                                                        or key.startswith(k + ".") for k in layer)), "schema")
        rows.append((key, value, schema.get(key, "<not in schema>"), source))
    return rows


def _show(value: Any) -> str:
    """A value as YAML writes it inline (null, true, [1, 2]), strings bare."""
    import json

    return value if isinstance(value, str) else json.dumps(value, separators=(", ", ": "), default=str)


def format_changed(rows: list[tuple[str, Any, Any, str]], profile: str) -> str:
    if not rows:
        return "# every value is the schema default (the paper's)"
    width = max(len(r[0]) for r in rows)
    vwidth = min(24, max(len(_show(r[1])) for r in rows))
    swidth = max(len(r[3]) for r in rows)
    lines = [f"# {len(rows)} values differ from the schemas' (paper) defaults under profile {profile}",
             f"# {'key':<{width - 2}}  {'value':<{vwidth}}  {'set by':<{swidth}}  paper default"]
    for key, value, default, source in sorted(rows):
        lines.append(f"{key:<{width}}  {_show(value):<{vwidth}}  {source:<{swidth}}  {_show(default)}")
    return "\n".join(lines)
