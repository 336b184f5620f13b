"""The report stage: paper rows and run rows in tables.md / tables.tex, "—" where a stage has not run, figures."""

from __future__ import annotations

import json
import re

import pytest

from videolavit.report.figures import pareto_front
from videolavit.report.render import MISSING_MD, MISSING_TEX, tex_escape, to_latex, to_markdown
from videolavit.report.runs import RunIndex, RunRecord, load_runs
from videolavit.report.tables import build_tables


def _log_run(store, stage: str, metrics: dict, tags: dict | None = None, history: dict | None = None, name=None) -> str:
    import mlflow

    uri, experiment_name = store
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name(experiment_name)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(experiment_name)
    all_tags = {"videolavit.stage": stage, "videolavit.profile": "tiny", "videolavit.corpus": "synthetic", **(tags or {})}
    run = client.create_run(experiment_id, tags=all_tags, run_name=name or f"{stage}-tiny")
    for key, value in metrics.items():
        client.log_metric(run.info.run_id, key, value)
    for key, values in (history or {}).items():
        for step, value in enumerate(values):
            client.log_metric(run.info.run_id, key, value, step=step * 10)
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


@pytest.fixture(scope="module")
def store_uri():
    # the session's SQLite store from conftest (creating one costs seconds); each test reads its own experiment
    import os

    return os.environ["MLFLOW_TRACKING_URI"]


@pytest.fixture
def store(store_uri, request):
    return store_uri, f"report-{request.node.name[:60]}"


def _run_report(tiny_cfg_factory, store):
    from pathlib import Path

    from videolavit.stages import report

    uri, experiment = store
    cfg = tiny_cfg_factory("tracking.enabled=false", f"tracking.uri={uri}", f"report.experiment={experiment}")
    return report.run(cfg), Path(cfg.paths.reports)


def test_report_renders_paper_rows_run_rows_and_missing_cells(tiny_cfg_factory, store):
    evaluate_id = _log_run(
        store, "evaluate",
        {
            "qa/video_acc": 0.4125, "qa/video_acc_motion": 0.305, "ablation_no_motion/qa/video_acc_motion": 0.25,
            "t2v/fvd_corpus": 12.345, "t2v/clipsim_corpus": 0.41234, "t2v/attribute_acc": 0.5,
            "t2v/attribute_acc_color": 0.3125, "t2v/attribute_acc_tokens_color": 0.4375,
            "tokens/saving": 0.896, "tokens/motion_per_clip": 144, "recon/motion_epe": 0.321,
        },
    )
    n36 = {"qa/video_acc": 0.2, "tokens/motion_per_clip": 36}
    _log_run(store, "evaluate", n36, {"videolavit.ablation": "tokens_36"}, name="n36")
    _log_run(
        store, "motion_tokenizer", {"train/loss": 0.5, "val/epe": 0.2},
        history={"train/loss": [1.0, 0.7, 0.5], "val/epe": [0.4, 0.2]},
    )
    metrics, reports = _run_report(tiny_cfg_factory, store)

    md = (reports / "tables.md").read_text()
    tex = (reports / "tables.tex").read_text()
    for title in ("Zero-shot video question answering", "Zero-shot text-to-video generation",
                  "Ablation: motion tokenization", "Ablation: number of motion tokens N per clip"):
        assert f"## {title}" in md and title in tex
    for table in (2, 4, 6, 7):
        assert f"arXiv 2402.03161v3, Table {table}" in md
    # every table names its paper reference, in both formats
    assert md.count("Paper reference:") == 6 and tex.count("Paper reference:") == 6
    # paper rows as printed, labelled as the paper's and GPT-judged
    assert "| Video-LaVIT (paper) | 7B | 73.2 | 3.9 | 59.3 |" in md
    assert "judged by gpt-3.5-turbo" in md and "188.36" in md and "188.36" in tex
    # run rows: name, profile, corpus; fractions printed as percentages; proxies keep their names
    assert f"evaluate-tiny ({evaluate_id[:8]}) | tiny | synthetic | 41.2 |" in md
    assert "FVD [fvd_corpus, proxy]" not in md and "FVD [corpus, proxy]" in md and "12.35" in md
    assert "CLIPSIM [corpus, proxy]" in md and "0.4123" in md
    # Table 4 per attribute: generated beside the real clips through their own tokens (the detokenizers' part)
    assert "colour (%)" in md and "colour, real clips' own tokens (%)" in md and "direction, chance (%)" in md
    assert "| 31.2 | 43.8 |" in md
    assert "exact match, not comparable to GPT-judged" in md
    assert "| w/o motion | evaluate-tiny" in md and "| 25.0 |" in md  # the no-motion ablation row
    assert "| N=144 | evaluate-tiny" in md and "| N=36 | n36" in md
    # missing values: QA appearance was never logged, the evaluators stage never ran
    assert MISSING_MD in md and MISSING_TEX in tex
    assert "no finished `evaluators` run" in md
    assert f"evaluate-tiny ({evaluate_id[:8]})".replace("_", r"\_") in tex and r"41.2" in tex
    # figures: the training curves of the stage that logged a history
    assert (reports / "figures" / "curves_motion_tokenizer.png").stat().st_size > 1000
    assert "figures/curves_motion_tokenizer.png" in md
    assert metrics["report/run_rows"] == 7  # t2, t4, t6 (×2), t7 (×2), efficiency
    assert metrics["report/figures"] == 1
    assert json.loads((reports.parent / "metrics" / "report.json").read_text())["report/runs_found"] == 3


