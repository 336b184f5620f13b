"""Paper-style reports from the MLflow runs: tables (Markdown + LaTeX) and figures. The ``report`` stage drives it."""
