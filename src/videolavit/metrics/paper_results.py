"""The numbers Video-LaVIT (arXiv 2402.03161v3) prints, from ``conf/paper_results.yaml``, with the source of each."""

from __future__ import annotations

from pathlib import Path
from typing import Any

PAPER_RESULTS_PATH = Path(__file__).resolve().parent.parent / "conf" / "paper_results.yaml"


def load_paper_results(path: str | Path | None = None) -> dict[str, Any]:
    """The whole file as plain dicts: ``{"paper": {...}, "tables": {key: {source, title, columns, rows}}}``."""
    import yaml

    with open(path or PAPER_RESULTS_PATH, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def paper_cells(results: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """One record per printed cell: table, row, column, value (None for "-"), uncertain reason, and its source."""
    results = results or load_paper_results()
    cells = []
    for table_key, table in results["tables"].items():
        for row in table["rows"]:
            for column in table["columns"]:
                key = column["key"]
                cells.append(
                    {
                        "table": table_key,
                        "row": row["key"],
                        "column": key,
                        "value": row["values"].get(key),
                        "kind": column["kind"],
                        "uncertain": (row.get("uncertain") or {}).get(key),
                        "source": {
                            "arxiv": table["source"]["arxiv"],
                            "table": table["source"]["table"],
                            "row": row["name"],
                            "column": " ".join(filter(None, (column.get("group"), column["name"]))),
                        },
                    }
                )
    return cells


def paper_value(table: str, row: str, column: str, results: dict[str, Any] | None = None):
    """One printed value, e.g. ``paper_value("t4_text_to_video", "video_lavit", "ucf_fvd")`` → 280.57."""
    results = results or load_paper_results()
    try:
        rows = {r["key"]: r for r in results["tables"][table]["rows"]}
        return rows[row]["values"][column]
    except KeyError as exc:
        raise KeyError(f"no paper value for table={table!r} row={row!r} column={column!r} (missing {exc})") from None
