"""The walkthrough notebooks: saved without outputs, and (slow: a kernel per notebook) executing top to bottom on the
pipeline's outputs.

The slow test runs every notebook from a project root where `dvc repro` has run: ``VIDEOLAVIT_PROJECT`` if set, else
this repository. It fails, naming what is missing, when that root lacks the pipeline's outputs.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
WALKTHROUGHS = ("01_decomposition", "02_tokenization", "03_generation", "04_compare_runs")
# What `dvc repro` leaves in the project root and the notebooks read (default paths of params.yaml).
PIPELINE_OUTPUTS = (
    "data/corpus/test.jsonl",
    "data/clips",
    "data/tokens/meta.json",
    "models/motion_tokenizer",
    "models/visual_tokenizer",
    "models/detokenizer",
    "models/lm_pretrain",
    "models/lm_instruct",
    "mlflow.db",
)


def project_root() -> Path:
    return Path(os.environ.get("VIDEOLAVIT_PROJECT") or REPO).resolve()


def test_notebooks_exist():
    assert [p.stem for p in NOTEBOOKS] == list(WALKTHROUGHS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_saved_without_outputs(path):
    import nbformat

    notebook = nbformat.read(path, as_version=4)
    executed = [i for i, c in enumerate(notebook.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not executed, f"{path.name}: clear the outputs of cells {executed} before committing"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path):
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    root = project_root()
    missing = [p for p in PIPELINE_OUTPUTS if not (root / p).exists()]
    if missing:
        pytest.fail(
            f"the notebooks read the pipeline's outputs, but {root} lacks {', '.join(missing)}: run `dvc repro` there "
            "first, or set VIDEOLAVIT_PROJECT to a project root where it ran"
        )
    notebook = nbformat.read(path, as_version=4)
    # The kernel runs in the project root (notebooks read data/, models/, mlflow.db relative to it) and reads the
    # project's MLflow store, not the temporary one conftest.py sets for the other tests.
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}", "OMP_NUM_THREADS": "1"}
    client = NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(root)}})
    try:
        client.execute(env=env)
    except CellExecutionError as exc:
        pytest.fail(f"{path.name} failed in {root}:\n{exc}")
