"""Shared pieces of the reliability suite: the small test corpus and a fast run configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

from deepstep.configuration import Settings

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
    }
    values.update(overrides)
    return Settings.build(**values)


@pytest.fixture
def fast_settings(fake_llm, tmp_path) -> Settings:
    return settings_for(fake_llm.base_url, tmp_path / "home")
