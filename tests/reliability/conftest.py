"""Shared pieces of the reliability suite: the small test corpus and a fast run configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

import deepstep
from deepstep import step_tree
from deepstep.configuration import Settings
from deepstep.testing import FakeLLMServer
from deepstep.testing.crash import answered, repeated_calls

CORPUS = Path(__file__).resolve().parents[1] / "data" / "corpus"
QUESTION = "What is a loss function?"


def settings_for(base_url: str, home: Path, **overrides: object) -> Settings:
    """A small, fast run: the test corpus, no HTTP-level retries, two attempts per node."""
    values: dict[str, object] = {
        "base_url": base_url,
        "home": home,
        "corpus": CORPUS,
        "rollouts": 1,
        "max_concurrency": 4,
        "step_attempts": 2,
        "max_retries": 0,
        "report_layout": "seed",  # exact call counts: the answer-first synthesis call is tested in test_trust.py
    }
    values.update(overrides)
    return Settings.build(**values)


# The modules that stop runs (test_kills, test_interrupts) share these two fixtures; each sets the
# constants STEPS, ROLLOUTS, CONCURRENCY, TOTAL_CALLS and LATENCY_MS of the run it stops.


@pytest.fixture(scope="module")
def server(request):
    """The module's fake model server: ``STEPS`` steps, each call answered after ``LATENCY_MS``."""
    with FakeLLMServer(latency_ms=request.module.LATENCY_MS, steps=request.module.STEPS) as fake:
        yield fake


@pytest.fixture(scope="module")
def baseline(server, tmp_path_factory, request) -> list[tuple]:
    """The signature of the tree a run nothing stops ends with: what every killed or interrupted run
    must resume to. That run makes each of the module's ``TOTAL_CALLS`` model calls exactly once."""
    module = request.module
    settings = settings_for(server.base_url, tmp_path_factory.mktemp("baseline"), rollouts=module.ROLLOUTS, max_concurrency=module.CONCURRENCY)
    server.reset_log()
    result = deepstep.run(QUESTION, thread_id="baseline", settings=settings)
    assert len(answered(server.log())) == module.TOTAL_CALLS and repeated_calls(server.log()) == 0
    return step_tree.signature(result.tree)


@pytest.fixture
def fast_settings(fake_llm, tmp_path) -> Settings:
    return settings_for(fake_llm.base_url, tmp_path / "home")
