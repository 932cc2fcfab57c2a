"""The embedded model server dies: before the run (proof of life) and mid-run.

deepstep starts a stand-in for llama-cpp-python's server (``deepstep.testing.stand_in_llama``,
real HTTP, the fake model's replies) that dies of SIGSEGV on a chosen request, as a llama.cpp
built for another CPU does. The user must get one line naming the crash, the server's log and
the fix, never "cannot reach the model server".
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from deepstep import llm_server
from deepstep.testing.crash import cli_command
from deepstep.testing.stand_in_llama import FAULTS_VARIABLE, LOG_VARIABLE

pytestmark = pytest.mark.slow

CORPUS = Path(__file__).parent / "data" / "corpus"
QUESTION = "What is a loss function?"


def stand_in_env(home: Path, log: Path, faults: str = "", **settings: object) -> dict[str, str]:
    """No model server configured: deepstep starts the stand-in as its embedded model."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEEPSTEP_", "OPENAI_"))}
    env.update(
        DEEPSTEP_HOME=str(home),
        DEEPSTEP_CORPUS=str(CORPUS),
        DEEPSTEP_LLAMA_SERVER_MODULE="deepstep.testing.stand_in_llama",
        DEEPSTEP_MAX_RETRIES="0",
        **{FAULTS_VARIABLE: faults, LOG_VARIABLE: str(log)},
    )
    env.update({f"DEEPSTEP_{name.upper()}": str(value) for name, value in settings.items()})
    return env


def requests(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def run_cli(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cli_command(*args), env=env, capture_output=True, text=True, timeout=timeout)


def test_a_server_that_crashes_on_its_first_request_stops_the_run_before_planning(tmp_path):
    home, log = tmp_path / "home", tmp_path / "requests.jsonl"
    done = run_cli(stand_in_env(home, log, "crash:after=0"), "run", QUESTION, "--thread-id", "t1")
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "cannot reach" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: the embedded model server crashed (signal 11, SIGSEGV) on its first request; its log is {home / 'llm-server.log'}; "
        "this usually means llama-cpp-python was built for another CPU: run `bash scripts/setup.sh --rebuild-llama`"
    ], done.stderr
    assert len(requests(log)) == 1  # the proof of life only: no planning call was made
    assert not (home / llm_server.STATE_FILE).exists()


def test_a_healthy_server_passes_the_proof_of_life_and_serves_one_call_at_a_time(tmp_path):
    home, log = tmp_path / "home", tmp_path / "requests.jsonl"
    done = run_cli(stand_in_env(home, log, max_steps=3, rollouts=1, max_concurrency=4), "run", QUESTION, "--thread-id", "t1")
    assert done.returncode == 0, done.stderr
    served = requests(log)
    proof, calls = served[0], served[1:]
    assert proof["prompt_tokens"] == sum(len(m["content"].split()) for m in llm_server.PROOF_OF_LIFE)
    assert len(calls) == 2 + 3 * (3 + 3 * 1) + 1  # plan + 3 steps x (question, answer, evaluate + one rollout) + the report's answer
    # max_concurrency 4 was asked for, but the embedded server computes one request at a time.
    spans = sorted((call["started"], call["finished"]) for call in calls)
    assert all(later_start >= earlier_end for (_, earlier_end), (later_start, _) in zip(spans, spans[1:], strict=False))
    assert "1 model call at a time" in done.stderr


def test_a_server_that_dies_mid_run_fails_the_steps_with_that_reason(tmp_path):
    home, log = tmp_path / "home", tmp_path / "requests.jsonl"
    env = stand_in_env(home, log, "crash:task=critique", max_steps=2, rollouts=1)
    done = run_cli(env, "run", QUESTION, "--thread-id", "t1")
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and "cannot reach" not in done.stderr
    failed = [line for line in done.stderr.splitlines() if line.strip().startswith("failed ")]
    assert len(failed) == 2, done.stderr
    for line in failed:
        assert "the embedded model server crashed (signal 11, SIGSEGV) while a run used it" in line
    # Resuming starts a new server (without the fault) and finishes the failed steps.
    env[FAULTS_VARIABLE] = ""
    resumed = run_cli(env, "resume", "t1")
    assert resumed.returncode == 0, resumed.stderr
    assert "2/2 steps done, 0 failed" in resumed.stderr


def test_llm_serve_stops_when_its_server_dies(tmp_path):
    home, log = tmp_path / "home", tmp_path / "requests.jsonl"
    process = subprocess.Popen(
        cli_command("llm", "serve"), env=stand_in_env(home, log, "crash:after=1"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 60
        while (info := llm_server.running_server(home)) is None:
            assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
            time.sleep(0.1)
        with pytest.raises(httpx.HTTPError):  # the second chat request kills the server
            httpx.post(
                f"{info.base_url}/chat/completions",
                json={"messages": [{"role": "user", "content": "hi there"}]},
                headers={"Authorization": f"Bearer {info.api_key}"},  # the server takes its own key only
                timeout=30,
            )
        code = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait()
    stderr = process.stderr.read()
    assert code == 2, stderr
    assert "the embedded model server crashed (signal 11, SIGSEGV) while serving" in stderr
    assert "Traceback" not in stderr and len(stderr.splitlines()) < 10  # the loader's lines go to the log


def test_the_stand_in_is_started_like_llama_cpp_server():
    command = llm_server.server_command(8080, Path("model.gguf"), threads=2, module="deepstep.testing.stand_in_llama")
    assert command[:3] == [sys.executable, "-m", "deepstep.testing.stand_in_llama"]
    assert command[command.index("--host") + 1] == "127.0.0.1"
