"""Each DVC stage's code deps, computed from its imports, so that they cannot drift from the code.

``python tools/dvcdeps.py`` lists what dvc.yaml misses (exit 1 if anything); ``--write`` rewrites the code deps of
every stage in dvc.yaml. A stage's code is what ``videolavit <stage>`` runs: ``cli.py`` (its ``run_stage`` loads the
config, then calls the stage's ``run``) and every project module reachable from ``videolavit.stages.<stage>``,
function-level imports included (tools/project_imports.py), plus the config files every stage loads. Data deps
(``data/``, ``models/``, ``metrics/``), other config files (``conf/eval``), params and outs are left as they are.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from project_imports import ROOT, SRC, closure, dynamic_imports, imports_with_lines, module_path

DVC_YAML = ROOT / "dvc.yaml"
CODE_PREFIX = "src/videolavit/"
# what load_config reads for every stage (params.yaml is tracked through each stage's params)
CONFIG_DEPS = ("src/videolavit/conf/base.yaml", "src/videolavit/conf/profile")
# the command's own path into the stage: cli.main → run_stage → config.load_config → stages.<stage>.run
ENTRY_MODULES = ("videolavit.cli", "videolavit.config")


# cli.py's functions on the path of ``videolavit <stage>`` (``_dispatch``'s stage branch calls only these); the
# function-level imports of the others (generate, sweep, plan, show-motion, ...) serve other commands
CLI_STAGE_PATH = ("main", "build_parser", "_add_common", "_stage_help", "_stage_module", "run_stage",
                  "overrides_from_file", "stage_summary")


def cli_stage_imports() -> set[str]:
    """Project modules cli.py imports at module level or inside the functions of CLI_STAGE_PATH."""
    tree = ast.parse(module_path("videolavit.cli").read_text())
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    absent = [name for name in CLI_STAGE_PATH if name not in functions]
    if absent:
        raise SystemExit(f"tools/dvcdeps.py: CLI_STAGE_PATH names {absent}, not functions of cli.py: update it")
    spans = [(n.lineno, n.end_lineno) for n in functions.values()]
    wanted = [(functions[name].lineno, functions[name].end_lineno) for name in CLI_STAGE_PATH]
    out = set()
    for name, line in imports_with_lines("videolavit.cli"):
        if not name.startswith("videolavit"):
            continue
        inside_any = any(a <= line <= b for a, b in spans)
        if not inside_any or any(a <= line <= b for a, b in wanted):
            out.add(name)
    return out


# modules whose function-level imports only build help texts (``--help`` of sweep, key tables): the file is a
# stage dep (build_parser imports it on every command), what its functions import is not
HELP_MODULES = ("videolavit.cli_help",)


def stage_modules(stage: str) -> set[str]:
    """Project modules ``videolavit <stage>`` may import: the stage's closure, the config's, and the closure of what
    cli.py imports on the stage's path (CLI_STAGE_PATH); the help modules themselves."""
    roots = sorted(cli_stage_imports() - set(HELP_MODULES))
    return {"videolavit.cli", *HELP_MODULES} | closure(f"videolavit.stages.{stage}", *ENTRY_MODULES[1:], *roots)


def _rel(path: Path) -> str:
    return path.resolve().relative_to(ROOT).as_posix()


def stage_files(stage: str) -> set[str]:
    return {_rel(module_path(m)) for m in stage_modules(stage)}


def code_deps(stage: str) -> list[str]:
    """The smallest list of files and folders covering the stage's modules (a folder when all of it is imported)."""
    files = stage_files(stage)

    def cover(folder: Path) -> list[str]:
        inside = [_rel(p) for p in folder.rglob("*.py")]
        if folder != SRC / "videolavit" and inside and all(f in files for f in inside):
            return [_rel(folder)]
        out = sorted(_rel(p) for p in folder.glob("*.py") if _rel(p) in files)
        for sub in sorted(p for p in folder.iterdir() if p.is_dir() and (p / "__init__.py").is_file()):
            out += cover(sub)
        return out

    return cover(SRC / "videolavit")


def covered(path: str, deps: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


def read_stages() -> dict[str, list[str]]:
    import yaml

    stages = yaml.safe_load(DVC_YAML.read_text())["stages"]
    return {name: [d if isinstance(d, str) else next(iter(d)) for d in spec.get("deps", [])] for name, spec in stages.items()}


def missing() -> dict[str, list[str]]:
    """``{stage: [module files or config deps it uses that its dvc.yaml deps do not cover]}``."""
    out = {}
    for stage, deps in read_stages().items():
        needed = sorted(stage_files(stage)) + list(CONFIG_DEPS)
        gaps = [f for f in needed if not covered(f, deps)]
        if gaps:
            out[stage] = gaps
    return out


def unresolved_dynamic_imports(stage: str) -> list[str]:
    return [f"{m}:{line}" for m in sorted(stage_modules(stage)) for line in dynamic_imports(m) if m != "videolavit.cli"]


def rewrite(text: str) -> str:
    """dvc.yaml with each stage's ``src/videolavit/`` deps replaced by the generated ones (other lines untouched)."""
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    stage = None
    i = 0
    while i < len(lines):
        line = lines[i]
        m = re.match(r"^  ([A-Za-z_0-9]+):\s*$", line)
        if m:
            stage = m.group(1)
        if stage and re.match(r"^    deps:", line):
            out.append(line)
            i += 1
            items = []
            while i < len(lines) and re.match(r"^      - ", lines[i]):
                items.append(lines[i])
                i += 1
            kept = []
            for item in items:
                path = item[len("      - "):].split("#")[0].strip().rstrip(":")
                if not path.startswith(CODE_PREFIX):
                    kept.append(item)
                elif path.startswith(CODE_PREFIX + "conf/") and path not in CONFIG_DEPS and (ROOT / path).exists():
                    kept.append(item)  # a config file the stage reads itself (conf/eval, paper_results.yaml)
            data = [k for k in kept if not k[len("      - "):].startswith(CODE_PREFIX)]
            conf = [k for k in kept if k not in data]
            generated = [f"      - {d}\n" for d in code_deps(stage) + list(CONFIG_DEPS)]
            out += data + generated + conf
            continue
        out.append(line)
        i += 1
    return "".join(out)


def main(argv: list[str]) -> int:
    if "--write" in argv:
        DVC_YAML.write_text(rewrite(DVC_YAML.read_text()))
    gaps = missing()
    for stage, files in gaps.items():
        print(f"{stage}: {len(files)} not among its deps: {', '.join(files)}")
    total = sum(len(f) for f in gaps.values())
    print(f"{total} imported modules / config files missing from dvc.yaml deps")
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
