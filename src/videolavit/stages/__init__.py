"""Stages: one module per DVC stage, each with ``run(cfg) -> dict[str, float]``."""
