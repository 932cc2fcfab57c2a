"""A hostile or broken model server (issue 14, items 8, 12, 26, 4 and 11).

The fake server's hostile replies (``deepstep.testing.fake_llm.HOSTILE_KINDS``) are model faults:
retried, then a failed step or one line of error, never a traceback. A reply trickled one byte at a
time cannot outlive the call's ``timeout``; an oversized reply is cut or rejected; the embedded
server's port is trusted only when it is deepstep's own server, which never sees the OpenAI key.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

import deepstep
from deepstep import llm_server, step_tree
from deepstep.testing import FakeLLMServer, Fault
from deepstep.testing.crash import cli_command, cli_env

from .conftest import CORPUS, QUESTION, settings_for

pytestmark = pytest.mark.slow

STAND_IN = "deepstep.testing.stand_in_llama"
USER_KEY = "sk-user-secret-must-stay-home"

# Replies that are no usable chat completion, all with HTTP 200.
UNUSABLE = ("error_200", "html", "sse", "not_json", "no_choices", "object_content", "lone_surrogate", "huge_usage")


def served(log: list[dict], task: str) -> list[dict]:
    return [entry for entry in log if entry["task"] == task]


def assert_all_steps_done(result: deepstep.RunResult) -> None:
    steps = step_tree.steps(result.tree)
    assert steps
    for step in steps:
        assert step["status"] == "done", step["error"]
        assert step["answer"].strip()


def settled(server: FakeLLMServer, fault_kind: str, status: int) -> list[dict]:
    """The log once every faulted request's final status is logged (the server notices a hang-up on its next write)."""
    for _ in range(400):
        log = server.log()
        faulted = [entry for entry in log if entry["fault"] == fault_kind]
        if faulted and all(entry["status"] == status for entry in faulted):
            return log
        time.sleep(0.05)
    return server.log()


@pytest.mark.parametrize("kind", UNUSABLE)
def test_an_unusable_reply_while_planning_is_retried(fake_llm, tmp_path, kind):
    fake_llm.set_faults([Fault(kind, task="steps", times=1)])
    result = deepstep.run(QUESTION, thread_id="t", settings=settings_for(fake_llm.base_url, tmp_path / "home"))

    plan_calls = served(fake_llm.log(), "steps")
    assert [entry["fault"] for entry in plan_calls] == [kind, None]  # the fault, then its retry
    assert_all_steps_done(result)


@pytest.mark.parametrize("kind", ["error_200", "sse", "html", "no_choices"])
def test_an_unusable_reply_in_a_step_is_retried(fake_llm, tmp_path, kind):
    fake_llm.set_faults([Fault(kind, task="answer", times=1)])
    result = deepstep.run(QUESTION, thread_id="t", settings=settings_for(fake_llm.base_url, tmp_path / "home"))

    assert sum(entry["fault"] == kind for entry in fake_llm.log()) == 1
    assert_all_steps_done(result)  # the step whose answer was unusable asked again


def test_a_step_whose_server_keeps_answering_unusably_fails_alone_with_the_reason(fake_llm, tmp_path):
    fake_llm.set_faults([Fault("error_200", task="answer", match="Aspect 3 of")])
    result = deepstep.run(QUESTION, thread_id="t", settings=settings_for(fake_llm.base_url, tmp_path / "home"))

    failed = [step for step in step_tree.steps(result.tree) if step["status"] == "failed"]
    assert [step["name"] for step in failed] == [f"Aspect 3 of {QUESTION}"]
    assert failed[0]["error"] == "answer: the model server answered HTTP 200 with an error: injected error in an HTTP 200 reply after 2 attempt(s)"
    assert sum(entry["fault"] == "error_200" for entry in fake_llm.log()) == 2  # both attempts of the node asked


@pytest.mark.parametrize("kind", ["error_200", "html", "lone_surrogate", "huge_usage"])
def test_a_server_that_never_answers_usably_while_planning_is_one_line_of_error(fake_llm, tmp_path, kind):
    fake_llm.set_faults([Fault(kind, task="steps")])
    env = cli_env(fake_llm.base_url, tmp_path / "home", corpus=CORPUS, rollouts=1, max_retries=0)
    done = subprocess.run(cli_command("run", QUESTION), env=env, capture_output=True, text=True, timeout=300)

    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    error_lines = [line for line in done.stderr.splitlines() if line.startswith("error")]
    assert len(error_lines) == 1 and "model server" in error_lines[0], done.stderr
    assert len(served(fake_llm.log(), "steps")) == 3  # every attempt of the planning node asked


