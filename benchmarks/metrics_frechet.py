"""Fréchet distance at I3D size (400-d): videolavit's symmetric eigh route vs scipy sqrtm vs torchmetrics' eigvals.

Prints time per call on one thread and each route's relative gap to scipy on the same float64 statistics.
    python benchmarks/metrics_frechet.py --dim 400 --samples 2048 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import time

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # before numpy/torch load their BLAS: compare routes, not thread counts

import numpy as np
import torch
from scipy import linalg

from videolavit.metrics import frechet_distance


def scipy_route(mu1, s1, mu2, s2) -> float:
    covmean = linalg.sqrtm(s1 @ s2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean.real))


def torchmetrics_route(mu1, s1, mu2, s2) -> float:
    from torchmetrics.image.fid import _compute_fid

    return float(_compute_fid(mu1, s1, mu2, s2))


def timed(fn, args, repeats):
    fn(*args)
    start = time.perf_counter()
    for _ in range(repeats):
        value = fn(*args)
    return (time.perf_counter() - start) / repeats, float(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=400)
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.samples, args.dim))
    y = rng.normal(size=(args.samples, args.dim)) @ rng.normal(scale=0.2, size=(args.dim, args.dim)) + 0.1
    stats_np = (x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))
    stats_t = tuple(torch.from_numpy(s) for s in stats_np)

    t_scipy, v_scipy = timed(scipy_route, stats_np, args.repeats)
    t_ours, v_ours = timed(frechet_distance, stats_t, args.repeats)
    t_tm, v_tm = timed(torchmetrics_route, stats_t, args.repeats)
    print(f"dim={args.dim} samples={args.samples} (1 thread)")
    print(f"{'route':<28}{'ms/call':>10}{'vs scipy time':>15}{'rel. gap to scipy':>20}")
    for name, t, v in (
        ("scipy sqrtm (pytorch-fid)", t_scipy, v_scipy),
        ("videolavit eigh (ours)", t_ours, v_ours),
        ("torchmetrics eigvals", t_tm, v_tm),
    ):
        print(f"{name:<28}{t * 1e3:>10.1f}{t / t_scipy:>14.2f}x{abs(v - v_scipy) / abs(v_scipy):>20.2e}")


if __name__ == "__main__":
    main()
