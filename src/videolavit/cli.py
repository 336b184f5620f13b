"""``videolavit <stage> [key=value ...]``: one subcommand per stage, plus sweep, generate, show-motion and config."""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
from typing import Optional, Sequence

from videolavit.config import STAGES
from videolavit.errors import StageInterrupted, VideolavitError


def _stage_module(stage: str):
    try:
        return importlib.import_module(f"videolavit.stages.{stage}")
    except ModuleNotFoundError as exc:
        if exc.name == f"videolavit.stages.{stage}":
            raise VideolavitError(f"stage '{stage}' is not implemented in this version of videolavit") from None
        raise


def run_stage(stage: str, overrides: Sequence[str] = (), profile: Optional[str] = None) -> dict:
    from videolavit.config import load_config

    cfg = load_config(profile=profile, stage=stage, overrides=overrides)
    from videolavit.tracking_worker import prestart

    prestart(cfg, stage)  # MLflow imported and its store opened in a helper process, beside the stage's imports
    return _stage_module(stage).run(cfg)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. motion_tokenizer.train.max_steps=50")
    p.add_argument("--profile", default=None, help="tiny (default) or paper, or a path to a profile YAML")
    p.add_argument("--overrides", dest="overrides_file", default=None, metavar="FILE",
                   help="a YAML of key: value overrides applied before the command line's, e.g. a sweep's best.yaml")


def _stage_help(stage: str):
    def text() -> str:
        from videolavit.cli_help import stage_epilog

        return stage_epilog(stage)

    return text


def build_parser() -> argparse.ArgumentParser:
    from videolavit.cli_help import (
        GENERATE_EPILOG,
        GENERATE_KEYS,
        add_lazy_help,
        key_table,
        stage_docstring,
        sweep_description,
        sweep_epilog,
    )

    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="videolavit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    for stage in STAGES:
        p = sub.add_parser(stage, help=f"run the {stage} stage", add_help=False, formatter_class=raw)
        add_lazy_help(p, _stage_help(stage), description=lambda stage=stage: stage_docstring(stage))
        _add_common(p)
        if stage == "decompose":
            p.add_argument("--shard", default=None, metavar="i/n", help="process only shard i of n of the videos")
        if stage == "tokenize":
            p.add_argument("--shard", default=None, metavar="i/n", help="tokenize only units i, i+n, … of decompose's shares")
            p.add_argument("--merge", action="store_true", help="only merge a sharded run's parts into the token shards")

    p = sub.add_parser("sweep", help="an Optuna study over a stage's hyperparameters", add_help=False,
                       formatter_class=raw, usage="videolavit sweep STAGE [trials=N] [mode=single|multi] [storage=URL] "
                       "[study=NAME] [pruning=BOOL] [out=DIR] [key=value ...]")
    add_lazy_help(p, sweep_epilog, description=sweep_description)
    p.add_argument("target", help="the stage to sweep (motion_tokenizer, visual_tokenizer)")
    _add_common(p)

    p = sub.add_parser("show-motion", help="draw a video's motion field over its keyframe (PNG) or as a GIF")
    p.add_argument("video")
    p.add_argument("--out", required=True, help="output .png (one frame of arrows) or .gif (the whole clip)")
    p.add_argument("--clip", type=int, default=0, help="which clip of the video (default 0)")
    p.add_argument("--frame", type=int, default=1, help="which frame of the clip for a PNG (default 1)")
    _add_common(p)

    p = sub.add_parser("generate", help="text → video, image → video, long video, question answering", add_help=False,
                       formatter_class=raw, description="Generate a video from a prompt (or an image), or answer a "
                       "question about an image or video, with the trained models.")
    add_lazy_help(p, lambda: GENERATE_EPILOG + "\n".join(key_table(GENERATE_KEYS)) + "\n")
    p.add_argument("prompt", help="the text prompt; for generate.task=qa the question")
    p.add_argument("--out", default=None, help="the video to write (.mp4; a .gif and previews beside it)")
    _add_common(p)

    p = sub.add_parser("import-official", help="convert the released Video-LaVIT weights into this project's format")
    p.add_argument("release", metavar="RELEASE_DIR", help="the downloaded release folder (motion_tokenizer.bin, ...)")
    p.add_argument("--out", required=True, metavar="DIR", help="where the converted parts and the report go")
    p.add_argument("--parts", nargs="+", default=None, metavar="PART", help="only these parts (default: all found)")
    p.add_argument("--motion-heads", type=int, default=8, help="attention heads of the motion tokenizer (official: 8)")
    p.add_argument("--motion-grid", default="20x36", metavar="HxW", help="its pos_embed grid (official: 20x36)")
    p.set_defaults(overrides=[])

    p = sub.add_parser("plan", help="dry run of a training stage: topology, batches, memory per GPU, missing keys")
    p.add_argument("target", metavar="STAGE", help="motion_tokenizer, visual_tokenizer, detokenizer, pretrain, instruct or all")
    p.add_argument("--json", action="store_true", help="one JSON object per training run")
    p.add_argument("--gpu-mem-gb", type=float, default=80.0, help="GPU memory to check the plan against (default 80)")
    _add_common(p)

    p = sub.add_parser("config", help="print the merged configuration (--changed: only what differs from the paper)",
                       description="Print the merged configuration: schema defaults (the paper's values) <- "
                       "conf/base.yaml <- the profile <- params.yaml <- --overrides FILE <- key=value.")
    p.add_argument("--stage", default=None, help="a stage or command whose view to print (generate, sweep, ...)")
    p.add_argument("--changed", action="store_true",
                   help="only the values that differ from the schemas' paper defaults, each with the layer that set "
                        "it (conf/base.yaml, profile, params.yaml, command line) and the default")
    _add_common(p)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    from videolavit import lean_imports

    lean_imports.install()  # before anything imports torchmetrics (through Lightning): ~2.6 CPU-s less per stage
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may also come after options (`generate PROMPT --out x.mp4 key=val`)
    stray = [e for e in extra if e.startswith("-") or "=" not in e]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*getattr(args, "overrides", []), *extra]
    from videolavit.runner import quiet_third_party

    quiet_third_party()
    try:
        return _dispatch(args)
    except StageInterrupted as exc:  # preemption: not a success (0) nor a bad input (2), the signal's 128 + signum
        print(f"videolavit: {exc}", file=sys.stderr)
        return exc.exit_code
    except VideolavitError as exc:
        print(f"videolavit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("videolavit: interrupted", file=sys.stderr)
        return 130


def overrides_from_file(path: str) -> list[str]:
    """``key=value`` overrides from a YAML file: its ``overrides`` mapping (a sweep's best.yaml) or the whole mapping."""
    from pathlib import Path

    import yaml

    from videolavit.errors import ConfigError

    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"--overrides: cannot read '{path}': {exc}") from None
    if isinstance(data, dict) and "overrides" in data:
        data = data["overrides"]
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"--overrides: '{path}' holds no mapping of config keys to values (nor an 'overrides' one)")
    return [f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in data.items()]


