"""The per-thread run lock with the SQLite backend (an flock beside the checkpoint database)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TEST_CORPUS

import deepstep
from deepstep.configuration import Settings
from deepstep.errors import ThreadBusyError, UnknownThreadError
from deepstep.locks import advisory_key, lock_file, thread_lock
from deepstep.testing import FakeLLMServer
from deepstep.testing.crash import cli_command

BUSY = r"thread {thread} is already running in another process \(pid {pid}\); wait for it, or pick another thread id"

HOLD_LOCK = """
import sys, time
from pathlib import Path
from deepstep.configuration import Settings
from deepstep.locks import thread_lock
with thread_lock(Settings.build(home=Path(sys.argv[1])), sys.argv[2]):
    print("locked", flush=True)
    time.sleep(600)
"""


def test_a_second_holder_is_refused_with_the_holders_pid(tmp_path):
    settings = Settings.build(home=tmp_path)
    with thread_lock(settings, "t1"):
        with pytest.raises(ThreadBusyError, match=BUSY.format(thread="t1", pid=os.getpid())), thread_lock(settings, "t1"):
            pass
        with thread_lock(settings, "t2"):  # other threads run freely
            pass
    with thread_lock(settings, "t1"):  # released on exit
        pass


def test_the_lock_is_released_when_the_body_fails(tmp_path):
    settings = Settings.build(home=tmp_path)
    with pytest.raises(RuntimeError), thread_lock(settings, "t1"):
        raise RuntimeError("boom")
    with thread_lock(settings, "t1"):
        pass


def test_lock_files_live_under_home_locks_with_safe_distinct_names(tmp_path):
    settings = Settings.build(home=tmp_path)
    path = lock_file(settings, "a.b-c_1")
    assert path.parent == tmp_path / "locks" and path.name.startswith("a.b-c_1-")
    assert lock_file(settings, "x/../y").parent == tmp_path / "locks"
    assert lock_file(settings, "x/y") != lock_file(settings, "x_y")
    assert advisory_key("t1") == advisory_key("t1") != advisory_key("t2")
    assert -(2**63) <= advisory_key("t1") < 2**63


@pytest.mark.slow
def test_a_killed_holder_releases_the_lock(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path), "t1"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        settings = Settings.build(home=tmp_path)
        with pytest.raises(ThreadBusyError, match=BUSY.format(thread="t1", pid=holder.pid)), thread_lock(settings, "t1"):
            pass
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        with thread_lock(settings, "t1"):  # the kernel dropped the flock with the process
            pass
    finally:
        holder.kill()
        holder.wait()


def test_run_and_resume_refuse_a_thread_that_is_running(settings):
    with thread_lock(settings, "busy"):
        with pytest.raises(ThreadBusyError, match=BUSY.format(thread="busy", pid=os.getpid())):
            deepstep.run("What is a loss function?", thread_id="busy", settings=settings)
        with pytest.raises(ThreadBusyError):
            deepstep.resume("busy", settings=settings)
    with pytest.raises(UnknownThreadError):  # the refused run wrote nothing
        deepstep.load("busy", settings=settings)
    assert deepstep.run("What is a loss function?", thread_id="busy", settings=settings).status == "done"


def cli_env(home: Path, base_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEEPSTEP_", "OPENAI_"))}
    env.update(OPENAI_BASE_URL=base_url, DEEPSTEP_HOME=str(home), DEEPSTEP_CORPUS=str(TEST_CORPUS), DEEPSTEP_ROLLOUTS="1", DEEPSTEP_MAX_RETRIES="0")
    return env


@pytest.mark.slow
def test_cli_refuses_a_second_run_of_the_same_thread(tmp_path):
    # The server holds the first run's model calls, so it is mid-run (holding the lock) until released.
    with FakeLLMServer() as server:
        env = cli_env(tmp_path / "home", server.base_url)
        command = cli_command("run", "What is a loss function?", "--thread-id", "same")
        server.hold()
        try:
            first = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            assert server.wait_in_flight(1, timeout=120), "the first run never called the model"
            second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
            assert first.poll() is None, "the first run ended before the second was refused"
        finally:
            server.release()
        assert second.returncode == 2 and "Traceback" not in second.stderr
        assert second.stderr.strip().splitlines()[-1] == (
            f"error: thread same is already running in another process (pid {first.pid}); wait for it, or pick another thread id"
        )
        _, stderr = first.communicate(timeout=240)
        assert first.returncode == 0, stderr
    result = deepstep.load("same", settings=Settings.build(home=tmp_path / "home"))
    assert result.status == "done" and not result.failed_steps
