"""MLflow tracking: one run per stage invocation, with the flattened config as params and provenance tags.

The active run is process-global (``active()``), so a stage can log artifacts and hand its run id to Lightning's
``MLFlowLogger`` without threading a handle through every call. With ``tracking.enabled=false`` every call is a no-op.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

from videolavit.errors import VideolavitError

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
        # DVC rewrites dvc.lock (and the stages their metrics) between the stages of one `dvc repro`: not a code change.
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", *NOT_DIRTY],
                               capture_output=True, text=True)
        return sha + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


NOT_DIRTY = (":(exclude)dvc.lock", ":(exclude)metrics", ":(exclude)params.yaml", ":(exclude)params.effective.yaml")
HASH_WHOLE_FILES_UP_TO = 64 << 20  # bigger dependency files are identified by size and mtime (a data shard)


def dvc_lock_hash(stage: str, dvc_yaml: str = "dvc.yaml") -> Optional[str]:
    """A short hash of the stage's command, dependencies and params as they are now (what DVC will record in dvc.lock
    after this run; dvc.lock itself still holds the previous run's)."""
    path = Path(dvc_yaml)
    if not path.is_file():
        return None
    try:
        import yaml

        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        entry = (yaml.load(path.read_text(), Loader=loader) or {}).get("stages", {}).get(stage)
        if entry is None:
            return None
        h = hashlib.sha256(repr((entry.get("cmd"), entry.get("params"))).encode())
        for dep in sorted(str(d) for d in entry.get("deps") or []):
            h.update(dep.encode())
            _hash_path(path.parent / dep, h)
        params = path.parent / "params.yaml"
        if entry.get("params") and params.is_file():
            h.update(params.read_bytes())
    except Exception:
        return None
    return h.hexdigest()[:16]


def _hash_path(path: Path, h: Any) -> None:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path] if path.is_file() else []
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(path) if path.is_dir() else ''}:{st.st_size}".encode())
        if st.st_size <= HASH_WHOLE_FILES_UP_TO:
            h.update(hashlib.md5(f.read_bytes()).digest())
        else:
            h.update(str(st.st_mtime_ns).encode())


def dvc_experiment() -> Optional[str]:
    """The DVC experiment this process runs in (``dvc exp run`` sets DVC_EXP_NAME for its stages), else None."""
    return os.environ.get("DVC_EXP_NAME") or None


EXPERIMENT_KIND_TAG = "mlflow.experimentKind"  # MLflow 3's UI opens a "custom_model_development" experiment on runs


def mark_training_experiment(client: Any, experiment_id: str) -> None:
    """Tag the experiment as model training (unless someone set a kind), so MLflow 3 does not open on GenAI traces."""
    try:
        tags = client.get_experiment(experiment_id).tags or {}
        if EXPERIMENT_KIND_TAG not in tags:
            client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, "custom_model_development")
    except Exception:  # a read-only or older server: the kind is cosmetic
        pass


def relocate_artifact_roots(uri: str) -> int:
    """Point a SQLite store's local artifact folders at ``<the store's folder>/mlruns`` when the project was moved or
    copied: MLflow records absolute paths (``/old/project/mlruns/<exp>``), so a copy would read and write the original
    folder's artifacts. Only locations of MLflow's default layout (``.../mlruns/<experiment id>``) whose folder came
    along (``<store folder>/mlruns/<id>`` exists) are rewritten, for the experiment and its runs; returns how many."""
    import sqlite3

    db = _sqlite_path(uri)
    if db is None or not db.is_file():
        return 0
    root = db.resolve().parent / "mlruns"
    from filelock import FileLock

    with FileLock(str(db) + ".lock", timeout=600), contextlib.closing(sqlite3.connect(str(db), timeout=60)) as con:
        try:
            rows = con.execute("SELECT experiment_id, artifact_location FROM experiments").fetchall()
        except sqlite3.DatabaseError:  # not an MLflow store (yet): nothing to relocate
            return 0
        moved = 0
        for exp_id, location in rows:
            path = str(location or "")
            path = path[len("file://") :] if path.startswith("file://") else path
            old = Path(path)
            if not old.is_absolute() or old.name != str(exp_id) or old.parent.name != "mlruns" or old.parent == root:
                continue
            if not (root / str(exp_id)).is_dir():  # artifacts kept elsewhere on purpose (not moved with the store)
                continue
            new = str(root / str(exp_id))
            with con:
                con.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?", (new, exp_id))
                con.execute("UPDATE runs SET artifact_uri = ? || substr(artifact_uri, ?) WHERE experiment_id = ? "
                            "AND substr(artifact_uri, 1, ?) = ?",
                            (new, len(str(location)) + 1, exp_id, len(str(location)), str(location)))
            moved += 1
        return moved


