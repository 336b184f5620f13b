"""The MLflow runs a report is made of: latest FINISHED run per stage, motion-token ablations, sweep trials.

Conventions the stages follow (tags set by ``videolavit.tracking.start_run`` unless noted):
``videolavit.stage``, ``videolavit.profile``, ``videolavit.corpus``, ``git_sha``; sweep trials carry ``optuna.study``,
``optuna.trial`` and ``optuna.mode``; an ablation run of the evaluate stage carries ``videolavit.ablation`` (e.g.
``tokens_<N>`` when its motion tokenizer grid differs from the profile's); every evaluate run logs
``tokens/motion_per_clip`` (N, paper Table 7). A "main" run is one that is neither a sweep trial nor an ablation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

ABLATION_TAG = "videolavit.ablation"
MOTION_TOKENS_METRIC = "tokens/motion_per_clip"
STUDY_TAG = "optuna.study"
TRIAL_TAG = "optuna.trial"
BASELINE = "baseline"  # the runs of a plain `dvc repro` (no DVC_EXP_NAME)


@dataclass
class RunRecord:
    """One FINISHED MLflow run: identity, provenance tags and its latest metric values."""

    run_id: str
    name: str
    stage: Optional[str]
    start_time: int  # ms since the epoch
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def profile(self) -> Optional[str]:
        return self.tags.get("videolavit.profile")

    @property
    def corpus(self) -> Optional[str]:
        return self.tags.get("videolavit.corpus")

    @property
    def is_main(self) -> bool:
        return STUDY_TAG not in self.tags and ABLATION_TAG not in self.tags

    @property
    def motion_tokens(self) -> Optional[int]:
        """N, the motion tokens per clip this run used: the metric, else an ablation tag ``tokens_<N>``."""
        value = self.metrics.get(MOTION_TOKENS_METRIC)
        if value is None and self.tags.get(ABLATION_TAG, "").startswith("tokens_"):
            value = self.tags[ABLATION_TAG][len("tokens_") :]
        try:
            return int(float(value)) if value is not None else None
        except ValueError:
            return None

    @property
    def label(self) -> str:
        return f"{self.name} ({self.run_id[:8]})"

    @property
    def experiment(self) -> str:
        """The DVC experiment the run belongs to (tag ``dvc.experiment``), ``baseline`` for a plain ``dvc repro``."""
        return self.tags.get("dvc.experiment") or BASELINE


class RunIndex:
    """FINISHED runs of one experiment, newest first, with the look-ups the report tables need."""

    def __init__(self, runs: list[RunRecord], uri: str = "", experiment: str = ""):
        self.runs = sorted(runs, key=lambda r: r.start_time, reverse=True)
        self.uri, self.experiment = uri, experiment

    def latest(self, stage: str, main: bool = True) -> Optional[RunRecord]:
        for run in self.runs:
            if run.stage == stage and (run.is_main or not main):
                return run
        return None

    def per_experiment(self, stage: str, limit: int = 8) -> list[tuple[str, RunRecord]]:
        """The latest main run of ``stage`` per DVC experiment under the latest run's protocol (profile and corpus),
        the baseline first, then experiments newest first: one table row each, so an experiment never hides the
        baseline."""
        latest = self.latest(stage)
        if latest is None:
            return []
        chosen: dict[str, RunRecord] = {}
        for run in self.runs:
            same = run.profile == latest.profile and run.corpus == latest.corpus
            if run.stage == stage and run.is_main and same and run.experiment not in chosen:
                chosen[run.experiment] = run
        rows = sorted(chosen.items(), key=lambda item: (item[0] != BASELINE, -item[1].start_time))
        return rows[:limit]

    def by_motion_tokens(self, stage: str = "evaluate") -> list[tuple[int, RunRecord]]:
        """The latest run per distinct N (main and ablation runs alike), largest N first as in the paper's Table 7."""
        chosen: dict[int, RunRecord] = {}
        for run in self.runs:
            n = run.motion_tokens
            if run.stage == stage and STUDY_TAG not in run.tags and n is not None and n not in chosen:
                chosen[n] = run
        return sorted(chosen.items(), reverse=True)

    def latest_study(self, mode: str = "multi") -> tuple[Optional[str], list[RunRecord]]:
        """The most recent Optuna study of ``mode`` and its finished trial runs."""
        for run in self.runs:
            if STUDY_TAG in run.tags and run.tags.get("optuna.mode", "multi") == mode:
                study = run.tags[STUDY_TAG]  # trials only: the study's parent run carries the tag too
                return study, [r for r in self.runs if r.tags.get(STUDY_TAG) == study and TRIAL_TAG in r.tags]
        return None, []


def _sqlite_file_missing(uri: str) -> bool:
    # SQLAlchemy: what follows "sqlite:///" is the path, relative (sqlite:///mlflow.db) or absolute (sqlite:////tmp/x.db)
    prefix = "sqlite:///"
    return uri.startswith(prefix) and not Path(uri[len(prefix) :].split("?", 1)[0]).is_file()


def load_runs(uri: str, experiment: str) -> RunIndex:
    """Every FINISHED run of ``experiment`` at ``uri``; an absent store or experiment gives an empty index."""
    if _sqlite_file_missing(uri):  # reading must not create an empty store as a side effect
        return RunIndex([], uri, experiment)
    import logging

    import mlflow

    logging.getLogger("alembic").setLevel(logging.WARNING)
    client = mlflow.MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return RunIndex([], uri, experiment)
    runs, token = [], None
    while True:
        page = client.search_runs(
            [found.experiment_id], filter_string="attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"], max_results=1000, page_token=token,
        )
        for run in page:
            tags = dict(run.data.tags)
            runs.append(
                RunRecord(
                    run.info.run_id, tags.get("mlflow.runName", run.info.run_name or run.info.run_id),
                    tags.get("videolavit.stage"), int(run.info.start_time or 0), dict(run.data.metrics), tags,
                )
            )
        token = page.token
        if not token:
            break
    return RunIndex(runs, uri, experiment)


def metric_history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) pairs of one metric of one run, in step order, without the stage's closing summary.

    ``stage_entry`` logs the final metrics without a step (so at step 0) after training has logged its history; such
    a step-0 point newer than every other point is the summary, not the start of the curve.
    """
    import mlflow

    history = mlflow.MlflowClient(uri).get_metric_history(run_id, key)
    latest_trained = max((m.timestamp for m in history if m.step > 0), default=None)
    if latest_trained is not None:
        history = [m for m in history if m.step > 0 or m.timestamp <= latest_trained]
    return sorted((int(m.step), float(m.value)) for m in history)