def test_report_with_no_runs_renders_every_table_with_dashes(tiny_cfg_factory, store):
    metrics, reports = _run_report(tiny_cfg_factory, store)
    md = (reports / "tables.md").read_text()
    assert "no finished `evaluate` run" in md and md.count("Paper reference:") == 6
    assert "| Video-LaVIT (paper) |" in md  # the paper rows are there regardless
    assert metrics["report/run_rows"] == 0 and metrics["report/runs_found"] == 0


def test_missing_store_is_not_created(tmp_path):
    index = load_runs(f"sqlite:///{tmp_path / 'nowhere.db'}", "videolavit")
    assert index.runs == [] and not (tmp_path / "nowhere.db").exists()


def test_latest_main_run_skips_ablations_sweeps_and_older_runs():
    def run(i, stage, metrics=None, **tags):
        metrics = {"tokens/motion_per_clip": 100 + i % 2} if metrics is None else metrics
        return RunRecord(f"id{i}", f"r{i}", stage, start_time=i, metrics=metrics, tags=tags)

    index = RunIndex(
        [run(1, "evaluate"), run(2, "evaluate"), run(3, "evaluate", **{"videolavit.ablation": "tokens_101"}),
         run(4, "evaluate", **{"optuna.study": "s"}), run(5, "evaluate", {}, **{"videolavit.ablation": "tokens_36"})]
    )
    assert index.latest("evaluate").run_id == "id2"
    assert index.latest("evaluate", main=False).run_id == "id5"
    # one row per N, the newest run for each; N from the metric, else from the ablation tag; sweep trials never
    assert [(n, r.run_id) for n, r in index.by_motion_tokens()] == [(101, "id3"), (100, "id2"), (36, "id5")]


def test_renderers_escape_latex_and_mark_missing():
    tables = build_tables(RunIndex([]), __import__("videolavit.metrics.paper_results", fromlist=["x"]).load_paper_results())
    tex = to_latex(tables)
    assert r"\begin{table}" in tex and tex.count(r"\begin{table}") == tex.count(r"\end{table}") == len(tables)
    # outside \label{...} every LaTeX special of the text is escaped (a line-end % is the renderer's own comment)
    outside_labels = re.sub(r"\\label\{[^}]*\}", "", tex)
    assert re.findall(r"(?<!\\)(?:_|#|%(?!\n))", outside_labels) == []
    assert r"no evaluate run logged tokens/motion\_per\_clip" in tex
    assert tex_escape("a_b & 50%") == r"a\_b \& 50\%"
    assert "✓" in to_markdown(tables) and r"$\checkmark$" in tex  # Table 4's Public column


def test_pareto_front_minimizes_both_objectives():
    points = [(1.0, 5.0), (2.0, 2.0), (3.0, 3.0), (5.0, 1.0), (2.0, 2.0)]
    assert pareto_front(points) == [0, 1, 3, 4]


