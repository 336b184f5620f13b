"""Per-stage start-up: what every ``videolavit <stage>`` pays before and around its work, this tree vs an older commit.

    python benchmarks/startup.py --old baab90a                       # every stage, 3 runs each, alternating
    python benchmarks/startup.py --old baab90a --stages corpus motion_tokenizer --repeat 5

Each run is a fresh process doing what the CLI does for a stage, with the work left out: the CLI's first steps
(whatever this version's ``cli.main`` runs before parsing), ``load_config``, importing ``videolavit.stages.<stage>``
(torch, Lightning, ... as that stage imports them), then one MLflow run opened and closed with one metric, on a SQLite
store made once beforehand (as after a pipeline's first stage). The old commit's ``src/`` is extracted with ``git
archive`` and put first on PYTHONPATH. The two versions alternate run by run, so load from other processes hits both
alike; the table gives medians of wall and CPU seconds (user + sys: of the run with its MLflow helper process, and of
the stage process alone) and the ratios new / old. With 2 idle cores the stage process's CPU seconds are its critical
path (the helper works on the other core); on a loaded machine quote CPU seconds, wall there is mostly waiting.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("corpus", "decompose", "motion_tokenizer", "visual_tokenizer", "tokenize", "detokenizer", "pretrain",
          "instruct", "evaluators", "evaluate", "report")

CHILD = r"""
import importlib, json, sys, time
stage, uri = sys.argv[1], sys.argv[2]
import videolavit.cli as cli
try:
    from videolavit import lean_imports
    lean_imports.install()
except ImportError:  # a version before lean imports
    pass
from videolavit import tracking
from videolavit.config import load_config
cfg = load_config(stage=stage, overrides=[f"tracking.uri={uri}"])
try:  # a version that opens the MLflow run in a helper process, beside the imports
    from videolavit.tracking_worker import prestart
    prestart(cfg, stage)
except ImportError:
    pass
importlib.import_module(f"videolavit.stages.{stage}")
with tracking.start_run(cfg, stage) as run:
    run.log_metrics({"startup/probe": 1.0})
import resource
me = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"modules": len(sys.modules), "self_cpu": me.ru_utime + me.ru_stime}))
"""


def extract(rev: str, into: Path) -> Path:
    """``src/`` of ``rev`` (git archive), without touching the work tree or the index."""
    archive = into / "src.tar"
    with open(archive, "wb") as fh:
        subprocess.run(["git", "-C", str(ROOT), "archive", rev, "src"], stdout=fh, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def run_child(src: Path, stage: str, uri: str, cwd: Path) -> tuple[float, float, float]:
    """(wall, CPU = user + sys of the process and its children, CPU of the stage process alone) seconds of one run."""
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD, stage, uri], cwd=cwd, env=env, capture_output=True, text=True,
                          check=False)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{stage} under {src}: exit {done.returncode}\n{done.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, json.loads(done.stdout.strip().splitlines()[-1])["self_cpu"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", required=True, help="the commit to compare against (e.g. baab90a)")
    ap.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--project", default=str(ROOT),
                    help="the folder runs start in (its dvc.yaml and git state feed the run's tags); default this tree")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="startup-bench-") as tmp:
        tmp_path = Path(tmp)
        versions = {"old": extract(args.old, tmp_path), "new": ROOT / "src"}
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        run_child(versions["old"], "corpus", uri, Path(args.project))  # the store's tables, once (old schema code)
        rows = []
        for stage in args.stages:
            got: dict[str, list[tuple[float, float, float]]] = {"old": [], "new": []}
            for _ in range(args.repeat):
                for name in ("old", "new"):
                    got[name].append(run_child(versions[name], stage, uri, Path(args.project)))
            med = {n: tuple(statistics.median(r[i] for r in v) for i in range(3)) for n, v in got.items()}
            rows.append((stage, med["old"], med["new"]))
            o, n = med["old"], med["new"]
            print(f"{stage:17s} old wall {o[0]:6.2f} cpu {o[1]:5.2f} (stage {o[2]:5.2f}) | new wall {n[0]:6.2f} "
                  f"cpu {n[1]:5.2f} (stage {n[2]:5.2f}) | new/old wall {n[0] / o[0]:.2f} cpu {n[1] / o[1]:.2f} "
                  f"stage cpu {n[2] / o[2]:.2f}", flush=True)
    total = {f"{v} {what}": sum(r[i][j] for r in rows) for v, i in (("old", 1), ("new", 2))
             for what, j in (("wall", 0), ("cpu", 1), ("stage cpu", 2))}
    print(json.dumps({"old": args.old, "repeat": args.repeat, "stages": len(rows),
                      "sum_seconds": {k: round(v, 2) for k, v in total.items()},
                      "ratio_new_old": {w: round(total[f"new {w}"] / total[f"old {w}"], 3)
                                        for w in ("wall", "cpu", "stage cpu")}}))


if __name__ == "__main__":
    main()
