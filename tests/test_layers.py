"""The rooms' one direction of dependency (DESIGN.md), read from every module's imports, function bodies included.

Order (a module may import its own level or below, never above):

    0 foundation   errors, vocab, constraints, pretrained, config + schemas, sweep_spec, lean_imports   (pure: imported by every room)
    1 video        codec level: PyAV + numpy, no torch; takes its config section as an argument
    2 data
    3 models, metrics      nn.Modules / torchmetrics Metrics over tensors (metrics feed evaluation and validation)
    4 training, inference, evaluation, and beside them the stage plumbing they share: tracking (MLflow; tracking_worker
      its helper process), runner
      (one stage run: tracking + metrics file), artifacts (trained-artifact paths), convert (released weights),
      report (tables and figures from the runs)
    5 stages       one thin file per DVC stage; no stage imports another
    6 sweep        drives a stage's fit per trial (imports stages by name)
    7 cli

Rooms on one level may import each other, but the room graph has no cycle (config and schemas count as one room:
schemas register into config). ``if TYPE_CHECKING:`` imports are not counted (they never run). A new top-level module
must be placed in LEVELS below.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import project_imports

LEVELS = {
    "errors": 0, "vocab": 0, "constraints": 0, "pretrained": 0, "config": 0, "schemas": 0, "sweep_spec": 0, "lean_imports": 0,
    "video": 1,
    "data": 2,
    "models": 3, "metrics": 3,
    "training": 4, "inference": 4, "evaluation": 4, "tracking": 4, "tracking_worker": 4, "runner": 4, "artifacts": 4, "convert": 4,
    "report": 4,
    "stages": 5,
    "sweep": 6,
    "cli": 7, "cli_help": 7,
}
ROOM_ALIASES = {"schemas": "config"}
MODELS_MUST_NOT_IMPORT = ("lightning", "pytorch_lightning", "lightning_fabric", "mlflow", "dvc", "optuna")
TORCH = ("torch", "torchvision", "torchaudio", "torchmetrics")  # each of them imports torch
STAGE_PACKAGE = "videolavit.stages"


def room(module: str) -> str | None:
    """``videolavit.data.shards`` → ``data``; None for the root package."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def graph() -> dict[str, list[tuple[str, int]]]:
    return {m: list(project_imports.imports_with_lines(m)) for m in project_imports.all_modules()}


def _project(target: str) -> bool:
    return target.startswith("videolavit.") and project_imports.module_path(target) is not None


def arrow_violations(imports: dict[str, list[tuple[str, int]]]) -> list[str]:
    out = []
    for module, targets in imports.items():
        src = room(module)
        for target, line in targets:
            dst = room(target) if _project(target) else None
            if src is None or dst is None or src == dst:
                continue
            if LEVELS[dst] > LEVELS[src]:
                out.append(f"{module}:{line} → {target} ({src} {LEVELS[src]} < {dst} {LEVELS[dst]})")
    return sorted(out)


def room_cycles(imports: dict[str, list[tuple[str, int]]]) -> list[list[str]]:
    edges: dict[str, set[str]] = {}
    for module, targets in imports.items():
        src = room(module)
        for target, _ in targets:
            dst = room(target) if _project(target) else None
            if src and dst:
                a, b = ROOM_ALIASES.get(src, src), ROOM_ALIASES.get(dst, dst)
                if a != b:
                    edges.setdefault(a, set()).add(b)
    cycles, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    return cycles


def forbidden_imports(imports, prefix: str, names: tuple[str, ...], allowed_project: tuple[str, ...] | None = None):
    out = []
    for module, targets in imports.items():
        if not (module == prefix or module.startswith(prefix + ".")):
            continue
        for target, line in targets:
            top = target.split(".")[0]
            if top in names or allowed_project is not None and _project(target) and not target.startswith(allowed_project):
                out.append(f"{module}:{line} → {target}")
    return sorted(out)


