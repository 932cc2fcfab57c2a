"""The notebooks run top to bottom on the fake server, and are committed without outputs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
NOTEBOOKS = ROOT / "notebooks"
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


def test_notebooks_extra_has_what_opens_and_runs_them() -> None:
    """`pip install -e '.[notebooks]'` brings JupyterLab to open them and nbconvert to run them (README)."""
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]["notebooks"]
    names = {re.split(r"[<>=!~\[;\s]", requirement, maxsplit=1)[0].lower() for requirement in extra}
    assert {"jupyterlab", "nbconvert", "ipykernel"} <= names


@pytest.mark.slow
def test_the_readme_nbconvert_command_runs_a_notebook(tmp_path: Path) -> None:
    nbformat = pytest.importorskip("nbformat", reason="nbformat is in the notebooks extra")
    pytest.importorskip("nbconvert", reason="nbconvert is in the notebooks extra")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEEPSTEP_", "OPENAI_"))}
    env.update(DEEPSTEP_NOTEBOOK_FAKE="1", TMPDIR=str(tmp_path))
    command = [str(Path(sys.executable).parent / "jupyter"), "nbconvert", "--to", "notebook", "--execute"]
    done = subprocess.run(
        [*command, str(NOTEBOOKS / "step_tree.ipynb"), "--output-dir", str(tmp_path / "out")], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    executed = nbformat.read(tmp_path / "out" / "step_tree.ipynb", as_version=4)
    outputs = [output for cell in executed.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)
