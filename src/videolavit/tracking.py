"""MLflow tracking: one run per stage invocation, with the flattened config as params and provenance tags.

The active run is process-global (``active()``), so a stage can log artifacts and hand its run id to Lightning's
``MLFlowLogger`` without threading a handle through every call. With ``tracking.enabled=false`` every call is a no-op.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

DEFAULT_URI = "sqlite:///mlflow.db"
_ACTIVE: Optional["Run"] = None


def tracking_uri(cfg: Any = None) -> str:
    """Config ``tracking.uri``, else env ``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` (project root)."""
    uri = None
    if cfg is not None:
        uri = cfg.tracking.uri
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        sha = out.stdout.strip()
        if out.returncode != 0 or not sha:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
        return sha + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def dvc_lock_hash(stage: str, lock_path: str = "dvc.lock") -> Optional[str]:
    """A short hash of this stage's entry in dvc.lock (what DVC last recorded for its deps and outs)."""
    path = Path(lock_path)
    if not path.is_file():
        return None
    try:
        import yaml

        entry = (yaml.safe_load(path.read_text()) or {}).get("stages", {}).get(stage)
    except Exception:
        return None
    if entry is None:
        return None
    return hashlib.sha256(repr(entry).encode()).hexdigest()[:16]


class Run:
    """A thin handle on one MLflow run (or a no-op stand-in when tracking is disabled)."""

    def __init__(self, run_id: Optional[str], experiment_id: Optional[str], uri: Optional[str]):
        self.run_id = run_id
        self.experiment_id = experiment_id
        self.uri = uri

    @property
    def enabled(self) -> bool:
        return self.run_id is not None

    def log_metrics(self, metrics: Mapping[str, float], step: Optional[int] = None) -> None:
        if not self.enabled:
            return
        import mlflow

        clean = {k: float(v) for k, v in metrics.items() if v is not None and _is_number(v)}
        if clean:
            mlflow.log_metrics(clean, step=step, run_id=self.run_id)

    def log_params(self, params: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        import mlflow

        items = [(k, "" if v is None else str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow caps a batch at 100 params
            mlflow.log_params(dict(items[i : i + 100]), run_id=self.run_id)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        import mlflow

        client = mlflow.MlflowClient(self.uri)
        for k, v in tags.items():
            client.set_tag(self.run_id, k, "" if v is None else str(v))

    def log_artifact(self, path: str | os.PathLike, artifact_path: Optional[str] = None) -> None:
        if not self.enabled:
            return
        import mlflow

        p = Path(path)
        client = mlflow.MlflowClient(self.uri)
        if p.is_dir():
            client.log_artifacts(self.run_id, str(p), artifact_path)
        else:
            client.log_artifact(self.run_id, str(p), artifact_path)


def _is_number(v: Any) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


def active() -> Run:
    """The run of the stage being executed, or a no-op run outside one."""
    return _ACTIVE if _ACTIVE is not None else Run(None, None, None)


@contextlib.contextmanager
def start_run(cfg: Any, stage: str, tags: Optional[Mapping[str, Any]] = None, nested: bool = False) -> Iterator[Run]:
    """Open one MLflow run for ``stage``: config as params, tags git sha / stage / profile / dvc.lock hash.

    The run ends FINISHED on success and FAILED when the stage raises (the exception propagates).
    """
    global _ACTIVE
    from videolavit.config import to_flat_dict

    if not cfg.tracking.enabled:
        previous, _ACTIVE = _ACTIVE, Run(None, None, None)
        try:
            yield _ACTIVE
        finally:
            _ACTIVE = previous
        return

    import logging

    import mlflow

    logging.getLogger("alembic").setLevel(logging.WARNING)
    uri = tracking_uri(cfg)
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.set_experiment(cfg.tracking.experiment)
    all_tags = {
        "videolavit.stage": stage,
        "videolavit.profile": cfg.profile,
        "videolavit.corpus": cfg.corpus.source,
        "mlflow.source.git.commit": git_sha(),
        "git_sha": git_sha(),
    }
    lock = dvc_lock_hash(stage)
    if lock:
        all_tags["dvc_lock_hash"] = lock
    all_tags.update(tags or {})
    run_name = cfg.tracking.run_name or f"{stage}-{cfg.profile}"
    mlrun = mlflow.start_run(experiment_id=experiment.experiment_id, run_name=run_name, nested=nested)
    run = Run(mlrun.info.run_id, experiment.experiment_id, uri)
    previous, _ACTIVE = _ACTIVE, run
    status = "FAILED"
    try:
        run.set_tags(all_tags)
        run.log_params(to_flat_dict(cfg))
        yield run
        status = "FINISHED"
    finally:
        _ACTIVE = previous
        mlflow.end_run(status=status)