def stage_to_stage(imports) -> list[str]:
    out = []
    for module, targets in imports.items():
        if not module.startswith(STAGE_PACKAGE + "."):
            continue
        for target, line in targets:
            if target.startswith(STAGE_PACKAGE + ".") and target != module and _project(target):
                out.append(f"{module}:{line} → {target}")
    return sorted(out)


def test_every_room_has_a_level():
    rooms = {room(m) for m in project_imports.all_modules()} - {None}
    assert sorted(rooms - set(LEVELS)) == [], "place the new top-level module or package in LEVELS"


def test_no_import_against_the_direction_of_the_rooms():
    assert arrow_violations(graph()) == []


def test_no_cycle_between_rooms():
    assert room_cycles(graph()) == []


def test_models_never_import_lightning_mlflow_dvc_or_optuna():
    assert forbidden_imports(graph(), "videolavit.models", MODELS_MUST_NOT_IMPORT) == []


def test_video_never_imports_torch_nor_loads_a_config():
    # video/ takes its `video` config section as an argument: no fallback that loads a profile
    assert forbidden_imports(graph(), "videolavit.video", TORCH, ("videolavit.video", "videolavit.errors")) == []


def test_no_stage_imports_another_stage_module():
    assert stage_to_stage(graph()) == []


def test_stages_holds_only_stage_modules():
    from videolavit.config import STAGES

    modules = {m for m in project_imports.all_modules() if m.startswith(STAGE_PACKAGE + ".")}
    assert sorted(modules - {f"{STAGE_PACKAGE}.{s}" for s in STAGES}) == []


def test_the_checks_catch_what_they_guard():
    fake = {
        "videolavit.data.lm_data": [("videolavit.models.lm", 3), ("videolavit.video.io", 4)],
        "videolavit.models.lm": [("lightning", 7), ("torch", 8)],
        "videolavit.video.io": [("torch", 2), ("videolavit.config", 5)],
        "videolavit.stages.instruct": [("videolavit.stages.pretrain", 9)],
        "videolavit.report.figures": [("videolavit.sweep", 1)],
        "videolavit.sweep": [("videolavit.report.figures", 2)],
    }
    real = project_imports.module_path
    try:
        project_imports.module_path = lambda name: Path(name) if name.startswith("videolavit.") else None
        assert arrow_violations(fake) == [
            "videolavit.data.lm_data:3 → videolavit.models.lm (data 2 < models 3)",
            "videolavit.report.figures:1 → videolavit.sweep (report 4 < sweep 6)",
        ]
        assert room_cycles(fake) == [["report", "sweep", "report"]]
        assert forbidden_imports(fake, "videolavit.models", MODELS_MUST_NOT_IMPORT) == ["videolavit.models.lm:7 → lightning"]
        assert forbidden_imports(fake, "videolavit.video", ("torch",), ("videolavit.video", "videolavit.errors")) == [
            "videolavit.video.io:2 → torch", "videolavit.video.io:5 → videolavit.config"
        ]
        assert stage_to_stage(fake) == ["videolavit.stages.instruct:9 → videolavit.stages.pretrain"]
    finally:
        project_imports.module_path = real


def test_no_formatter_markers_without_a_formatter():
    # formatter markers (fmt: skip / off / on) only mean something to a configured formatter (ruff format, black)
    import tomllib

    tool = tomllib.loads((ROOT / "pyproject.toml").read_text()).get("tool", {})
    if "black" in tool or "format" in tool.get("ruff", {}):
        return
    files = [p for d in ("src", "tests", "benchmarks", "tools") for p in (ROOT / d).rglob("*.py")]
    marker = re.compile("#" + r"\s*fmt:\s*(?:skip|off|on)\b")  # split so that this file does not match itself
    marked = [f"{p.relative_to(ROOT)}:{i}" for p in files for i, line in enumerate(p.read_text().splitlines(), 1)
              if marker.search(line)]
    assert marked == []
