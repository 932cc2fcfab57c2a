"""Ctrl-C (SIGINT) a real `deepstep run`: it stops before its next model call, exits 130 with one
line and no traceback, and `deepstep resume` finishes the thread to the uninterrupted tree.

The steps run in LangGraph's worker threads while Python delivers SIGINT to the main thread only;
these tests pin that an interrupt there stops the workers too (only the calls in flight are
answered after it) and that the answers they saved are kept by the resume.
"""

from __future__ import annotations

import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Any

import pytest

import deepstep
from deepstep import step_tree
from deepstep.testing import FakeLLMServer
from deepstep.testing.crash import answered, cli_command, cli_env, repeated_calls

from .conftest import CORPUS, QUESTION, settings_for

pytestmark = pytest.mark.slow

# The run stopped here; conftest's server and baseline fixtures read these five constants.
STEPS, ROLLOUTS, CONCURRENCY = 5, 1, 3
PLAN_CALLS = 2
TOTAL_CALLS = PLAN_CALLS + STEPS * (3 + 3 * ROLLOUTS)  # 32
LATENCY_MS = 150  # calls long enough that a SIGINT lands while some are in flight


@dataclass(frozen=True)
class Interrupted:
    returncode: int
    stderr: str
    answered_at_signal: int
    answered_at_exit: int


def run_and_interrupt(
    command: list[str], env: dict[str, str], server: FakeLLMServer, calls: int, *, signals: int = 1, pause: float = 0.0
) -> Interrupted:
    """Start ``command``, send SIGINT once the fake server has answered ``calls`` requests
    (``signals`` times, ``pause`` seconds apart), and wait for the process to exit."""
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while len(answered(server.log())) < calls:
            if process.poll() is not None:
                raise AssertionError(f"the run exited ({process.returncode}) before call {calls}: {process.stderr.read()}")
            time.sleep(0.002)
        at_signal = len(answered(server.log()))  # read before the signal: calls answered meanwhile count as "after"
        for index in range(signals):
            if index:
                time.sleep(pause)
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return Interrupted(process.returncode, stderr, at_signal, len(answered(server.log())))


def check_interrupted(interrupted: Interrupted, thread: str) -> None:
    record: dict[str, Any] = {
        "returncode": interrupted.returncode,
        "answered_after_sigint": interrupted.answered_at_exit - interrupted.answered_at_signal,
        "stderr": interrupted.stderr[-2000:],
    }
    assert interrupted.returncode == 130, record
    assert "Traceback" not in interrupted.stderr, record
    assert interrupted.stderr.count("interrupted") == 1, record
    assert f"interrupted: continue with `deepstep resume {thread}`" in interrupted.stderr, record
    # Only the calls in flight at the SIGINT are answered after it, not every remaining call.
    assert interrupted.answered_at_exit - interrupted.answered_at_signal <= CONCURRENCY, record


def check_resumed(server: FakeLLMServer, env: dict[str, str], home, thread: str, baseline: str) -> None:
    resumed = subprocess.run(cli_command("resume", thread), env=env, capture_output=True, text=True, timeout=120)
    log = server.log()
    assert resumed.returncode == 0, resumed.stderr
    assert f"{STEPS}/{STEPS} steps done, 0 failed" in resumed.stderr, resumed.stderr
    assert repeated_calls(log) <= CONCURRENCY  # at most the calls abandoned in flight are made again
    assert len({entry["hash"] for entry in answered(log)}) == TOTAL_CALLS
    final = deepstep.load(thread, settings=settings_for(server.base_url, home))
    assert final.status == "done"
    assert step_tree.signature(final.tree) == baseline
    assert all(step["status"] == "done" and step["answer"] for step in step_tree.steps(final.tree))


# SIGINT points: while the step list is planned, at the start, middle and end of the steps phase.
POINTS = [1, PLAN_CALLS + 1, PLAN_CALLS + 12, TOTAL_CALLS - 3]


@pytest.mark.parametrize("calls", POINTS, ids=[f"after{c}" for c in POINTS])
def test_ctrl_c_stops_the_run_and_resume_finishes_it(server, baseline, tmp_path, calls):
    home = tmp_path / "home"
    env = cli_env(server.base_url, home, corpus=CORPUS, rollouts=ROLLOUTS, max_concurrency=CONCURRENCY, max_retries=0, report_layout="seed")
    server.reset_log()
    interrupted = run_and_interrupt(cli_command("run", QUESTION, "--thread-id", "ctrlc"), env, server, calls)
    check_interrupted(interrupted, "ctrlc")
    check_resumed(server, env, home, "ctrlc", baseline)


@pytest.mark.parametrize("pause", [0.0, 0.05, 0.3])
def test_a_second_ctrl_c_also_exits_130_without_a_traceback(server, baseline, tmp_path, pause):
    home = tmp_path / "home"
    env = cli_env(server.base_url, home, corpus=CORPUS, rollouts=ROLLOUTS, max_concurrency=CONCURRENCY, max_retries=0, report_layout="seed")
    server.reset_log()
    interrupted = run_and_interrupt(cli_command("run", QUESTION, "--thread-id", "twice"), env, server, PLAN_CALLS + 5, signals=2, pause=pause)
    check_interrupted(interrupted, "twice")
    check_resumed(server, env, home, "twice", baseline)