def _dispatch(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    if getattr(args, "overrides_file", None):
        overrides = [*overrides_from_file(args.overrides_file), *overrides]
    if args.command in STAGES:
        if getattr(args, "shard", None):
            overrides.append(f"{'tokenize' if args.command == 'tokenize' else 'decompose'}.shard={args.shard}")
        if getattr(args, "merge", False):
            overrides.append("tokenize.merge=true")
        metrics = run_stage(args.command, overrides, profile=args.profile)
        print(stage_summary(args.command, metrics))
        return 0
    if args.command == "config":
        return _config(args, overrides)
    if args.command == "show-motion":
        from videolavit.config import load_config
        from videolavit.video.visualize import show_motion

        cfg = load_config(profile=args.profile, overrides=overrides)
        out = show_motion(args.video, args.out, config=cfg, clip=args.clip, frame=args.frame)
        print(out)
        return 0
    if args.command == "sweep":
        from videolavit.config import load_config
        from videolavit.sweep import run_sweep

        cfg = load_config(profile=args.profile, stage="sweep", overrides=[o for o in overrides if not _is_sweep_key(o)])
        result = run_sweep(args.target, cfg, [o for o in overrides if _is_sweep_key(o)])
        print(json.dumps(result, indent=2, default=str))
        return 0
    if args.command == "generate":
        from videolavit.config import load_config

        cfg = load_config(profile=args.profile, overrides=overrides)
        print(generate_cli(cfg, args.prompt, args.out))
        return 0
    if args.command == "import-official":
        return _import_official(args)
    if args.command == "plan":
        return _plan(args, overrides)
    raise VideolavitError(f"unknown command {args.command}")


def _config(args: argparse.Namespace, overrides: list) -> int:
    from omegaconf import OmegaConf

    from videolavit.cli_help import (
        COMMANDS_WITHOUT_STAGE,
        changed_values,
        format_changed,
    )
    from videolavit.config import load_config

    stage = None if args.stage in COMMANDS_WITHOUT_STAGE else args.stage
    if args.changed:
        rows = changed_values(args.profile, stage, overrides)
        print(format_changed(rows, str(load_config(profile=args.profile, overrides=overrides).profile)))
        return 0
    cfg = load_config(profile=args.profile, stage=stage, overrides=overrides)
    if args.stage in COMMANDS_WITHOUT_STAGE and args.stage.replace("-", "_") in cfg:
        cfg = cfg[args.stage.replace("-", "_")]  # `config --stage generate`: the generate section
    print(OmegaConf.to_yaml(cfg))
    return 0


def stage_summary(stage: str, metrics: dict) -> str:
    """One line after a stage (the numbers are in ``metrics/<stage>.json`` and MLflow, not dumped on stdout)."""
    if stage == "check":
        return (f"check: the configuration is valid for every stage; {int(metrics.get('keys', 0))} effective values "
                "in params.effective.yaml")
    numeric = sum(1 for v in metrics.values() if isinstance(v, (int, float)) and not isinstance(v, bool))
    return f"{stage}: done, {numeric} metrics in metrics/{stage}.json (`dvc metrics show`, MLflow run of {stage})"


def _plan(args: argparse.Namespace, overrides: list) -> int:
    """``videolavit plan STAGE|all``: prints the plan of each training run; exits 0 even when keys are missing."""
    from videolavit.config import load_config
    from videolavit.errors import ConfigError
    from videolavit.stages.detokenizer import keyframe_kwargs, video_kwargs
    from videolavit.stages.visual_tokenizer import model_kwargs
    from videolavit.training.plan import PLAN_STAGES, format_plan, plan_stage

    stages = PLAN_STAGES if args.target == "all" else (args.target,)
    if any(s not in PLAN_STAGES for s in stages):
        raise ConfigError(f"plan: {args.target!r} is not a training stage ({', '.join(PLAN_STAGES)} or all)")
    builders = {"visual_tokenizer": model_kwargs, "keyframe": keyframe_kwargs, "video": video_kwargs}
    for stage in stages:
        cfg = load_config(profile=args.profile, stage=stage, overrides=overrides)
        for row in plan_stage(cfg, stage, args.gpu_mem_gb, model_kwargs=builders):
            print(json.dumps(row) if args.json else format_plan(row), flush=True)
    return 0


def _import_official(args: argparse.Namespace) -> int:
    from pathlib import Path

    from videolavit.convert.release import format_report, import_release
    from videolavit.errors import ConfigError

    grid = tuple(int(v) for v in args.motion_grid.lower().split("x") if v.isdigit())
    if len(grid) != 2 or args.motion_grid.lower().count("x") != 1:
        raise ConfigError(f"--motion-grid must be HxW, e.g. 20x36, got {args.motion_grid!r}")
    results = import_release(args.release, args.out, args.parts, motion_heads=args.motion_heads, motion_grid=grid)
    print(format_report(results, Path(args.release)))
    return 0 if any(r.status in ("converted", "partial") for r in results) else 1


def generate_cli(cfg, prompt: str, out: Optional[str] = None) -> str:
    """``videolavit generate PROMPT [--out clip.mp4] [generate.task=...]``: writes the video (MP4 + GIF) or answers.

    ``generate.task``: ``text_to_video`` (default; ``generate.clips`` > 1 makes a long video), ``image_to_video``
    (``generate.image`` is the first frame, PROMPT may be empty) or ``qa`` (PROMPT is a question about
    ``generate.media``, an image or a video file). Returns what to print.
    """
    from pathlib import Path

    import torch

    from videolavit.errors import ConfigError
    from videolavit.inference.media import read_rgb, save_video
    from videolavit.inference.pipeline import TASKS, VideoLaVITPipeline

    task = str(cfg.generate.task)
    if task not in TASKS:
        raise ConfigError(f"generate.task must be one of {', '.join(TASKS)}, got {task!r}")
    if cfg.compute.threads:
        torch.set_num_threads(int(cfg.compute.threads))
    if task == "qa":
        if not cfg.generate.media:
            raise ConfigError("generate.task=qa needs generate.media=<image or video file> to ask about")
        pipe = VideoLaVITPipeline.from_config(cfg, instruct=True, detokenizers=False)
        return pipe.answer([prompt], [pipe.media_ids(cfg.generate.media)])[0]
    pipe = VideoLaVITPipeline.from_config(cfg)
    clips = int(cfg.generate.clips)
    if task == "image_to_video":
        if not cfg.generate.image:
            raise ConfigError("generate.task=image_to_video needs generate.image=<image file> (the first frame)")
        video = pipe.image_to_video(read_rgb(cfg.generate.image), prompt, clips)
    else:
        if not prompt.strip():
            raise ConfigError("text_to_video needs a non-empty prompt")
        video = pipe.text_to_video(prompt, clips)
    out = Path(out) if out else Path(cfg.paths.runs) / "generate" / f"{_slug(prompt)}.mp4"
    written = save_video(video, out, gif=bool(cfg.generate.gif))
    visual = sum(len(v) for v in video.visual_codes)
    motion = sum(len(m) for m in video.motion_codes)
    return (f"{', '.join(str(p) for p in written)}: {video.clips} clip(s), {len(video.frames)} frames at "
            f"{video.fps:g} fps from {visual} visual + {motion} motion tokens")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:48] or "video"


def _is_sweep_key(override: str) -> bool:
    from videolavit.sweep import SWEEP_OPTIONS

    return override.split("=", 1)[0] in SWEEP_OPTIONS


if __name__ == "__main__":
    raise SystemExit(main())
