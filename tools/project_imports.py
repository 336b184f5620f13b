"""The project's import graph, read from the source with ``ast`` (nothing is imported or executed).

Every import statement counts, at module level or inside a function, except under ``if TYPE_CHECKING:`` (never run).
``importlib.import_module`` with a constant name counts too; one built from a variable or an f-string cannot be
resolved and is listed by :func:`dynamic_imports` instead. A package ``__init__`` that re-exports names lazily through
a dict of ``name: "submodule"`` (``videolavit.metrics``) is followed: ``from videolavit.metrics import QAAccuracy``
imports ``videolavit.metrics.qa``.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = "videolavit"


def module_path(name: str) -> Path | None:
    """The file of project module ``name`` (a module or a package's ``__init__.py``), or None if it is not one."""
    base = SRC.joinpath(*name.split("."))
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def module_name(path: Path) -> str:
    rel = Path(path).resolve().relative_to(SRC).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def all_modules() -> list[str]:
    return sorted(module_name(p) for p in (SRC / PACKAGE).rglob("*.py"))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _nodes(tree: ast.AST):
    """Every node, skipping the bodies of ``if TYPE_CHECKING:`` blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


@functools.cache
def _parse(path: Path) -> ast.AST:
    return ast.parse(path.read_text(), filename=str(path))


@functools.cache
def _lazy_exports(package: str) -> dict[str, str]:
    """``{name: submodule}`` from the dict literals of a package ``__init__`` whose values name its submodules."""
    path = module_path(package)
    if path is None or path.name != "__init__.py":
        return {}
    out: dict[str, str] = {}
    for node in ast.walk(_parse(path)):
        if isinstance(node, ast.Dict):
            pairs = [(k.value, v.value) for k, v in zip(node.keys, node.values)
                     if isinstance(k, ast.Constant) and isinstance(v, ast.Constant) and isinstance(v.value, str)]
            subs = {k: f"{package}.{v.lstrip('.')}" for k, v in pairs if module_path(f"{package}.{v.lstrip('.')}")}
            if subs and len(subs) == len(node.keys):
                out.update(subs)
    return out


def _resolve_from(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    parts = module.split(".")
    base = parts if is_package else parts[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


@functools.cache
def imports_with_lines(module: str) -> tuple[tuple[str, int], ...]:
    """``(imported module, line)`` for every import in ``module``: project modules and third-party top-level names."""
    path = module_path(module)
    if path is None:
        return ()
    is_package = path.name == "__init__.py"
    found: list[tuple[str, int]] = []
    for node in _nodes(_parse(path)):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = _resolve_from(module, node, is_package)
            found.append((target, node.lineno))
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if module_path(sub):
                    found.append((sub, node.lineno))
                elif alias.name in _lazy_exports(target):
                    found.append((_lazy_exports(target)[alias.name], node.lineno))
        elif isinstance(node, ast.Call) and _is_import_module(node):
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                name = arg.value
                if name.startswith(".") and len(node.args) > 1:
                    name = f"{module if is_package else module.rsplit('.', 1)[0]}{name}"
                found.append((name, node.lineno))
    return tuple(sorted(set(found), key=lambda item: (item[1], item[0])))


def _is_import_module(node: ast.Call) -> bool:
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    return name == "import_module" and bool(node.args)


def dynamic_imports(module: str) -> list[int]:
    """Lines of ``import_module`` calls whose name is not a constant (they cannot be followed)."""
    path = module_path(module)
    if path is None:
        return []
    return [n.lineno for n in _nodes(_parse(path)) if isinstance(n, ast.Call) and _is_import_module(n)
            and not (isinstance(n.args[0], ast.Constant) and isinstance(n.args[0].value, str))]


def project_imports(module: str) -> set[str]:
    """The project modules ``module`` imports directly, with the packages whose ``__init__`` each import runs."""
    out: set[str] = set()
    for name, _ in imports_with_lines(module):
        if name == PACKAGE or name.startswith(PACKAGE + "."):
            parts = name.split(".")
            for i in range(1, len(parts) + 1):
                if module_path(".".join(parts[:i])):
                    out.add(".".join(parts[:i]))
    out.discard(module)
    return out


def closure(*roots: str) -> set[str]:
    """Every project module that importing ``roots`` can reach (function-level imports included), roots too."""
    seen: set[str] = set()
    todo = [r for r in roots if module_path(r)]
    for root in roots:
        parts = root.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts)) if module_path(".".join(parts[:i]))]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(project_imports(name) - seen)
    return seen
