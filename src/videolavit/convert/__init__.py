"""The released Video-LaVIT weights (github.com/jy0205/LaVIT) → this project's format: ``import_release``."""

from videolavit.convert.release import PART_NAMES, import_release

__all__ = ["PART_NAMES", "import_release"]
