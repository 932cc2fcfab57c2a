"""Shared fixtures: an isolated DEEPSTEP_HOME, the fake model server, settings pointing at it."""

from __future__ import annotations

from pathlib import Path

import pytest

from deepstep.configuration import Settings
from deepstep.testing import FakeLLMServer

TEST_CORPUS = Path(__file__).parent / "data" / "corpus"


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    """No test sees the developer's model server, keys or DEEPSTEP_* settings."""
    import os

    for name in list(os.environ):
        if name.startswith(("DEEPSTEP_", "OPENAI_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("DEEPSTEP_HOME", str(tmp_path / "home"))


@pytest.fixture
def fake_llm():
    with FakeLLMServer() as server:
        yield server


@pytest.fixture
def settings(fake_llm, tmp_path) -> Settings:
    return Settings.build(
        base_url=fake_llm.base_url, home=tmp_path / "home", corpus=TEST_CORPUS, rollouts=2, max_concurrency=4,
        step_attempts=2, max_retries=0,
    )
