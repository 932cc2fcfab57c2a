"""The commands that answer at once import only what they use (benchmarks/cli_startup.py measures their CPU).

Each command runs in a fresh interpreter, which then lists the packages it loaded. No clock is
involved: a heavy import creeping back (LangGraph, LangChain with LangSmith, the OpenAI client,
pandas) fails here on any machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from deepstep.testing import FakeLLMServer
from deepstep.testing.crash import cli_env

TEST_CORPUS = Path(__file__).parent / "data" / "corpus"

# Runs one deepstep command in this interpreter, then writes the top-level packages it imported to argv[1].
PROBE = """
import json, sys
from deepstep.cli import app
try:
    app(args=sys.argv[2:], prog_name="deepstep")
except SystemExit as done:
    if done.code:
        raise
with open(sys.argv[1], "w") as out:
    json.dump(sorted({name.split(".")[0] for name in sys.modules}), out)
"""

# LangChain, LangGraph and the OpenAI client alone take about 2 s of CPU to import here.
LANGCHAIN_STACK = {"langchain_core", "langchain_openai", "langgraph", "langsmith", "openai"}
# Commands that read or draw the graph need LangGraph (and so langchain_core and LangSmith), never these.
MODEL_CLIENT = {"langchain_openai"}
TABLES = {"pandas", "pyarrow"}


def imported_packages(tmp_path: Path, env: dict[str, str], *args: str) -> set[str]:
    listing = tmp_path / "modules.json"
    subprocess.run([sys.executable, "-c", PROBE, str(listing), *args], env=env, check=True, capture_output=True, timeout=120)
    return set(json.loads(listing.read_text()))


@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    return cli_env("http://127.0.0.1:9/v1", tmp_path / "home")


def test_help_imports_neither_langchain_nor_the_corpus_index(tmp_path, env):
    loaded = imported_packages(tmp_path, env, "--help")
    assert not loaded & (LANGCHAIN_STACK | TABLES | {"bm25s", "numpy", "bs4", "networkx", "httpx"})


@pytest.mark.parametrize("command", [["corpus", "search", "lava", f"--corpus={TEST_CORPUS}"], ["corpus", "index", str(TEST_CORPUS)]])
def test_corpus_commands_do_not_import_langchain(tmp_path, env, command):
    loaded = imported_packages(tmp_path, env, *command)
    assert "bm25s" in loaded  # the probe really searched
    assert not loaded & (LANGCHAIN_STACK | TABLES)


def test_graph_drawing_does_not_import_the_model_client_or_pandas(tmp_path, env):
    loaded = imported_packages(tmp_path, env, "graph")
    assert "langgraph" in loaded
    assert not loaded & (MODEL_CLIENT | TABLES | {"openai", "bm25s"})


@pytest.fixture(scope="module")
def stored_thread(tmp_path_factory) -> dict[str, str]:
    """The environment of a home holding one finished thread, ``guard``."""
    import deepstep

    home = tmp_path_factory.mktemp("stored") / "home"
    with FakeLLMServer() as fake:
        settings = deepstep.Settings.build(base_url=fake.base_url, home=home, corpus=TEST_CORPUS, rollouts=1, max_steps=2, max_retries=0)
        assert deepstep.run("What is a loss function?", thread_id="guard", settings=settings).status == "done"
    return cli_env("http://127.0.0.1:9/v1", home)


@pytest.mark.parametrize("command", [["show", "guard"], ["export", "guard", "--md", "REPORT"]])
def test_reading_a_stored_thread_does_not_import_the_model_client_or_pandas(tmp_path, stored_thread, command):
    command = [str(tmp_path / "report.md") if part == "REPORT" else part for part in command]
    loaded = imported_packages(tmp_path, stored_thread, *command)
    assert "langgraph" in loaded  # its checkpointer; not its runtime, which pulls in LangSmith and the SDK client
    assert not loaded & (MODEL_CLIENT | TABLES | {"openai", "bm25s", "langsmith", "langgraph_sdk"})


# Pure modules: algorithms and records with no I/O. Importing one (a notebook inspecting a search,
# a test, another tool) must not compile the graph or load the model client or pandas.
PURE_MODULES = ["mcts", "records", "step_tree", "citations", "render", "dreamsboard_fields", "usage", "redaction", "parsing", "prompts"]


@pytest.mark.parametrize("module", PURE_MODULES)
def test_a_pure_module_loads_neither_the_graph_nor_the_model_client_nor_pandas(module):
    probe = f"import json, sys, deepstep.{module}; print(json.dumps(sorted(sys.modules)))"
    loaded = set(json.loads(subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True, timeout=120).stdout))
    assert f"deepstep.{module}" in loaded  # the probe really imported it
    assert not loaded & {"deepstep.graph", "deepstep.api", "langchain_openai", "openai", "pandas", "pyarrow"}
