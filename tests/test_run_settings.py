"""One settings path per run: defaults < DEEPSTEP_* < configurable < LangGraph's runtime context.

Over real HTTP with the fake model server: a graph invoked by hand (as in a notebook, or by
Studio) honours ``context=``, and the Python API hands its resolved settings over the same way.
"""

from __future__ import annotations

from collections import Counter

import pytest
from langgraph.checkpoint.memory import InMemorySaver

import deepstep
from deepstep import step_tree
from deepstep.checkpoint import sqlite_checkpointer
from deepstep.configuration import RUN_SHAPING_FIELDS, RunContext, Settings
from deepstep.errors import ConfigError
from deepstep.graph import build_graph
from tests.conftest import POSTGRES_TEST_PASSWORD, TEST_CORPUS, calls_by_task

QUESTION = "What is a loss function?"


@pytest.fixture
def server_env(fake_llm, monkeypatch):
    """The environment a notebook user has: the model server and corpus set in DEEPSTEP_* / OPENAI_*."""
    monkeypatch.setenv("OPENAI_BASE_URL", fake_llm.base_url)
    monkeypatch.setenv("DEEPSTEP_CORPUS", str(TEST_CORPUS))
    monkeypatch.setenv("DEEPSTEP_MAX_RETRIES", "0")
    return fake_llm


def test_graph_invoke_honours_the_runtime_context(server_env):
    graph = build_graph(InMemorySaver())
    final = graph.invoke({"question": QUESTION}, {"configurable": {"thread_id": "t"}}, context={"max_steps": 1, "rollouts": 0})
    assert len(step_tree.steps(final["tree"])) == 1  # the fake plan has 5 steps: the default would keep them all
    assert calls_by_task(server_env) == Counter(outline=1, steps=1, question=1, answer=1, evaluate=1, synthesize=1)


def test_configurable_still_works_and_the_context_wins_over_it(server_env):
    graph = build_graph(InMemorySaver())
    config = {"configurable": {"thread_id": "t", "max_steps": 2, "rollouts": 1}}
    final = graph.invoke({"question": QUESTION}, config, context=RunContext(rollouts=0))
    steps = step_tree.steps(final["tree"])
    assert len(steps) == 2  # from configurable
    assert all(s["mcts"]["rollouts_done"] == 0 for s in steps)  # the context's 0 over configurable's 1
    assert calls_by_task(server_env) == Counter(outline=1, steps=1, question=2, answer=2, evaluate=2, synthesize=1)


def test_precedence_is_defaults_then_environment_then_configurable_then_context(monkeypatch):
    assert Settings.for_run(None).max_steps == 8
    monkeypatch.setenv("DEEPSTEP_MAX_STEPS", "3")
    assert Settings.for_run(None).max_steps == 3
    assert Settings.for_run({"configurable": {"max_steps": 4}}).max_steps == 4
    assert Settings.for_run({"configurable": {"max_steps": 4}}, {"max_steps": 5}).max_steps == 5
    assert Settings.for_run({"configurable": {"max_steps": 4}}, RunContext(top_k=2)).max_steps == 4  # unset fields leave it
    resolved = Settings.build(max_steps=6)
    assert Settings.for_run({"configurable": {"max_steps": 4}}, resolved) is resolved  # the API's resolved settings, as is
    with pytest.raises(ConfigError, match="run context must be"):
        Settings.for_run(None, ["max_steps", 1])


def test_the_run_context_takes_only_run_shaping_settings_with_their_limits():
    assert set(RunContext.model_fields) == set(RUN_SHAPING_FIELDS)
    assert RunContext().model_dump(exclude_none=True) == {}  # nothing set overrides nothing
    with pytest.raises(ValueError, match="home"):
        RunContext(home="/elsewhere")
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        RunContext(max_steps=0)


def test_a_thread_keeps_only_its_run_shaping_settings_and_no_checkpoint_holds_a_credential(settings, fake_llm, monkeypatch):
    key = "sk-key-never-stored-0123456789"
    monkeypatch.setenv("OPENAI_API_KEY", key)
    secret_url = fake_llm.base_url.replace("http://", f"http://user:{POSTGRES_TEST_PASSWORD}@")
    with_secret = Settings.build(**{**settings.model_dump(), "base_url": secret_url, "rollouts": 1, "max_steps": 2})
    result = deepstep.run(QUESTION, thread_id="kept", settings=with_secret)
    assert result.status == "done"
    with sqlite_checkpointer(with_secret.checkpoint_file) as saver:
        checkpoints = list(saver.list({"configurable": {"thread_id": "kept"}}))
        stored = saver.get_tuple({"configurable": {"thread_id": "kept"}}).checkpoint["channel_values"]["settings"]
    assert set(stored) == set(RUN_SHAPING_FIELDS) and stored["rollouts"] == 1 and stored["max_steps"] == 2
    for checkpoint in checkpoints:
        text = repr(checkpoint.checkpoint) + repr(checkpoint.metadata) + repr(checkpoint.config)
        assert POSTGRES_TEST_PASSWORD not in text and key not in text
        # Settings travel as the run's context, so no checkpoint's metadata copies them.
        assert not {"base_url", "model", "rollouts", "max_steps"} & set(checkpoint.metadata)