@pytest.mark.parametrize("kind", ["trickle", "slow_headers"])
def test_a_trickled_reply_cannot_outlive_the_call_timeout(fake_llm, tmp_path, kind):
    # 20 s of trickling against a 1 s timeout: the client must hang up and ask again.
    fake_llm.set_faults([Fault(kind, task="question", times=1, seconds=20)])
    result = deepstep.run(QUESTION, thread_id="t", settings=settings_for(fake_llm.base_url, tmp_path / "home", timeout=1))

    log = settled(fake_llm, kind, status=0)
    trickled = [entry for entry in log if entry["fault"] == kind]
    assert [entry["status"] for entry in trickled] == [0]  # the client hung up before the reply was whole
    assert_all_steps_done(result)


def test_a_silent_server_times_out_at_the_call_timeout_and_is_asked_again(fake_llm, tmp_path):
    # No byte for 3 s against a 1 s timeout, during a run (its waits sliced to notice Ctrl-C).
    fake_llm.set_faults([Fault("timeout", task="question", times=1, seconds=3)])
    result = deepstep.run(QUESTION, thread_id="t", settings=settings_for(fake_llm.base_url, tmp_path / "home", timeout=1))

    log = settled(fake_llm, "timeout", status=0)
    assert [entry["status"] for entry in log if entry["fault"] == "timeout"] == [0]  # hung up on, then asked again
    assert_all_steps_done(result)


def test_an_embedding_call_cannot_be_trickled_past_its_timeout(fake_llm):
    from deepstep.postgres_retrieval import EmbeddingModel

    fake_llm.set_faults([Fault("trickle", task="embeddings", seconds=20)])
    with pytest.raises(openai.APITimeoutError):
        EmbeddingModel(model="fake-embed", base_url=fake_llm.base_url, timeout=1).embed(["a passage about loss functions"])
    log = settled(fake_llm, "trickle", status=0)
    assert log and all(entry["status"] == 0 for entry in log)  # the client hung up on every attempt


def checkpointed_bytes(settings: deepstep.Settings) -> int:
    with sqlite3.connect(settings.checkpoint_file) as db:
        checkpoints = db.execute("select coalesce(sum(length(checkpoint)), 0) from checkpoints").fetchone()[0]
        writes = db.execute("select coalesce(sum(length(value)), 0) from writes").fetchone()[0]
    return checkpoints + writes


def test_a_reply_over_max_reply_chars_is_cut_and_costs_the_checkpoints_no_more_than_one_at_the_cap(tmp_path):
    cap = 10_000
    stored = {}
    for reply_chars in (cap, 10 * cap):  # 10 * cap is still under the byte limit: cut, not rejected
        with FakeLLMServer(faults=[Fault("huge_json", task="answer", size=reply_chars)]) as server:
            settings = settings_for(server.base_url, tmp_path / str(reply_chars), max_reply_chars=cap)
            result = deepstep.run(QUESTION, thread_id="t", settings=settings)
            assert sum(entry["fault"] == "huge_json" for entry in server.log()) >= 1
        assert_all_steps_done(result)
        assert all(len(step["answer"]) <= cap for step in step_tree.steps(result.tree))
        stored[reply_chars] = checkpointed_bytes(settings)
    assert stored[10 * cap] <= stored[cap] * 1.05  # uncut, ten times the text would be stored (about ten times the bytes)


def test_a_reply_far_beyond_max_reply_chars_is_rejected_and_retried(fake_llm, tmp_path):
    fake_llm.set_faults([Fault("huge_json", task="question", times=1, size=2_000_000)])
    result = deepstep.run(QUESTION, thread_id="t", settings=settings_for(fake_llm.base_url, tmp_path / "home", max_reply_chars=1_000))

    log = fake_llm.log()
    assert sum(entry["fault"] == "huge_json" for entry in log) == 1
    assert len(served(log, "question")) == len(step_tree.steps(result.tree)) + 1  # the rejected one was asked again
    assert_all_steps_done(result)


