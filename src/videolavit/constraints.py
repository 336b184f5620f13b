"""Value constraints attached to config schema fields, and the check of a merged config against them.

A schema field declares its range where its default is written (``batch_size: int = at_least(1, 8)``, a list field
``field(default_factory=..., metadata=bounds(ge=1))``); the typed
merge checks types, :func:`check_values` then checks what the types cannot: ranges, positivity, finiteness, and that
every ``${...}`` interpolation resolves. Every problem is a :class:`ConfigError` naming the dotted key and its value.
A ``None`` value always passes (it means the documented fallback). NaN is rejected in every float of the tree.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from dataclasses import dataclass
from typing import Any, Optional

from videolavit.errors import ConfigError

_KEY = "videolavit.range"


@dataclass(frozen=True)
class Range:
    """Bounds a numeric field (or each number of a list field) must satisfy; the number must be finite."""

    ge: Optional[float] = None
    gt: Optional[float] = None
    le: Optional[float] = None
    lt: Optional[float] = None
    why: str = ""  # what the bounds leave out, told with the error

    def problem(self, value: Any) -> Optional[str]:
        """Why ``value`` breaks the bounds (None when it does not)."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None  # the typed merge owns types; a list is checked item by item by the caller
        if not math.isfinite(value):
            return "must be a finite number"
        tests = {"ge": operator.ge, "gt": operator.gt, "le": operator.le, "lt": operator.lt}
        broken = [n for n, ok in tests.items() if getattr(self, n) is not None and not ok(value, getattr(self, n))]
        if not broken:
            return None
        return f"must be {' and '.join(self.describe())}" + (f" ({self.why})" if self.why else "")

    def describe(self) -> list[str]:
        ops = (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))
        return [f"{op} {getattr(self, name):g}" for name, op in ops if getattr(self, name) is not None]


def bounds(**bounds: Any) -> dict:
    """Field metadata with a :class:`Range` (ge, gt, le, lt; why): ``field(default_factory=..., metadata=bounds(ge=1))``
    for a list field, whose every number is checked."""
    return {_KEY: Range(**bounds)}


def checked(default: Any, **bounds_: Any) -> Any:
    """A dataclass field with ``default`` whose value must satisfy ``bounds_`` (ge, gt, le, lt; why)."""
    return dataclasses.field(default=default, metadata=bounds(**bounds_))


def positive(default: Any, **kw: Any) -> Any:
    """> 0 (sizes, rates, learning rates)."""
    return checked(default, gt=0, **kw)


def at_least(low: float, default: Any, **kw: Any) -> Any:
    """>= ``low`` (counts: 1 for batch sizes and dimensions, 0 for step counts that may be zero)."""
    return checked(default, ge=low, **kw)


def fraction(default: Any, **kw: Any) -> Any:
    """In [0, 1] (probabilities, ratios, decays)."""
    return checked(default, ge=0, le=1, **kw)


def check_values(cfg: Any) -> None:
    """Raise :class:`ConfigError` for the first value of ``cfg`` (a merged structured DictConfig) that breaks its
    field's range, is NaN, or is an interpolation that does not resolve."""
    _walk(cfg, "")


def _walk(node: Any, prefix: str) -> None:
    from omegaconf import DictConfig, ListConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    schema = OmegaConf.get_type(node) if isinstance(node, DictConfig) else None
    fields = dataclasses.fields(schema) if dataclasses.is_dataclass(schema) else ()
    ranges = {f.name: f.metadata.get(_KEY) for f in fields}
    keys = node.keys() if isinstance(node, DictConfig) else range(len(node))
    for key in keys:
        path = f"{prefix}{key}" if isinstance(node, DictConfig) else f"{prefix.rstrip('.')}[{key}]"
        try:
            value = node[key]  # resolves an interpolation and checks its type
        except OmegaConfBaseException as exc:  # InterpolationKeyError, ValidationError: name our key, not its trace
            raw = node._get_node(key)._value() if hasattr(node, "_get_node") else "?"
            msg = (getattr(exc, "msg", None) or str(exc) or type(exc).__name__).splitlines()[0]
            raise ConfigError(f"config key '{path}' = {raw!s} cannot be resolved: {msg}") from None
        if isinstance(value, (DictConfig, ListConfig)):
            rng = ranges.get(key)
            if isinstance(value, ListConfig) and rng is not None:
                _check_items(path, value, rng)
            _walk(value, f"{path}.")
            continue
        if isinstance(value, float) and math.isnan(value):
            raise ConfigError(f"config key '{path}' is NaN: give a number")
        if ranges.get(key) is not None:
            _fail(path, value, ranges[key])


def _check_items(path: str, items: Any, rng: Range) -> None:
    """Each number of a (nested) list field against the field's range."""
    from omegaconf import ListConfig

    for i, item in enumerate(items):
        if isinstance(item, (list, tuple, ListConfig)):
            _check_items(f"{path}[{i}]", item, rng)
        else:
            _fail(f"{path}[{i}]", item, rng)


def _fail(path: str, value: Any, rng: Range) -> None:
    problem = rng.problem(value)
    if problem:
        raise ConfigError(f"config key '{path}' = {value!r} is out of range: it {problem}")
