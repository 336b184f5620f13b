"""Every project module a DVC stage imports is among its deps, so editing it re-runs the stage (regenerate with
``python tools/dvcdeps.py --write``)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import dvcdeps
import project_imports

from videolavit.config import STAGES

DEPS = dvcdeps.read_stages()
# dynamic imports the walker follows anyway: videolavit.metrics resolves its lazy names through its _EXPORTS dict
FOLLOWED_DYNAMIC = {"videolavit.metrics"}


def test_every_stage_is_in_dvc_yaml():
    assert set(DEPS) == set(STAGES)


@pytest.mark.parametrize("stage", STAGES)
def test_stage_imports_are_covered_by_its_deps(stage):
    needed = sorted(dvcdeps.stage_files(stage)) + list(dvcdeps.CONFIG_DEPS)
    assert f"src/videolavit/stages/{stage}.py" in needed
    gaps = [path for path in needed if not dvcdeps.covered(path, DEPS[stage])]
    assert gaps == [], f"{stage}: run `python tools/dvcdeps.py --write`"


@pytest.mark.parametrize("stage", STAGES)
def test_stage_imports_have_no_unresolved_dynamic_import(stage):
    # an import_module(f"...") the walker cannot follow would hide a dep
    unresolved = [m for m in dvcdeps.unresolved_dynamic_imports(stage) if m.split(":")[0] not in FOLLOWED_DYNAMIC]
    assert unresolved == []


def test_every_dep_exists():
    # a dep that is not there (a moved file) makes `dvc repro` fail before any stage runs
    outs = {next(iter(o)) if isinstance(o, dict) else o for spec in yaml.safe_load((ROOT / "dvc.yaml").read_text())[
        "stages"].values() for o in spec.get("outs", []) + spec.get("metrics", [])}
    absent = [d for deps in DEPS.values() for d in deps if d not in outs and not (ROOT / d).exists()]
    assert absent == []


def test_generated_deps_are_what_dvc_yaml_holds():
    # dvc.yaml is the generator's output: no stale code dep of a module the stage no longer imports
    text = (ROOT / "dvc.yaml").read_text()
    assert dvcdeps.rewrite(text) == text, "run `python tools/dvcdeps.py --write`"


def test_walker_sees_function_level_relative_lazy_and_type_checking_imports(tmp_path, monkeypatch):
    pkg = tmp_path / "videolavit"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text('_EXPORTS = {"Thing": "impl"}\n')
    (pkg / "sub" / "impl.py").write_text("Thing = 1\n")
    (pkg / "sub" / "typed.py").write_text("")
    (pkg / "sub" / "other.py").write_text("")
    (pkg / "top.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from videolavit.sub import typed\n"
        "def f():\n    from .sub import other\n    from videolavit.sub import Thing\n    import torch\n"
    )
    monkeypatch.setattr(project_imports, "SRC", tmp_path)
    for fn in (project_imports._parse, project_imports._lazy_exports, project_imports.imports_with_lines):
        fn.cache_clear()
    try:
        assert project_imports.closure("videolavit.top") == {
            "videolavit", "videolavit.top", "videolavit.sub", "videolavit.sub.other", "videolavit.sub.impl"
        }
        assert "torch" in {name for name, _ in project_imports.imports_with_lines("videolavit.top")}
    finally:
        for fn in (project_imports._parse, project_imports._lazy_exports, project_imports.imports_with_lines):
            fn.cache_clear()


def test_what_cli_imports_on_a_stages_path_is_a_dep_of_every_stage():
    """``videolavit <stage>`` runs cli.main (lean_imports, runner), build_parser (cli_help) and run_stage
    (tracking_worker) inside functions: editing any of them must re-run the stages; the other commands' imports
    (generate's pipeline, sweep) are not deps of a stage."""
    path_modules = {"src/videolavit/lean_imports.py", "src/videolavit/tracking_worker.py",
                    "src/videolavit/runner.py", "src/videolavit/cli_help.py"}
    for stage in STAGES:
        assert {p for p in path_modules if not dvcdeps.covered(p, DEPS[stage])} == set(), stage
    assert not dvcdeps.covered("src/videolavit/sweep.py", DEPS["corpus"])
    assert "videolavit.inference.pipeline" not in dvcdeps.stage_modules("corpus")


def test_cli_stage_path_names_functions_that_exist():
    import ast

    tree = ast.parse((dvcdeps.SRC / "videolavit" / "cli.py").read_text())
    functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert set(dvcdeps.CLI_STAGE_PATH) <= functions