def test_the_hostile_replies_are_served_by_the_fake_server_run_alone(tmp_path):
    """`python -m deepstep.testing.fake_llm --fault KIND` serves the same hostile replies as FakeLLMServer."""
    process = subprocess.Popen(
        [sys.executable, "-m", "deepstep.testing.fake_llm", "--port", "0", "--fault", "html:times=1", "--fault", "huge_json:size=5000"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        base_url = process.stdout.readline().split()[-1]
        request = {"messages": [{"role": "user", "content": "hi"}]}
        html = httpx.post(f"{base_url}/chat/completions", json=request, timeout=30)
        huge = httpx.post(f"{base_url}/chat/completions", json=request, timeout=30)
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html") and html.text.startswith("<!DOCTYPE html>")
    assert len(huge.json()["choices"][0]["message"]["content"]) == 5000


def embedded_env(home: Path, **settings: object) -> dict[str, str]:
    """No model server configured (the stand-in is the embedded model), and the user's OpenAI key set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEEPSTEP_", "OPENAI_"))}
    env.update(DEEPSTEP_HOME=str(home), DEEPSTEP_CORPUS=str(CORPUS), DEEPSTEP_LLAMA_SERVER_MODULE=STAND_IN, OPENAI_API_KEY=USER_KEY)
    env.update({f"DEEPSTEP_{name.upper()}": str(value) for name, value in settings.items()})
    return env


def test_a_stale_state_file_does_not_hand_the_key_and_prompts_to_whoever_holds_the_port(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    with FakeLLMServer() as foreign:  # answers anything, like any OpenAI-compatible server
        # What a killed run left behind: its server is gone, another program holds the port now.
        state = home / llm_server.STATE_FILE
        state.write_text(json.dumps({"base_url": foreign.base_url, "pid": os.getpid(), "model_path": "m.gguf"}))
        state.chmod(0o600)
        env = embedded_env(home, max_steps=2, rollouts=0, max_retries=0)
        done = subprocess.run(cli_command("run", QUESTION), env=env, capture_output=True, text=True, timeout=300)

        assert foreign.log() == []  # not one prompt, and so never the key
    # The run started deepstep's own server, which takes its own key only: a call with the user's key would fail.
    assert done.returncode == 0, done.stderr
    assert "2/2 steps done" in done.stderr


def test_llm_serve_on_a_busy_port_fails_instead_of_serving_a_foreign_server(tmp_path):
    with FakeLLMServer() as foreign:
        process = subprocess.Popen(
            cli_command("llm", "serve", "--port", str(foreign.port)), env=embedded_env(tmp_path / "home"), stderr=subprocess.PIPE, text=True
        )
        try:
            code = process.wait(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        stderr = process.stderr.read()
        assert foreign.log() == []
    assert code == 2, stderr
    assert f"port {foreign.port} on 127.0.0.1 is in use" in stderr and "ready" not in stderr and "Traceback" not in stderr


def users(home: Path) -> list[int] | None:
    path = home / llm_server.USERS_FILE
    return [int(pid) for pid in path.read_text().split()] if path.exists() else None


def control(info: llm_server.ServerInfo, path: str) -> dict:
    """The stand-in's test routes (hold and release requests, its health) with the server's own key."""
    root = info.base_url.removesuffix("/v1")
    headers = {"Authorization": f"Bearer {info.api_key}"}
    if path == "/_health":
        return httpx.get(root + path, headers=headers, timeout=10).json()
    return httpx.post(root + path, json={}, headers=headers, timeout=10).json()


def test_a_run_does_not_stop_the_embedded_server_another_run_still_uses(tmp_path):
    home = tmp_path / "home"
    owner = llm_server.embedded_server(home, module=STAND_IN)  # this process started the server
    info = owner.__enter__()
    left = threading.Event()

    def leave() -> None:
        owner.__exit__(None, None, None)
        left.set()

    control(info, "/_hold")
    other = subprocess.Popen(cli_command("run", QUESTION), env=embedded_env(home, max_steps=2, rollouts=1), stderr=subprocess.PIPE, text=True)
    try:
        while control(info, "/_health")["in_flight"] < 1:  # the second run reused the server: its first call is held there
            assert other.poll() is None, other.stderr.read()
            time.sleep(0.05)
        leaving = threading.Thread(target=leave)
        leaving.start()
        # The first run is done with the server: it has left the users (or, without them, stopped the server).
        while not left.is_set() and os.getpid() in (users(home) or [os.getpid()]):
            time.sleep(0.05)
        with contextlib.suppress(httpx.HTTPError):
            control(info, "/_release")
        stderr = other.communicate(timeout=300)[1]
        leaving.join(timeout=60)
    finally:
        if other.poll() is None:
            other.kill()
            other.wait()
    assert other.returncode == 0, stderr
    assert "2/2 steps done" in stderr
    assert left.is_set() and not llm_server.is_ready(info.base_url, api_key=info.api_key)  # stopped once its last user left


def test_a_small_compressed_reply_cannot_inflate_past_the_cap():
    """50 MB of gzip-compressed zeros (about 50 KB on the wire) is refused without inflating it whole."""
    import gzip
    import http.server
    import threading
    import tracemalloc

    from deepstep.model_http import UnusableReplyError, model_http_client

    bomb = gzip.compress(b"0" * 50_000_000)

    class Bomb(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(bomb)))
            self.end_headers()
            self.wfile.write(bomb)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Bomb)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        tracemalloc.start()
        with model_http_client(base_url, timeout=30, max_reply_chars=1000) as client, pytest.raises(UnusableReplyError, match="over"):
            client.post(f"{base_url}/chat/completions", json={"messages": []})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        server.shutdown()
        server.server_close()
    assert peak < 5_000_000  # the cap is about 76 KB; inflating the reply whole took 50 MB
