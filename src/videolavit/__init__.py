"""videolavit: a trainable, measurable, reproducible Video-LaVIT."""

__version__ = "0.1.0"
