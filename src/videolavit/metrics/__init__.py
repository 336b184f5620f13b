"""Evaluation metrics (torchmetrics ``Metric`` subclasses usable outside the pipeline) and the paper's printed numbers.

Names import lazily, so ``videolavit.metrics.paper_results`` or ``metric_name`` cost no torch import.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "FrechetVideoDistance": "frechet",
    "frechet_distance": "frechet",
    "load_i3d": "frechet",
    "CLIPSim": "clipsim",
    "LocalCLIP": "clipsim",
    "QAAccuracy": "qa",
    "normalize_answer": "qa",
    "NOT_COMPARABLE_WITH_GPT_JUDGED": "qa",
    "ACTIVITYNET_QA_TYPES": "qa",
    "MotionEPE": "motion",
    "VideoPSNR": "reconstruction",
    "VideoSSIM": "reconstruction",
    "video_psnr": "reconstruction",
    "video_ssim": "reconstruction",
    "PeakSignalNoiseRatio": "reconstruction",
    "StructuralSimilarityIndexMeasure": "reconstruction",
    "metric_name": "naming",
    "is_published_extractor": "naming",
    "PUBLISHED_EXTRACTORS": "naming",
    "load_paper_results": "paper_results",
    "paper_cells": "paper_results",
    "paper_value": "paper_results",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'videolavit.metrics' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
