"""A stage's MLflow calls in a helper process, started before the stage imports torch and Lightning.

Importing MLflow and its SQLite store costs ~2.3 CPU-seconds per stage (measured with ``benchmarks/startup.py``);
here it runs on the second core while the stage process imports torch and Lightning, and the stage process never
imports MLflow. The CLI starts the helper (:func:`prestart`); ``tracking.start_run`` then asks it
to create the run and every later call of the run (metrics, params, tags, artifacts, curves, the end status) is one
request answered in order, so the store holds what the stage logged when each call returns, as in-process. The helper
ignores SIGINT/SIGTERM (the stage process handles them and ends the run KILLED) and, when the stage process dies
without ending its run (SIGKILL, OOM), marks the run KILLED itself. ``VIDEOLAVIT_TRACKING_WORKER=0`` turns it off.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

from videolavit import tracking


class Worker:
    """The stage process's end of the helper: JSON lines to its stdin, one JSON reply line per request."""

    def __init__(self, prepare: Mapping[str, Any]):
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        # the helper runs this very videolavit (the stage may have found it on a path its environment does not name)
        here = os.path.dirname(os.path.dirname(os.path.abspath(tracking.__file__)))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH", "")) if p)
        self.proc = subprocess.Popen([sys.executable, "-m", "videolavit.tracking_worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1, env=env)
        self.pending = 0
        self.send({"op": "prepare", **prepare})

    def send(self, request: Mapping[str, Any]) -> None:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        self.pending += 1

    def receive(self) -> dict:
        line = self.proc.stdout.readline()
        self.pending -= 1
        if not line:
            code = self.proc.wait()
            raise tracking.TrackingError(f"the MLflow helper process exited ({code}) before answering; see its "
                                         "messages above (VIDEOLAVIT_TRACKING_WORKER=0 runs MLflow in the stage)")
        reply = json.loads(line)
        if "error" in reply:
            from videolavit import errors

            kind = getattr(errors, reply.get("kind", ""), None)
            raise (kind if isinstance(kind, type) and issubclass(kind, errors.VideolavitError) else
                   tracking.TrackingError)(reply["error"])
        return reply

    def call(self, op: str, **kwargs: Any) -> dict:
        while self.pending:  # the prepare reply, if not read yet
            self.receive()
        self.send({"op": op, **kwargs})
        return self.receive()

    def create_run(self, stage: str, tags: Mapping[str, str], params: Mapping[str, str], uri: str) -> WorkerRun:
        opened = self.call("create", stage=stage, tags=dict(tags), params=dict(params))
        return WorkerRun(self, opened["run_id"], opened["experiment_id"], uri)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=120)


class WorkerRun(tracking.Run):
    """A run whose MLflow calls go to the helper process."""

    def __init__(self, worker: Worker, run_id: str, experiment_id: str, uri: str):
        super().__init__(run_id, experiment_id, uri)
        self.worker = worker

    def client(self):
        raise tracking.TrackingError("this run's MLflow client lives in the helper process; use the Run's methods")

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        clean = {k: float(v) for k, v in metrics.items() if v is not None and tracking._is_number(v)}
        if clean:
            self.worker.call("log_metrics", metrics=clean, step=step)

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.worker.call("log_params", params={k: "" if v is None else str(v) for k, v in params.items()})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self.worker.call("set_tags", tags={k: "" if v is None else str(v) for k, v in tags.items()})

    def log_artifact(self, path, artifact_path: str | None = None) -> None:
        self.worker.call("log_artifact", path=os.path.abspath(path), artifact_path=artifact_path)

    def metric_histories(self) -> dict[str, list[tuple[int, float]]]:
        return {k: [(int(s), float(v)) for s, v in h] for k, h in self.worker.call("histories")["histories"].items()}

    def end(self, status: str) -> None:
        try:
            self.worker.call("end", status=status)
        finally:
            self.worker.close()


# no helper for these: check opens no MLflow run, report reads the runs with MLflow in its own process anyway
STAGES_WITHOUT_RUN = ("check", "report")


def prestart(cfg: Any, stage: str) -> bool:
    """Start the helper process for ``stage``'s coming ``tracking.start_run`` (the CLI calls it before importing the
    stage): it imports MLflow and opens the store while this process imports torch. Off with tracking disabled, inside
    an active run, for :data:`STAGES_WITHOUT_RUN`, or with ``VIDEOLAVIT_TRACKING_WORKER=0``; returns whether it started."""
    active = tracking.active()
    if stage in STAGES_WITHOUT_RUN or not cfg.tracking.enabled or active.enabled or tracking._PRESTARTED is not None:
        return False
    if os.environ.get("VIDEOLAVIT_TRACKING_WORKER", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    tracking._PRESTARTED = (stage, Worker({"uri": tracking.tracking_uri(cfg), "experiment": cfg.tracking.experiment}))
    return True


def serve(requests, reply) -> None:
    """Answer requests until ``end`` or EOF (the stage process is gone: its open run is marked KILLED)."""
    state: dict[str, Any] = {}
    run: tracking.Run | None = None
    for line in requests:
        request = json.loads(line)
        op = request.pop("op")
        try:
            if op == "prepare":
                tracking.relocate_artifact_roots(request["uri"])
                client, experiment_id = tracking.open_store(request["uri"], request["experiment"])
                tracking.mark_training_experiment(client, experiment_id)
                state.update(client=client, experiment_id=experiment_id, uri=request["uri"])
                answer: dict = {"ok": True}
            elif op == "create":
                run = tracking.create_run(state["client"], state["experiment_id"], state["uri"], **request)
                answer = {"run_id": run.run_id, "experiment_id": run.experiment_id}
            elif op == "histories":
                answer = {"histories": run.metric_histories()}
            elif op == "end":
                state["client"].set_terminated(run.run_id, request["status"])
                reply.write(json.dumps({"ok": True}) + "\n")
                reply.flush()
                return
            else:  # log_metrics, log_params, set_tags, log_artifact: the in-process Run's own methods
                getattr(run, op)(**request)
                answer = {"ok": True}
        except Exception as exc:  # noqa: BLE001 - answered, so the stage process raises it where it made the call
            from videolavit.errors import VideolavitError

            text = str(exc) if isinstance(exc, VideolavitError) else f"{type(exc).__name__}: {exc}"
            answer = {"error": text, "kind": type(exc).__name__}
        reply.write(json.dumps(answer) + "\n")
        reply.flush()
    if run is not None:  # EOF before `end`: the stage process died without ending its run
        state["client"].set_terminated(run.run_id, "KILLED")
        state["client"].set_tag(run.run_id, "videolavit.killed_reason", "the stage process ended without ending its run")


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the stage process handles them and ends the run itself
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    reply = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # whatever a library prints goes to stderr, not into the replies
    sys.stdout = sys.stderr
    import logging

    for name in ("mlflow.store.db.utils", "mlflow.tracking.fluent", "alembic"):  # as runner.quiet_third_party
        logging.getLogger(name).setLevel(logging.WARNING)
    serve(sys.stdin, reply)


if __name__ == "__main__":
    main()
