"""API keys never reach checkpoints, logs, exports, CLI output or error messages; every server
deepstep starts listens on 127.0.0.1 only."""

from __future__ import annotations

import logging
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

import deepstep
from deepstep import llm_server
from deepstep.testing import FakeLLMServer, Fault
from deepstep.testing.crash import cli_command, cli_env

from .conftest import CORPUS, QUESTION, settings_for

DOOMED = "Aspect 2 of"


def marker_key() -> str:
    return f"sk-proj-deepstepMARKER{secrets.token_hex(16)}"


def files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


@pytest.mark.slow
def test_the_key_never_leaves_the_process_even_when_the_server_echoes_it(tmp_path):
    key = marker_key()
    home, out = tmp_path / "home", tmp_path / "out"
    # A server that rejects the key for one step and echoes it back, like OpenAI's "Incorrect API key provided".
    with FakeLLMServer(steps=3) as server:
        server.set_faults([Fault("http401", task="critique", match=DOOMED)])
        env = {**cli_env(server.base_url, home, corpus=CORPUS, rollouts=1, max_retries=0, step_attempts=2), "OPENAI_API_KEY": key}
        run = subprocess.run(
            cli_command("run", QUESTION, "--thread-id", "k", "--out", str(out)), env=env, capture_output=True, text=True, timeout=120
        )
        assert any(e["status"] == 401 for e in server.log()), "the fault never fired"
        shown = subprocess.run(cli_command("show", "k", "--format", "json"), env=env, capture_output=True, text=True, timeout=60)
        resumed = subprocess.run(cli_command("resume", "k", "--out", str(out)), env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stderr  # the step failed ...
    assert "HTTP 401" in run.stderr and "Incorrect API key provided" in run.stderr  # ... with a readable reason
    assert shown.returncode == 0 and '"failed_steps"' in shown.stdout
    for label, text in [
        ("run stdout", run.stdout),
        ("run stderr", run.stderr),
        ("show --format json", shown.stdout),
        ("resume stderr", resumed.stderr + resumed.stdout),
    ]:
        assert key not in text, label
    stored = files_under(home) + files_under(out)
    assert any(p.name == "checkpoints.sqlite" for p in stored) and {"report.md", "table.csv"} <= {p.name for p in stored}
    for path in stored:  # the SQLite file with its WAL, the report, the table, the index
        assert key.encode() not in path.read_bytes(), path


def test_the_key_is_not_logged_at_debug_level(fake_llm, tmp_path, monkeypatch, caplog):
    key = marker_key()
    monkeypatch.setenv("OPENAI_API_KEY", key)
    settings = settings_for(fake_llm.base_url, tmp_path / "home", max_steps=2)
    fake_llm.set_faults([Fault("http401", task="refine", match=DOOMED), Fault("http500", task="evaluate", times=1)])
    with caplog.at_level(logging.DEBUG):
        result = deepstep.run(QUESTION, thread_id="logged", settings=settings)
    assert len(caplog.records) > 10, "debug logging was not captured"
    assert [f["name"].startswith(DOOMED) for f in result.failed_steps] == [True]
    assert key not in caplog.text
    assert key not in result.markdown and key not in repr(result.failed_steps) and key not in result.table().to_csv()
    # The error still says what happened, without the key.
    assert "HTTP 401" in result.failed_steps[0]["error"]


def test_a_rejected_key_during_planning_names_the_variable_not_the_key(fake_llm, tmp_path, monkeypatch):
    key = marker_key()
    monkeypatch.setenv("OPENAI_API_KEY", key)
    fake_llm.set_faults([Fault("http401", task="outline")])
    with pytest.raises(deepstep.ConfigError) as raised:
        deepstep.run(QUESTION, settings=settings_for(fake_llm.base_url, tmp_path / "home"))
    assert "OPENAI_API_KEY" in str(raised.value) and key not in str(raised.value)


def listening_addresses(pid: int) -> set[str]:
    """Local IPv4/IPv6 addresses of the TCP sockets ``pid`` listens on (from /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    addresses = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # 0A = LISTEN
                hex_address = local.split(":")[0]
                raw = bytes.fromhex(hex_address)
                if len(raw) == 4:
                    addresses.add(".".join(str(b) for b in reversed(raw)))
                else:
                    addresses.add(hex_address)
    return addresses


@pytest.mark.slow
def test_the_fake_server_listens_on_loopback_only(tmp_path):
    with FakeLLMServer() as server:
        assert server._httpd.server_address[0] == "127.0.0.1"
        assert listening_addresses(os.getpid()) >= {"127.0.0.1"}
    process = subprocess.Popen([sys.executable, "-m", "deepstep.testing.fake_llm", "--port", "0"], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None and process.stdout.readline().startswith("listening on http://127.0.0.1:")
        assert listening_addresses(process.pid) == {"127.0.0.1"}
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_the_embedded_server_command_binds_loopback():
    command = llm_server.server_command(8080, Path("model.gguf"), threads=1)
    host = command[command.index("--host") + 1]
    assert host == "127.0.0.1" and "0.0.0.0" not in command


@pytest.mark.slow
def test_the_embedded_server_listens_on_loopback_only(tmp_path):
    try:
        llm_server.gguf_path()
        llm_server._check_server_installed()
    except deepstep.ConfigError as missing:
        pytest.skip(f"embedded model not installed: {missing}")
    with llm_server.embedded_server(tmp_path / "home") as info:
        assert info.base_url.startswith("http://127.0.0.1:")
        deadline = time.monotonic() + 10
        while not listening_addresses(info.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert listening_addresses(info.pid) == {"127.0.0.1"}


def test_a_key_cut_off_by_a_shortened_message_is_still_removed(monkeypatch):
    from deepstep.redaction import without_api_keys

    key = marker_key()
    monkeypatch.setenv("OPENAI_API_KEY", key)
    monkeypatch.setenv("ANSWER_KEY", "short")
    settings = deepstep.Settings.build(roles={"answer": {"api_key_env": "ANSWER_KEY"}})
    assert without_api_keys(f"HTTP 401: Incorrect API key provided: {key[:30]} after 2 attempt(s)", settings) == (
        "HTTP 401: Incorrect API key provided: *** after 2 attempt(s)"
    )
    assert without_api_keys("a short answer", settings) == "a short answer"  # too short to be a key: left alone
