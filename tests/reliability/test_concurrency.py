"""Many threads on one SQLite checkpoint file at once: in one process, in separate processes,
and the same thread twice (refused cleanly). No step is lost or lands in another thread."""

from __future__ import annotations

import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import deepstep
from deepstep import step_tree
from deepstep.errors import DeepstepError, ThreadBusyError
from deepstep.testing import FakeLLMServer, Fault
from deepstep.testing.crash import answered, cli_command, cli_env, integrity_check

from .conftest import CORPUS, settings_for

# Each topic is in the test corpus: a topic it does not cover would end its steps as insufficient_evidence.
TOPICS = ["loss functions", "gradient descent", "learning rates", "photosynthesis", "volcanoes", "chlorophyll", "lava", "batch size"]
STEPS = 3
CALLS_PER_THREAD = 2 + STEPS * (3 + 3 * 1)


def question(topic: str) -> str:
    return f"What should I know about {topic}?"


def assert_thread_is_its_own(result: deepstep.RunResult, topic: str) -> None:
    """Every step of the thread is about its own question, and all are done."""
    assert step_tree.question_of(result.tree) == question(topic)
    steps = step_tree.steps(result.tree)
    assert len(steps) == STEPS and len({s["level"] for s in steps}) == STEPS
    for step in steps:
        assert step["status"] == "done", step["error"]
        assert step["name"].endswith(f"of {question(topic)}")  # the fake server names steps after the question
        assert topic in step["question"]


@pytest.fixture
def slow_server():
    with FakeLLMServer(latency_ms=15, steps=STEPS) as server:
        yield server


def test_eight_threads_at_once_in_one_process(slow_server, tmp_path):
    settings = settings_for(slow_server.base_url, tmp_path / "home", max_concurrency=2)
    with ThreadPoolExecutor(max_workers=len(TOPICS)) as pool:
        futures = {topic: pool.submit(deepstep.run, question(topic), thread_id=f"t{i}", settings=settings) for i, topic in enumerate(TOPICS)}
        results = {topic: future.result(timeout=240) for topic, future in futures.items()}
    for topic, result in results.items():
        assert_thread_is_its_own(result, topic)
        stored = deepstep.load(result.thread_id, settings=settings)
        assert step_tree.trees_equal(stored.tree, result.tree) and stored.markdown == result.markdown
    assert len(answered(slow_server.log())) == len(TOPICS) * CALLS_PER_THREAD
    assert integrity_check(settings.checkpoint_file) == "ok"


@pytest.mark.slow
def test_eight_processes_at_once_on_one_database(slow_server, tmp_path):
    home = tmp_path / "home"
    env = cli_env(slow_server.base_url, home, corpus=CORPUS, rollouts=1, max_concurrency=2, max_retries=0, report_layout="seed")
    processes = [
        subprocess.Popen(
            cli_command("run", question(topic), "--thread-id", f"p{i}"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        for i, topic in enumerate(TOPICS)
    ]
    errors = [p.communicate(timeout=300)[1] for p in processes]
    assert [p.returncode for p in processes] == [0] * len(TOPICS), errors
    settings = settings_for(slow_server.base_url, home)
    for i, topic in enumerate(TOPICS):
        assert_thread_is_its_own(deepstep.load(f"p{i}", settings=settings), topic)
    assert len(answered(slow_server.log())) == len(TOPICS) * CALLS_PER_THREAD
    assert integrity_check(settings.checkpoint_file) == "ok"


def test_the_same_thread_twice_at_once_is_refused_in_process(slow_server, tmp_path):
    settings = settings_for(slow_server.base_url, tmp_path / "home")
    topic = TOPICS[0]
    with ThreadPoolExecutor(max_workers=2) as pool:
        first = pool.submit(deepstep.run, question(topic), thread_id="same", settings=settings)
        while not slow_server.log():  # the first run holds the thread once it calls the model
            time.sleep(0.005)
        second = pool.submit(deepstep.run, question(topic), thread_id="same", settings=settings)
        with pytest.raises(ThreadBusyError, match="thread same is already running"):
            second.result(timeout=60)
        third = pool.submit(deepstep.resume, "same", settings=settings)
        with pytest.raises(ThreadBusyError):
            third.result(timeout=60)
        result = first.result(timeout=120)
    assert_thread_is_its_own(result, topic)
    assert len(answered(slow_server.log())) == CALLS_PER_THREAD  # the refused calls made no model call


@pytest.mark.slow
def test_the_same_thread_from_two_processes_is_refused_cleanly(slow_server, tmp_path):
    home = tmp_path / "home"
    env = cli_env(slow_server.base_url, home, corpus=CORPUS, rollouts=1, max_concurrency=1, max_retries=0, report_layout="seed")
    # One slow reply (not a timeout for the client) keeps the first run busy while the second starts.
    slow_server.set_faults([Fault("timeout", task="critique", times=1, seconds=10)])
    first = subprocess.Popen(
        cli_command("run", question("loss functions"), "--thread-id", "shared"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 60
        while not answered(slow_server.log()):
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read() if first.stderr else ""
            time.sleep(0.01)
        second = subprocess.run(cli_command("resume", "shared"), env=env, capture_output=True, text=True, timeout=60)
        assert second.returncode == 2, second.stderr
        assert "thread shared is already running in another process" in second.stderr and "Traceback" not in second.stderr
        settings = settings_for(slow_server.base_url, home)
        with pytest.raises(DeepstepError, match="already running"):
            deepstep.resume("shared", settings=settings)
        assert first.wait(timeout=120) == 0, first.stderr.read() if first.stderr else ""
    finally:
        if first.poll() is None:
            first.kill()
        first.wait()
    assert_thread_is_its_own(deepstep.load("shared", settings=settings), "loss functions")
    assert len(answered(slow_server.log())) == CALLS_PER_THREAD
