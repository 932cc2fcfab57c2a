"""SIGKILL a real `deepstep run` process at several points, resume it, and check the server's log.

A call may be repeated after a resume only if it was in flight when the process died
(at most ``max_concurrency`` calls); the final tree must equal an uninterrupted run's.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

import deepstep
from deepstep import step_tree
from deepstep.configuration import Settings
from deepstep.testing import FakeLLMServer, crash
from deepstep.testing.crash import cli_command as deepstep_cli
from deepstep.testing.crash import repeated_calls

pytestmark = pytest.mark.slow

QUESTION = "What is a loss function?"
CONCURRENCY = 4
CORPUS = Path(__file__).parent / "data" / "corpus"
# Calls in a 5-step, 2-rollout run: 2 (plan) + 5 x 9 = 47. Kill during decompose, during the
# first steps, and deep inside the MCTSr loops.
KILL_AFTER_CALLS = [1, 5, 17, 33, 44]


def cli_env(base_url: str, home: Path) -> dict[str, str]:
    return crash.cli_env(base_url, home, corpus=CORPUS, rollouts=2, max_concurrency=CONCURRENCY, max_retries=0)


@pytest.fixture(scope="module")
def server():
    with FakeLLMServer(latency_ms=60) as fake:
        yield fake


@pytest.fixture(scope="module")
def baseline(server, tmp_path_factory):
    home = tmp_path_factory.mktemp("baseline")
    settings = Settings.build(base_url=server.base_url, home=home, corpus=CORPUS, rollouts=2, max_concurrency=CONCURRENCY, max_retries=0)
    server.reset_log()
    result = deepstep.run(QUESTION, thread_id="baseline", settings=settings)
    assert repeated_calls(server.log()) == 0
    return step_tree.signature(result.tree), len(server.log())


@pytest.mark.parametrize("kill_after", KILL_AFTER_CALLS)
def test_kill_and_resume_repeats_only_in_flight_calls(server, baseline, tmp_path, kill_after):
    expected_signature, total_calls = baseline
    home = tmp_path / "home"
    env = cli_env(server.base_url, home)
    thread = f"kill{kill_after}"
    server.reset_log()

    killed = crash.run_and_kill(deepstep_cli("run", QUESTION, "--thread-id", thread), env, server, crash.KillPoint(calls=kill_after), timeout=60)
    calls_before_kill = killed.calls_before_kill

    resumed = subprocess.run(deepstep_cli("resume", thread), env=env, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr

    log = server.log()
    answered = [entry for entry in log if entry["status"] == 200]
    repeats = repeated_calls(log)
    record = {
        "kill_after": kill_after,
        "calls_before_kill": calls_before_kill,
        "cut_off_by_kill": len(log) - len(answered),
        "answered_total": len(answered),
        "repeated": repeats,
    }
    print("kill-resume:", json.dumps(record))
    # At most one call per running step (or the planner) can be in flight when the process dies.
    assert repeats <= CONCURRENCY, record
    # Every call of the uninterrupted run was answered, and no other call was made.
    assert len({entry["hash"] for entry in answered}) == total_calls, record

    settings = Settings.build(base_url=server.base_url, home=home)
    assert step_tree.signature(deepstep.load(thread, settings=settings).tree) == expected_signature

    # A finished thread resumes with zero model calls.
    again = subprocess.run(deepstep_cli("resume", thread), env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    assert len(server.log()) == len(log)