def run_identity(stage: str, profile: str, run_name: Optional[str]) -> tuple[str, dict[str, str]]:
    """The run's name and tags naming the DVC experiment: ``<stage>-<profile>`` or ``<stage>-<profile>@<exp>``."""
    exp = dvc_experiment()
    tags = {"dvc.experiment": exp} if exp else {}
    if os.environ.get("DVC_EXP_BASELINE_REV"):
        tags["dvc.baseline_rev"] = os.environ["DVC_EXP_BASELINE_REV"]
    name = run_name or f"{stage}-{profile}" + (f"@{exp}" if exp else "")
    return name, tags


class Run:
    """A thin handle on one MLflow run (or a no-op stand-in when tracking is disabled)."""

    def __init__(self, run_id: Optional[str], experiment_id: Optional[str], uri: Optional[str]):
        self.run_id = run_id
        self.experiment_id = experiment_id
        self.uri = uri

    @property
    def enabled(self) -> bool:
        return self.run_id is not None

    def client(self):
        import mlflow

        return mlflow.MlflowClient(self.uri)

    def log_metrics(self, metrics: Mapping[str, float], step: Optional[int] = None) -> None:
        if not self.enabled:
            return
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        clean = [Metric(k, float(v), now, step or 0) for k, v in metrics.items() if v is not None and _is_number(v)]
        for i in range(0, len(clean), 1000):  # MLflow caps a batch at 1000 metrics
            self.client().log_batch(self.run_id, metrics=clean[i : i + 1000])

    def log_params(self, params: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        from mlflow.entities import Param

        items = [Param(k, "" if v is None else str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow caps a batch at 100 params
            self.client().log_batch(self.run_id, params=items[i : i + 100])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        from mlflow.entities import RunTag

        items = [RunTag(k, "" if v is None else str(v)) for k, v in tags.items()]
        for i in range(0, len(items), 100):
            self.client().log_batch(self.run_id, tags=items[i : i + 100])

    def log_artifact(self, path: str | os.PathLike, artifact_path: Optional[str] = None) -> None:
        if not self.enabled:
            return
        p = Path(path)
        client = self.client()
        if p.is_dir():
            client.log_artifacts(self.run_id, str(p), artifact_path)
        else:
            client.log_artifact(self.run_id, str(p), artifact_path)


    def metric_histories(self) -> dict[str, list[tuple[int, float]]]:
        """Every metric the run logged: ``{key: [(step, value), ...]}`` by step (the last value of a repeated step)."""
        if not self.enabled:
            return {}
        client = self.client()
        keys = sorted(client.get_run(self.run_id).data.metrics)
        return {k: sorted({m.step: m.value for m in client.get_metric_history(self.run_id, k)}.items()) for k in keys}

    def end(self, status: str) -> None:
        """Terminate the run: FINISHED, FAILED or KILLED."""
        if self.enabled:
            self.client().set_terminated(self.run_id, status)


class TrackingError(VideolavitError):
    """The MLflow side of a run failed (e.g. its helper process died)."""


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
    """Open one MLflow run for ``stage``: config as params, tags git sha / stage / profile / dvc.lock hash / PID.

    The run ends FINISHED on success, KILLED when a signal stopped the stage, FAILED when it raised (the exception
    propagates). Runs of this stage left RUNNING by a process that no longer exists are marked KILLED first. After
    ``tracking_worker.prestart`` for this stage, the MLflow side runs in that helper process.
    """
    global _ACTIVE, _PRESTARTED
    from videolavit.config import to_flat_dict

    if not cfg.tracking.enabled:
        previous, _ACTIVE = _ACTIVE, Run(None, None, None)
        try:
            yield _ACTIVE
        finally:
            _ACTIVE = previous
        return

    all_tags = run_tags(cfg, stage, tags, nested)
    params = {k: "" if v is None else str(v)[:6000] for k, v in to_flat_dict(cfg).items()}
    worker, _PRESTARTED = (_PRESTARTED[1] if _PRESTARTED and _PRESTARTED[0] == stage and not nested else None), None
    if worker is not None:  # a tracking_worker.Worker: its create_run answers a Run whose calls go to the helper
        run: Run = worker.create_run(stage, all_tags, params, tracking_uri(cfg))
    else:
        uri = tracking_uri(cfg)
        relocate_artifact_roots(uri)  # before the store is used: a copied project's artifacts stay in the copy
        client, experiment_id = open_store(uri, cfg.tracking.experiment)
        mark_training_experiment(client, experiment_id)
        run = create_run(client, experiment_id, uri, stage, all_tags, params)
    previous, _ACTIVE = _ACTIVE, run
    status = "FAILED"
    try:
        yield run
        status = "FINISHED"
    except BaseException as exc:
        if _stopped_by_signal(exc):
            status = "KILLED"
        raise
    finally:
        _ACTIVE = previous
        run.end(status)


def run_tags(cfg: Any, stage: str, tags: Optional[Mapping[str, Any]] = None, nested: bool = False) -> dict[str, str]:
    """The run's tags but ``dvc_lock_hash`` (added where the run is created): provenance, process, DVC experiment."""
    sha = git_sha()
    all_tags = {
        "videolavit.stage": stage,
        "videolavit.profile": cfg.profile,
        "videolavit.corpus": cfg.corpus.source,
        "mlflow.source.git.commit": sha,
        "git_sha": sha,
        "mlflow.source.name": os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python",
        "mlflow.user": _user(),
        **process_tags(),
    }
    if nested and _ACTIVE is not None and _ACTIVE.enabled:
        all_tags["mlflow.parentRunId"] = _ACTIVE.run_id
    run_name, exp_tags = run_identity(stage, cfg.profile, cfg.tracking.run_name)
    all_tags.update(exp_tags)
    all_tags.update(tags or {})
    all_tags.setdefault("mlflow.runName", run_name)
    return {k: "" if v is None else str(v) for k, v in all_tags.items()}


def create_run(client: Any, experiment_id: str, uri: str, stage: str, tags: Mapping[str, str],
               params: Mapping[str, str]) -> Run:
    """Mark this stage's dead runs KILLED, then create the run with its tags (+ ``dvc_lock_hash``) and params."""
    from mlflow.entities import Param

    mark_dead_runs_killed(client, experiment_id, stage)
    tags = dict(tags)
    lock = dvc_lock_hash(stage)
    if lock:
        tags["dvc_lock_hash"] = lock
    # The client API, not mlflow.start_run: the fluent call probes Databricks/IPython/git context (~0.3 s) and sets
    # tags one transaction each; here the run and its tags are one insert and the params ~4 batches.
    mlrun = client.create_run(experiment_id, run_name=tags.get("mlflow.runName"), tags=tags)
    items = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(items), 100):  # MLflow caps a batch at 100 params
        client.log_batch(mlrun.info.run_id, params=items[i : i + 100])
    return Run(mlrun.info.run_id, experiment_id, uri)


_PRESTARTED: Optional[tuple[str, Any]] = None  # (stage, tracking_worker.Worker): set by tracking_worker.prestart


def _stopped_by_signal(exc: BaseException) -> bool:
    from videolavit.errors import StageInterrupted

    return isinstance(exc, (StageInterrupted, KeyboardInterrupt, SystemExit))


def _user() -> str:
    try:
        import getpass

        return getpass.getuser()
    except Exception:  # no passwd entry (some containers)
        return "unknown"


def process_tags() -> dict[str, str]:
    """Host, PID and the PID's start time: enough to tell later whether the process behind a RUNNING run is alive."""
    return {"videolavit.host": socket.gethostname(), "videolavit.pid": str(os.getpid()), "videolavit.pid_start": str(_start_time(os.getpid()))}


def _start_time(pid: int) -> Optional[float]:
    try:
        import psutil

        return round(psutil.Process(pid).create_time(), 2)
    except Exception:  # no such process (or psutil cannot see it)
        return None


def process_alive(pid: int, start_time: Optional[str]) -> bool:
    """Whether ``pid`` runs and is the same process (same start time: PIDs are reused)."""
    if pid <= 0:
        return False
    now = _start_time(pid)
    if now is None:
        return False
    try:
        return start_time in (None, "", "None") or abs(float(start_time) - now) < 1.0
    except ValueError:
        return True


def mark_dead_runs_killed(client: Any, experiment_id: str, stage: str) -> list[str]:
    """Runs of ``stage`` still RUNNING whose process on this host is gone (SIGKILL, OOM killer, power loss) → KILLED."""
    from mlflow.entities import RunStatus

    host = socket.gethostname()
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"attributes.status = 'RUNNING' and tags.`videolavit.stage` = '{stage}' and tags.`videolavit.host` = '{host}'",
        max_results=1000,
    )
    killed = []
    for r in runs:
        pid = r.data.tags.get("videolavit.pid", "")
        if pid.isdigit() and not process_alive(int(pid), r.data.tags.get("videolavit.pid_start")):
            client.set_terminated(r.info.run_id, RunStatus.to_string(RunStatus.KILLED))
            client.set_tag(r.info.run_id, "videolavit.killed_reason", f"process {pid} on {host} was gone when the next {stage} run started")
            killed.append(r.info.run_id)
    return killed


def _sqlite_path(uri: str) -> Optional[Path]:
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return None
    path = uri[len(prefix) :].split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)


