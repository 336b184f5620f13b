"""Report figures: training curves from MLflow metric histories, and the Pareto front of the latest multi-objective sweep."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Optional, Sequence

from videolavit.report.pareto import pareto_front, pareto_plot
from videolavit.report.runs import RunIndex, RunRecord, metric_history

History = Callable[[str, str], list[tuple[int, float]]]  # (run_id, key) → [(step, value)]


def curve_keys(run: RunRecord, limit: int) -> list[str]:
    """``train/loss`` first, then the run's ``val/*`` metrics, at most ``limit``."""
    keys = [k for k in ("train/loss",) if k in run.metrics]
    keys += sorted(k for k in run.metrics if k.startswith("val/"))
    return keys[:limit]


def training_curves(run: RunRecord, history: History, out: Path, limit: int = 6) -> Optional[Path]:
    """One PNG with a panel per metric of ``run`` that has at least two logged steps; None when none has."""
    series = {k: h for k in curve_keys(run, limit) if len(h := history(run.run_id, k)) >= 2}
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(series))
    rows = math.ceil(len(series) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.6 * rows), squeeze=False, dpi=100)
    for ax, (key, points) in zip(axes.flat, series.items()):
        steps, values = zip(*points)
        ax.plot(steps, values, marker="." if len(points) < 30 else None, lw=1.2)
        ax.set_title(key, fontsize=8)
        ax.set_xlabel("step", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(series) :]:
        ax.axis("off")
    fig.suptitle(f"{run.stage}: {run.label}, {run.profile or '?'} profile", fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def sweep_pareto(index: RunIndex, out_dir: Path) -> Optional[Path]:
    """The Pareto plot of the latest multi-objective study, recomputed from its trial runs' metrics."""
    from videolavit.errors import ConfigError
    from videolavit.sweep_spec import load_sweep_spec

    study, trials = index.latest_study("multi")
    if not trials:
        return None
    try:
        objectives = list(load_sweep_spec(trials[0].stage or "")["objectives"])
    except ConfigError:
        return None
    done = [t for t in trials if all(isinstance(t.metrics.get(o), float) and math.isfinite(t.metrics[o]) for o in objectives)]
    if len(objectives) != 2 or not done:
        return None
    points = [
        SimpleNamespace(number=int(t.tags.get("optuna.trial", i)), values=[t.metrics[o] for o in objectives])
        for i, t in enumerate(done)
    ]
    front = [points[i] for i in pareto_front([tuple(p.values) for p in points])]
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in str(study))
    return pareto_plot(points, front, objectives, out_dir / f"pareto_{safe}.png")


def make_figures(
    index: RunIndex, stages: Sequence[str], out_dir: Path, limit: int = 6, history: Optional[History] = None
) -> list[Path]:
    """Training curves of the latest main run of each of ``stages`` and the latest Pareto front; the paths written."""
    history = history or (lambda run_id, key: metric_history(index.uri, run_id, key))
    written = []
    for stage in stages:
        run = index.latest(stage)
        if run is not None and (path := training_curves(run, history, out_dir / f"curves_{stage}.png", limit)):
            written.append(path)
    if (path := sweep_pareto(index, out_dir)) is not None:
        written.append(path)
    return written


def divergence(points: Sequence[tuple[int, float]], rise: float = 0.10) -> Optional[tuple[int, float, int, float]]:
    """(min step, min value, last step, last value) when the last value of a loss-like curve is more than ``rise``
    (a fraction) above its minimum; None otherwise (or when the minimum is not positive)."""
    finite = [(s, v) for s, v in points if math.isfinite(v)]
    if len(finite) < 3:
        return None
    best_step, best = min(finite, key=lambda p: p[1])
    last_step, last = finite[-1]
    if best > 0 and last > best * (1 + rise) and last_step > best_step:
        return best_step, best, last_step, last
    return None


def divergence_flags(
    index: RunIndex, stages: Sequence[str], rise: float = 0.10, history: Optional[History] = None
) -> list[str]:
    """One Markdown line per validation loss of the latest main run of each stage that rose more than ``rise`` from
    its minimum (overfitting or a learning rate too high): drawn in the curves, flagged here."""
    history = history or (lambda run_id, key: metric_history(index.uri, run_id, key))
    flags = []
    for stage in stages:
        run = index.latest(stage)
        if run is None:
            continue
        for key in sorted(k for k in run.metrics if k.startswith("val/") and "loss" in k):
            hit = divergence(history(run.run_id, key), rise)
            if hit:
                s0, v0, s1, v1 = hit
                flags.append(f"- **{stage}** `{key}` rose {100 * (v1 / v0 - 1):.0f}% from its minimum {v0:.4g} "
                             f"(step {s0}) to {v1:.4g} (step {s1}) in {run.label}: it diverges (threshold {100 * rise:.0f}%)")
    return flags
