"""Keep out of a stage process the libraries torchmetrics imports for metrics this project never computes.

Lightning imports torchmetrics (a version check) and torchmetrics' ``__init__`` imports transformers (for BERTScore
and InfoLM), matplotlib (``Metric.plot``) and scipy.signal (an alias for an audio metric): ~2.6 of a training stage's
~6.5 CPU-seconds of imports, measured with ``benchmarks/startup.py``. :func:`install` (the CLI calls it first) makes
torchmetrics see those as absent. The libraries themselves still import normally wherever this project uses them
(the LM's transformers, the figures' matplotlib); only torchmetrics' own BERTScore, InfoLM and ``plot`` are off.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys

# torchmetrics.utilities.imports flags (lightning_utilities RequirementCache objects) read once at import time
TORCHMETRICS_FLAGS = ("_TRANSFORMERS_GREATER_EQUAL_4_4", "_TRANSFORMERS_GREATER_EQUAL_4_10", "_MATPLOTLIB_AVAILABLE",
                      "_SCIPI_AVAILABLE")
SKIPPED = ("transformers", "matplotlib", "scipy.signal")  # what a stage that needs none of them no longer imports


class _FlagsOff(importlib.abc.MetaPathFinder):
    """Finds ``torchmetrics.utilities.imports`` as usual and marks :data:`TORCHMETRICS_FLAGS` unavailable after it ran."""

    name = "torchmetrics.utilities.imports"

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            for flag in TORCHMETRICS_FLAGS:
                cache = getattr(module, flag, None)
                if cache is not None and hasattr(cache, "requirement"):
                    cache.available = False
                    cache.message = f"{cache.requirement}: not imported by videolavit (videolavit.lean_imports)"

        spec.loader.exec_module = exec_module
        return spec


class _Hidden(importlib.abc.MetaPathFinder):
    def __init__(self, name: str):
        self.hidden = name

    def find_spec(self, fullname, path, target=None):
        if fullname == self.hidden:
            raise ModuleNotFoundError(f"{fullname} hidden from one availability check", name=fullname)


def install() -> bool:
    """Before torchmetrics is imported: turn its optional imports off; returns False (nothing done) once it is."""
    if "torchmetrics" in sys.modules:
        return False
    if not any(isinstance(f, _FlagsOff) for f in sys.meta_path):
        sys.meta_path.insert(0, _FlagsOff())
    if "scipy" not in sys.modules:
        try:
            from lightning_utilities.core.imports import package_available
        except ImportError:  # no Lightning installed: nothing imports torchmetrics through it
            return True
        # torchmetrics' __init__ imports scipy.signal when package_available("scipy"), a process-wide lru_cache that
        # nothing else here consults for scipy: answer it once with scipy hidden (scipy itself imports as usual).
        hide = _Hidden("scipy")
        sys.meta_path.insert(0, hide)
        try:
            package_available("scipy")
        finally:
            sys.meta_path.remove(hide)
    return True