def open_store(uri: str, experiment: str) -> tuple[Any, str]:
    """An ``MlflowClient`` on ``uri`` and the id of ``experiment`` (created if absent), safe when many stages start at
    once: for a SQLite store, creating its tables and the experiment happens under a file lock beside the database
    (concurrent first use otherwise races alembic's migrations and corrupts the store)."""
    import logging

    import mlflow
    import mlflow.store.tracking.sqlalchemy_store  # ~0.5 s of imports, no DB access: done before taking the lock

    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    db = _sqlite_path(uri)
    guard: Any = contextlib.nullcontext()
    if db is not None:
        from filelock import FileLock

        db.parent.mkdir(parents=True, exist_ok=True)
        guard = FileLock(str(db) + ".lock", timeout=600)
    with guard:
        client = mlflow.MlflowClient(uri)
        found = client.get_experiment_by_name(experiment)
        if found is None:
            try:
                experiment_id = client.create_experiment(experiment)
            except mlflow.exceptions.MlflowException:  # a server store: another client created it meanwhile
                found = client.get_experiment_by_name(experiment)
                if found is None:
                    raise
                experiment_id = found.experiment_id
        elif found.lifecycle_stage == "deleted":
            from videolavit.errors import ConfigError

            raise ConfigError(
                f"tracking.experiment: experiment '{experiment}' is deleted in {uri}; restore it "
                f"(`mlflow experiments restore --experiment-id {found.experiment_id}`) or choose another name"
            )
        else:
            experiment_id = found.experiment_id
    return client, experiment_id
