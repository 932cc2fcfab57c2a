"""The notebooks run top to bottom on the fake server, and are committed without outputs."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).parent.parent / "notebooks"
NAMES = ["quickstart.ipynb", "mcts_inspection.ipynb", "step_tree.ipynb"]
CELL_TIMEOUT_SECONDS = 120  # nbclient stops a hung cell; how fast a notebook runs is not tested


def test_all_notebooks_are_listed() -> None:
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebooks_have_no_outputs(name: str) -> None:
    nbformat = pytest.importorskip("nbformat", reason="nbformat is in the notebooks extra")
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{name}: strip outputs before committing"


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_on_the_fake_server(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nbformat = pytest.importorskip("nbformat", reason="nbformat is in the notebooks extra")
    nbclient = pytest.importorskip("nbclient", reason="nbclient is in the notebooks extra")
    monkeypatch.setenv("DEEPSTEP_NOTEBOOK_FAKE", "1")
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the notebooks' throwaway DEEPSTEP_HOME folders land here
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")  # figures become outputs
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=CELL_TIMEOUT_SECONDS, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    if name != "quickstart.ipynb":  # the drawings: each notebook shows at least one figure
        assert any("image/png" in o.get("data", {}) for o in outputs)
    else:
        assert any("text/markdown" in o.get("data", {}) for o in outputs)
        assert not any("text/html" in o.get("data", {}) and "<script" in o["data"]["text/html"] for o in outputs)