def test_report_draws_pareto_front_of_latest_multi_objective_sweep(tiny_cfg_factory, store):
    for trial, (epe, tokens) in enumerate([(0.3, 144), (0.5, 36), (0.6, 144)]):
        _log_run(
            store, "motion_tokenizer", {"val/epe": epe, "tokens_per_clip": tokens},
            {"optuna.study": "mt-multi", "optuna.trial": str(trial), "optuna.mode": "multi"}, name=f"trial{trial}",
        )
    metrics, reports = _run_report(tiny_cfg_factory, store)
    assert (reports / "figures" / "pareto_mt-multi.png").is_file()
    assert metrics["report/figures"] == 1  # sweep trials are not the stage's main run: no curves from them


def test_metric_history_drops_the_closing_summary_logged_at_step_0(store):
    import mlflow

    from videolavit.report.runs import metric_history

    uri, _ = store
    run_id = _log_run(store, "motion_tokenizer", {})
    client = mlflow.MlflowClient(uri)
    for step, value, ms in ((10, 0.9, 1_000), (20, 0.5, 2_000), (0, 0.5, 3_000)):  # the stage's summary comes last
        client.log_metric(run_id, "train/loss", value, timestamp=ms, step=step)
    assert metric_history(uri, run_id, "train/loss") == [(10, 0.9), (20, 0.5)]


def test_one_row_per_dvc_experiment_keeps_the_baseline_under_one_protocol():
    def run(i, **tags):
        tags = {"videolavit.profile": "tiny", "videolavit.corpus": "synthetic", **tags}
        return RunRecord(f"id{i}", f"r{i}", "evaluate", start_time=i, metrics={"qa/video_acc": i / 10}, tags=tags)

    index = RunIndex([run(1), run(2), run(3, **{"dvc.experiment": "wide"}), run(4, **{"dvc.experiment": "narrow"}),
                      run(5, **{"dvc.experiment": "wide"}), run(6, **{"videolavit.corpus": "webvid"}),
                      run(7, **{"dvc.experiment": "narrow"}, **{"videolavit.corpus": "synthetic"})])
    # the newest run (id7) fixes the protocol (tiny, synthetic): id6 (webvid) is another protocol
    assert [(name, r.run_id) for name, r in index.per_experiment("evaluate")] == [
        ("baseline", "id2"), ("narrow", "id7"), ("wide", "id5")]
    from videolavit.report.tables import experiment_rows

    assert [row[0] for row in experiment_rows(index, "evaluate")] == ["baseline", "narrow", "wide"]
    assert [row[0] for row in experiment_rows(RunIndex([run(1)]), "evaluate")] == ["latest evaluate"]


def test_a_validation_loss_rising_from_its_minimum_is_flagged():
    from videolavit.report.figures import divergence, divergence_flags

    rising = [(0, 3.0), (100, 2.53), (200, 2.8), (300, 3.15)]  # pretrain's tiny run: 2.53 -> 3.15
    assert divergence(rising) == (100, 2.53, 300, 3.15)
    assert divergence([(0, 3.0), (100, 2.53), (200, 2.6)]) is None  # +2.8%: noise, not divergence
    run = RunRecord("id1", "pretrain-tiny", "pretrain", 1, {"val/loss": 3.15, "train/loss": 1.0}, {})
    flags = divergence_flags(RunIndex([run]), ["pretrain"], history=lambda run_id, key: rising)
    assert len(flags) == 1 and "`val/loss` rose 25%" in flags[0] and "step 100" in flags[0]


def test_the_pareto_front_reads_trials_not_the_study_parent_run():
    parent = RunRecord("p", "study", "sweep", 9, {"val/epe": 1.0}, {"optuna.study": "s", "optuna.mode": "multi"})
    trials = [RunRecord(f"t{i}", f"t{i}", "motion_tokenizer", i, {}, {"optuna.study": "s", "optuna.mode": "multi",
                                                                      "optuna.trial": str(i)}) for i in range(2)]
    study, runs = RunIndex([parent, *trials]).latest_study("multi")
    assert study == "s" and sorted(r.run_id for r in runs) == ["t0", "t1"]
