"""conf/paper_results.yaml: every printed number has a source, rows fill their table, Video-LaVIT's values match the paper."""

from __future__ import annotations

import pytest

from videolavit.metrics.paper_results import load_paper_results, paper_cells, paper_value

PAPER = "2402.03161v3"
REQUIRED_TABLES = {2, 4, 6, 7}


@pytest.fixture(scope="module")
def results():
    return load_paper_results()


def test_required_tables_are_present_with_sources(results):
    assert results["paper"]["arxiv"] == PAPER
    numbers = {table["source"]["table"] for table in results["tables"].values()}
    assert REQUIRED_TABLES <= numbers
    for key, table in results["tables"].items():
        assert table["source"]["arxiv"] == PAPER, key
        assert isinstance(table["source"]["table"], int) and table["title"], key


def test_columns_are_laid_out_for_a_report(results):
    for key, table in results["tables"].items():
        column_keys = [c["key"] for c in table["columns"]]
        assert len(column_keys) == len(set(column_keys)), key
        for column in table["columns"]:
            assert column["name"] and column["kind"] in {"number", "text", "bool"}, (key, column)
            if column["kind"] == "number":
                assert column["direction"] in {"up", "down"}, (key, column)
                assert isinstance(column["decimals"], int), (key, column)


def test_every_row_has_exactly_its_tables_columns(results):
    for key, table in results["tables"].items():
        columns = {c["key"]: c["kind"] for c in table["columns"]}
        row_keys = [row["key"] for row in table["rows"]]
        assert len(row_keys) == len(set(row_keys)), key
        assert sum(bool(row.get("headline")) for row in table["rows"]) == 1, key
        for row in table["rows"]:
            assert set(row["values"]) == set(columns), (key, row["key"])
            assert set(row.get("uncertain") or {}) <= set(columns), (key, row["key"])
            assert set(row.get("seen_in_training") or []) <= set(columns), (key, row["key"])
            for column, value in row["values"].items():
                expected = {"number": (int, float), "text": str, "bool": bool}[columns[column]]
                assert value is None or (isinstance(value, expected) and not (
                    columns[column] == "number" and isinstance(value, bool))), (key, row["key"], column, value)


def test_every_number_has_a_full_source(results):
    cells = paper_cells(results)
    numbers = [c for c in cells if c["kind"] == "number" and c["value"] is not None]
    assert len(numbers) > 150
    for cell in cells:
        source = cell["source"]
        assert source["arxiv"] == PAPER and source["table"] and source["row"] and source["column"], cell


# Spot checks copied from the paper's tables (arXiv 2402.03161v3).
SPOT_CHECKS = [
    ("t2_video_qa", "video_lavit", "msvd_acc", 73.2),
    ("t2_video_qa", "video_lavit", "msvd_score", 3.9),
    ("t2_video_qa", "video_lavit", "msrvtt_acc", 59.3),
    ("t2_video_qa", "video_lavit", "msrvtt_score", 3.3),
    ("t2_video_qa", "video_lavit", "activitynet_acc", 50.1),
    ("t2_video_qa", "video_lavit", "activitynet_score", 3.3),
    ("t2_video_qa", "frozenbilm", "msvd_score", None),
    ("t2_video_qa", "video_llava", "msrvtt_score", 3.5),
    ("t4_text_to_video", "video_lavit", "clipsim", 0.3012),
    ("t4_text_to_video", "video_lavit", "msrvtt_fvd", 188.36),
    ("t4_text_to_video", "video_lavit", "msrvtt_fid", 11.27),
    ("t4_text_to_video", "video_lavit", "ucf_is", 44.26),
    ("t4_text_to_video", "video_lavit", "ucf_fvd", 280.57),
    ("t4_text_to_video", "cogvideo", "msrvtt_fvd", 1294),
    ("t4_text_to_video", "svd", "ucf_fvd", 242.02),
    ("t4_text_to_video", "pyoco", "clipsim", None),
    ("t6_motion_ablation", "without_motion", "msvd_acc", 67.3),
    ("t6_motion_ablation", "without_motion", "ucf_fvd", 442.80),
    ("t6_motion_ablation", "with_motion", "ucf_is", 44.26),
    ("t7_motion_token_count", "n256", "msvd_acc", 69.2),
    ("t7_motion_token_count", "n256", "ucf_fvd", 281.24),
    ("t7_motion_token_count", "n135", "activitynet_acc", 50.1),
    ("t10_svd_initialisation", "with_svd_init", "msrvtt_fvd", 169.51),
    ("t5_long_video", "video_lavit", "kvd", 4.94),
    ("t1_image_understanding", "video_lavit", "mme", 1551.8),
]


@pytest.mark.parametrize(("table", "row", "column", "value"), SPOT_CHECKS)
def test_spot_checks_match_the_paper(results, table, row, column, value):
    assert paper_value(table, row, column, results) == value


def test_headline_rows_agree_across_tables(results):
    t2 = lambda col: paper_value("t2_video_qa", "video_lavit", col, results)  # noqa: E731
    t4 = lambda col: paper_value("t4_text_to_video", "video_lavit", col, results)  # noqa: E731
    for table in ("t6_motion_ablation", "t7_motion_token_count"):
        headline = next(r for r in results["tables"][table]["rows"] if r.get("headline"))["values"]
        assert headline["msvd_acc"] == t2("msvd_acc") and headline["activitynet_acc"] == t2("activitynet_acc")
        assert headline["ucf_is"] == t4("ucf_is") and headline["ucf_fvd"] == t4("ucf_fvd")


def test_question_mark_cells_are_flagged_uncertain(results):
    flamingo = next(r for r in results["tables"]["t1_image_understanding"]["rows"] if r["key"] == "flamingo")
    assert flamingo["values"]["mm_vet"] is None and "mm_vet" in flamingo["uncertain"]
    composer = next(r for r in results["tables"]["t4_text_to_video"]["rows"] if r["key"] == "videocomposer")
    assert "ucf_fvd" in composer["uncertain"]


def test_unknown_cell_names_what_is_missing(results):
    with pytest.raises(KeyError, match="no_such_row"):
        paper_value("t4_text_to_video", "no_such_row", "ucf_fvd", results)
