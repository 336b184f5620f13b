"""The sweep definitions (``conf/sweep/<stage>.yaml``): search space, objectives, fixed overrides. Light on purpose:
the report reads a study's objectives from here without importing the sweep runner (Optuna, the stages)."""

from __future__ import annotations

import yaml

from videolavit.config import CONF_DIR
from videolavit.errors import ConfigError


def load_sweep_spec(stage: str) -> dict:
    path = CONF_DIR / "sweep" / f"{stage}.yaml"
    if not path.is_file():
        valid = sorted(p.stem for p in (CONF_DIR / "sweep").glob("*.yaml"))
        raise ConfigError(f"no sweep is defined for '{stage}' (conf/sweep/{stage}.yaml). Sweepable: {', '.join(valid)}")
    spec = yaml.safe_load(path.read_text())
    for key in ("space", "objective", "objectives"):
        if key not in spec:
            raise ConfigError(f"conf/sweep/{stage}.yaml lacks '{key}'")
    return spec
