"""The Pareto front of a multi-objective study: which trials no other dominates, and its plot (sweep and report)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence


def pareto_front(points: Sequence[tuple[float, ...]]) -> list[int]:
    """Indices of the points no other point dominates (every objective minimized)."""
    front = []
    for i, p in enumerate(points):
        dominated = any(
            all(a <= b for a, b in zip(q, p)) and any(a < b for a, b in zip(q, p)) for j, q in enumerate(points) if j != i
        )
        if not dominated:
            front.append(i)
    return front


def pareto_plot(trials, front, objectives: list[str], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4), dpi=120)
    ax.scatter([t.values[1] for t in trials], [t.values[0] for t in trials], c="lightgray", label="trials")
    pts = sorted((t.values[1], t.values[0]) for t in front)
    ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", c="tab:red", label="Pareto front")
    for t in front:
        ax.annotate(f"#{t.number}", (t.values[1], t.values[0]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(objectives[1])
    ax.set_ylabel(objectives[0])
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
