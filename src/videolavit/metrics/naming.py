"""Metric names carry the feature extractor that produced them, so a proxy is never read as a published number."""

from __future__ import annotations

import re

# Extractors whose numbers are comparable with published ones (given the paper's protocol: I3D from the StyleGAN-V
# TorchScript file; CLIP ViT-B/16 for Video-LaVIT's CLIPSIM). Anything else ("corpus", "custom") is a proxy.
PUBLISHED_EXTRACTORS = frozenset({"i3d", "clip"})

_NAME = re.compile(r"^[a-z0-9][a-z0-9_]*$")


def metric_name(base: str, extractor) -> str:
    """``metric_name("t2v/fvd", "i3d:/models/i3d.pt")`` → ``"t2v/fvd_i3d"``; ``extractor`` may be a metric with ``extractor_name``."""
    name = extractor if isinstance(extractor, str) else getattr(extractor, "extractor_name", None)
    if not isinstance(name, str):
        raise ValueError(f"cannot tell which feature extractor {extractor!r} is: pass a name such as 'i3d' or 'corpus'")
    name = name.split(":", 1)[0].strip().lower()
    if not _NAME.match(name):
        raise ValueError(f"extractor name {name!r} must be lowercase letters, digits and '_' (e.g. 'i3d', 'corpus')")
    if not base or base.endswith(("/", "_")):
        raise ValueError(f"metric base name {base!r} must be non-empty and not end with '/' or '_'")
    return f"{base}_{name}"


def is_published_extractor(metric: str) -> bool:
    """True when a metric named ``<base>_<extractor>`` used an extractor that makes it comparable with the paper."""
    return metric.rsplit("_", 1)[-1] in PUBLISHED_EXTRACTORS
