"""Shared fixtures: an isolated DEEPSTEP_HOME, the fake model server, settings pointing at it."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
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
        base_url=fake_llm.base_url,
        home=tmp_path / "home",
        corpus=TEST_CORPUS,
        rollouts=2,
        max_concurrency=4,
        step_attempts=2,
        max_retries=0,
        # The seed layout keeps the run to 3 + 3R calls per step plus planning, which most tests count;
        # the answer-first layout's one synthesis call is tested in test_trust.py.
        report_layout="seed",
    )


def with_settings(settings: Settings, **changes) -> Settings:
    """``settings`` with ``changes``, validated again as any Settings are."""
    return Settings.build(**{**settings.model_dump(), **changes})


def calls_by_task(fake_llm) -> Counter:
    """The model calls the fake server answered (HTTP 200), counted by task."""
    return Counter(entry["task"] for entry in fake_llm.log() if entry["status"] == 200)


def fallback_rewards(step: dict, question: str) -> list[list[float]]:
    """Each search node's rewards when the critic never gives a usable score: the neutral fallback
    score 0, less the claim penalty for that answer's unsupported claims."""
    from deepstep.claims import check_answer, unsupported_share
    from deepstep.mcts import claim_adjusted_score

    return [
        [claim_adjusted_score(0, unsupported_share(check_answer(node["answer"], step["contexts"], f"{question}\n{step['question']}")))]
        for node in step["mcts"]["nodes"]
    ]


# Trust authentication ignores it: it is in the test URLs only to prove it never leaks.
POSTGRES_TEST_PASSWORD = "pw-Secret-4711"


@pytest.fixture(scope="session")
def postgres_server():
    """A real Postgres server on 127.0.0.1 for the whole session (fails, never skips, when it cannot start)."""
    from deepstep.testing.postgres_server import PostgresTestServer

    with PostgresTestServer() as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server, request) -> str:
    """A fresh, empty database on the session's server; the URL carries a password that must never leak."""
    import re

    import psycopg

    name = "t_" + re.sub(r"\W", "_", request.node.name.lower())[:50] + f"_{abs(hash(request.node.nodeid)) % 10**6}"
    with psycopg.connect(postgres_server.url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql://postgres:{POSTGRES_TEST_PASSWORD}@127.0.0.1:{postgres_server.port}/{name}"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that no one listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def running_studio(command: list[str], *, env: dict[str, str], cwd: Path, log_path: Path, ready_timeout: float) -> Iterator[subprocess.Popen[bytes]]:
    """``command`` (a `deepstep studio`) running for the with-block, entered once it prints its
    ``Studio:`` line; its output goes to ``log_path``. Stopped with Ctrl-C as a user would, and
    killed if it has not exited 30 s later."""
    with log_path.open("wb") as log:
        started = time.monotonic()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        try:
            while "Studio: " not in log_path.read_text(errors="replace"):
                assert process.poll() is None, log_path.read_text(errors="replace")
                assert time.monotonic() - started < ready_timeout, "deepstep studio did not get ready"
                time.sleep(0.2)
            yield process
        finally:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
