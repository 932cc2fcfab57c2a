"""What the CLI user sees while a run works and after it: the progress line in user words
(never a LangGraph node name like ``__interrupt__``, never an unknown total ``?``), and the
warnings the run recorded, each once on stderr.

The real CLI runs as a subprocess against the fake model server; ``TTY_COMPATIBLE`` and
``TTY_INTERACTIVE`` make rich draw the live progress line as on a terminal, so every state
it showed is in the captured stderr.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from deepstep.testing import FakeLLMServer, Fault
from deepstep.testing.crash import cli_command, cli_env

pytestmark = pytest.mark.slow

CORPUS = Path(__file__).parent / "data" / "corpus"
QUESTION = "What is a loss function?"
PHASES = {"starting", "planning: outline", "planning: steps", "waiting for review", "steps", "report", "done"}
UNUSABLE_STEPS = "warning: the model's step list was unusable after repairs; the steps were taken from the outline"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
ELAPSED = re.compile(r"\d+:\d\d:\d\d$")


def deepstep(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cli_command(*args), env=env, capture_output=True, text=True, timeout=120)


def terminal_env(server: FakeLLMServer, home: Path) -> dict[str, str]:
    env = cli_env(server.base_url, home, corpus=CORPUS, rollouts=1, max_retries=0)
    env.update(TTY_COMPATIBLE="1", TTY_INTERACTIVE="1", NO_COLOR="1", COLUMNS="120")
    return env


def progress_lines(stderr: str) -> list[str]:
    """Every state of the progress line (it ends with the elapsed time)."""
    lines = (ANSI.sub("", line).strip() for line in re.split(r"[\r\n]", stderr))
    return [line for line in lines if ELAPSED.search(line)]


def phase_of(line: str) -> str:
    return line.split("━")[0].split("  ")[0].strip()


def check_progress(stderr: str) -> list[str]:
    lines = progress_lines(stderr)
    assert lines, stderr
    assert "__interrupt__" not in stderr and "/?" not in stderr, stderr
    assert not [line for line in lines if "__" in line or "decompose" in line], lines
    phases = [phase_of(line) for line in lines]
    assert set(phases) <= PHASES, phases
    return phases


def test_the_progress_line_speaks_the_users_words(tmp_path):
    with FakeLLMServer(latency_ms=60, steps=3) as server:
        env = terminal_env(server, tmp_path / "home")

        paused = deepstep(env, "run", QUESTION, "--thread-id", "p", "--review")
        assert paused.returncode == 0, paused.stderr
        phases = check_progress(paused.stderr)
        assert phases[-1] == "waiting for review", phases
        assert "0/3 steps" in progress_lines(paused.stderr)[-1]

        resumed = deepstep(env, "resume", "p")
        assert resumed.returncode == 0, resumed.stderr
        phases = check_progress(resumed.stderr)
        assert phases[0] in ("starting", "steps") and phases[-1] == "done", phases
        assert "3/3 steps" in progress_lines(resumed.stderr)[-1]


def test_a_resume_in_the_steps_phase_starts_with_the_steps_already_done(tmp_path):
    # A step that fails the first time is retried by a resume: the progress line counts from the steps done.
    with FakeLLMServer(steps=3, faults=[Fault(kind="http500", task="question", match="Step: Aspect 2 ")]) as server:
        env = {**terminal_env(server, tmp_path / "home"), "DEEPSTEP_STEP_ATTEMPTS": "1"}
        first = deepstep(env, "run", QUESTION, "--thread-id", "r")
        assert first.returncode == 1, first.stderr
        check_progress(first.stderr)
        server.set_faults([])
        again = deepstep(env, "resume", "r")
        assert again.returncode == 0, again.stderr
        phases = check_progress(again.stderr)
        lines = progress_lines(again.stderr)
        assert all("2/3 steps" in line for line, phase in zip(lines, phases, strict=True) if phase == "steps"), lines
        assert "3/3 steps" in lines[-1] and phases[-1] == "done"


def test_warnings_reach_the_user_once_after_run_and_resume(tmp_path):
    with FakeLLMServer(steps=3, faults=[Fault(kind="malformed_json", task="steps")]) as server:
        env = cli_env(server.base_url, tmp_path / "home", corpus=CORPUS, rollouts=1, max_retries=0)

        done = deepstep(env, "run", QUESTION, "--thread-id", "w")
        assert done.returncode == 0, done.stderr
        assert done.stderr.count(UNUSABLE_STEPS) == 1, done.stderr
        assert "Traceback" not in done.stderr

        paused = deepstep(env, "run", QUESTION, "--thread-id", "w2", "--review")
        assert paused.returncode == 0, paused.stderr
        assert paused.stderr.count(UNUSABLE_STEPS) == 1, paused.stderr
        plan = tmp_path / "plan.json"
        plan.write_text(json.dumps([{"name": "Only", "description": "one step", "level": "0"}]), encoding="utf-8")
        edited = deepstep(env, "resume", "w2", "--steps", str(plan))
        assert edited.returncode == 0, edited.stderr
        assert edited.stderr.count(UNUSABLE_STEPS) == 1, edited.stderr
        assert edited.stderr.count("warning: plan edited in review") == 1, edited.stderr


def test_no_warning_line_when_the_run_recorded_none(tmp_path):
    with FakeLLMServer(steps=2) as server:
        env = cli_env(server.base_url, tmp_path / "home", corpus=CORPUS, rollouts=1, max_retries=0)
        done = deepstep(env, "run", QUESTION, "--thread-id", "n")
        assert done.returncode == 0, done.stderr
        assert "warning:" not in done.stderr


def test_the_embedded_model_shows_one_model_call_at_a_time(tmp_path):
    # No model server configured: deepstep starts its embedded one, here the stand-in for llama.cpp.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEEPSTEP_", "OPENAI_"))}
    env.update(
        DEEPSTEP_HOME=str(tmp_path / "home"),
        DEEPSTEP_CORPUS=str(CORPUS),
        DEEPSTEP_LLAMA_SERVER_MODULE="deepstep.testing.stand_in_llama",
        DEEPSTEP_ROLLOUTS="1",
        DEEPSTEP_MAX_RETRIES="0",
    )
    done = deepstep(env, "run", QUESTION, "--thread-id", "e")
    assert done.returncode == 0, done.stderr
    check_progress(done.stderr)
    assert "1 model call at a time" in progress_lines(done.stderr)[-1], done.stderr
