"""Bad input: one clear line and exit code 2 from the CLI, a typed DeepstepError from Python,
no model call, and nothing already checkpointed lost."""

from __future__ import annotations

import http.server
import socket
import sqlite3
import subprocess
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

import deepstep
from deepstep import step_tree
from deepstep.cli import app
from deepstep.errors import ConfigError, CorpusError, DeepstepError, InputError, ModelServerError, UnknownThreadError
from deepstep.testing import FakeLLMServer
from deepstep.testing.crash import cli_command, cli_env

from .conftest import CORPUS, QUESTION, settings_for

runner = CliRunner()
LONG_QUESTION = "Why is the loss minimised? " * 3800  # about 100 KB
KEPT = "kept"


def checkpoint_rows(database: Path) -> int:
    """The kept thread's checkpoints (a refused new thread may leave its own input checkpoint)."""
    with sqlite3.connect(database) as connection:
        return connection.execute("SELECT count(*) FROM checkpoints WHERE thread_id = ?", (KEPT,)).fetchone()[0]


@pytest.fixture
def home_with_a_thread(fake_llm, tmp_path, monkeypatch):
    """A home holding one finished thread, and the CLI environment pointing at it."""
    home = tmp_path / "home"
    settings = settings_for(fake_llm.base_url, home, max_steps=2)
    kept = deepstep.run(QUESTION, thread_id=KEPT, settings=settings)
    fake_llm.reset_log()
    for name, value in cli_env(fake_llm.base_url, home, corpus=CORPUS, rollouts=1, max_retries=0, max_steps=2, step_attempts=1).items():
        monkeypatch.setenv(name, value)
    return settings, kept, checkpoint_rows(settings.checkpoint_file)


def assert_nothing_lost(settings, kept, rows) -> None:
    assert checkpoint_rows(settings.checkpoint_file) == rows
    assert step_tree.trees_equal(deepstep.load(KEPT, settings=settings).tree, kept.tree)


@pytest.fixture(scope="module")
def not_a_model_server():
    """Two local servers that are not OpenAI-compatible: a plain static-file HTTP server and a TCP
    service that answers with an SSH banner."""
    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    web.RequestHandlerClass.log_message = lambda *args: None
    threading.Thread(target=web.serve_forever, daemon=True).start()
    banner = socket.create_server(("127.0.0.1", 0))

    def answer_with_banner() -> None:
        while True:
            try:
                connection, _ = banner.accept()
            except OSError:
                return
            with connection:
                connection.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")

    threading.Thread(target=answer_with_banner, daemon=True).start()
    yield {"http": f"http://127.0.0.1:{web.server_address[1]}/v1", "tcp": f"http://127.0.0.1:{banner.getsockname()[1]}/v1"}
    web.shutdown()
    banner.close()


def closed_port_url() -> str:
    with FakeLLMServer() as gone:
        return gone.base_url


CLI_CASES = [
    (["run", ""], {}, "question is empty"),
    (["run", " \t\n  "], {}, "question is empty"),
    (["run", "\x00\x07\x1b\u202e"], {}, "question is empty"),
    (["run", LONG_QUESTION], {}, "characters long; shorten it"),
    (["resume", "never-ran"], {}, "no thread never-ran"),
    (["show", "never-ran"], {}, "no thread never-ran"),
    (["run", QUESTION, "--thread-id", "../../etc/passwd"], {}, "invalid thread id"),
    (["resume", "a/b"], {}, "invalid thread id"),
    (["show", "..\\x", "--format", "json"], {}, "invalid thread id"),
    (["run", QUESTION, "--thread-id", KEPT], {}, f"thread {KEPT} already exists"),
    (["run", QUESTION, "--corpus", "/no/such/folder"], {}, "does not exist"),
    (["run", QUESTION, "--corpus", "{empty}"], {}, "has no readable"),
    (["run", QUESTION, "--rollouts", "-1"], {}, "rollouts"),
    (["run", QUESTION], {"DEEPSTEP_EXPLORATION_C": "-0.5"}, "exploration_c"),
    (["run", QUESTION], {"DEEPSTEP_ROLES": '{"writer": {"model": "x"}}'}, "unknown model role(s) writer"),
    (["run", QUESTION], {"DEEPSTEP_ROLES": "writer=gpt"}, "must be JSON"),
    (["run", QUESTION], {"DEEPSTEP_MAX_CONCURRENCY": "lots"}, "max_concurrency"),
    (["run", QUESTION, "--base-url", "not a url"], {}, "is not an http(s) URL"),
    (["run", QUESTION, "--base-url", "{closed}"], {}, "cannot reach the model server"),
    (["run", QUESTION, "--base-url", "{http}"], {}, "keeps failing (HTTP 501)"),
    (["run", QUESTION, "--base-url", "{tcp}"], {}, "cannot reach the model server"),
    (["show", KEPT, "--format", "pdf"], {}, "unknown format"),
]


@pytest.mark.parametrize(("args", "env", "message"), CLI_CASES, ids=[f"{i:02d}-{c[2][:24]}" for i, c in enumerate(CLI_CASES)])
def test_cli_bad_input_is_one_line_exit_2(home_with_a_thread, fake_llm, not_a_model_server, tmp_path, monkeypatch, args, env, message):
    (tmp_path / "empty").mkdir()
    places = {
        "{empty}": str(tmp_path / "empty"),
        "{closed}": closed_port_url(),
        "{http}": not_a_model_server["http"],
        "{tcp}": not_a_model_server["tcp"],
    }
    args = [places.get(arg, arg) for arg in args]
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)  # no uncaught error
    assert result.output.count("error:") == 1
    assert fake_llm.log() == []  # refused before any model call
    assert_nothing_lost(*home_with_a_thread)


API_CASES = [
    (lambda s: deepstep.run("", settings=s), InputError, "question is empty"),
    (lambda s: deepstep.run("\u200b \u00a0\x00", settings=s), InputError, "question is empty"),
    (lambda s: deepstep.run(LONG_QUESTION, settings=s), InputError, "characters long"),
    (lambda s: deepstep.resume("never-ran", settings=s), UnknownThreadError, "no thread never-ran"),
    (lambda s: deepstep.load("never-ran", settings=s), UnknownThreadError, "no thread never-ran"),
    (lambda s: deepstep.run(QUESTION, thread_id="../x", settings=s), InputError, "invalid thread id"),
    (lambda s: deepstep.load("/etc/passwd", settings=s), InputError, "invalid thread id"),
    (lambda s: deepstep.run(QUESTION, thread_id=KEPT, settings=s), InputError, "already exists"),
    (lambda s: deepstep.run(QUESTION, corpus="/no/such/folder", settings=s), CorpusError, "does not exist"),
    (lambda s: deepstep.run(QUESTION, corpus=CORPUS / "gradient-descent.md", settings=s), CorpusError, "is a file, not a folder"),
    (lambda s: deepstep.Settings.build(rollouts=-1), ConfigError, "rollouts"),
    (lambda s: deepstep.Settings.build(exploration_c=-1), ConfigError, "exploration_c"),
    (lambda s: deepstep.Settings.build(roles={"writer": {}}), ConfigError, "unknown model role"),
    (lambda s: deepstep.Settings.build(roles={"answer": {"temperature": 9}}), ConfigError, "roles.answer.temperature"),
    (
        lambda s: deepstep.run(QUESTION, settings=deepstep.Settings.build(**{**s.model_dump(), "base_url": "ftp://127.0.0.1/v1"})),
        ConfigError,
        "not an http(s) URL",
    ),
    (
        lambda s: deepstep.run(QUESTION, settings=deepstep.Settings.build(**{**s.model_dump(), "base_url": closed_port_url()})),
        ModelServerError,
        "cannot reach",
    ),
]


@pytest.mark.parametrize(("call", "error", "message"), API_CASES, ids=[f"{i:02d}-{c[1].__name__}" for i, c in enumerate(API_CASES)])
def test_api_bad_input_raises_a_typed_error(home_with_a_thread, fake_llm, call, error, message):
    settings = home_with_a_thread[0]
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")) as raised:
        call(settings)
    assert isinstance(raised.value, DeepstepError)
    assert "\n" not in str(raised.value)
    assert fake_llm.log() == []
    assert_nothing_lost(*home_with_a_thread)


def test_control_characters_are_stripped_and_mixed_scripts_kept(fast_settings, fake_llm):
    question = "What\x00 is a \x1b[31mloss\x07 function\u202e? 损失函数 и функция потерь, دالة الخسارة"
    result = deepstep.run(question, thread_id="mixed", settings=fast_settings)
    stored = step_tree.question_of(result.tree)
    assert stored == "What is a [31mloss function? 损失函数 и функция потерь, دالة الخسارة"
    assert not any(ord(ch) < 32 or 0x202A <= ord(ch) <= 0x202E for ch in result.markdown.replace("\n", ""))
    assert result.status == "done" and result.markdown.lstrip().startswith(f"# {stored}")


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["garbage", "truncated", "corrupt-page"])
def test_a_damaged_checkpoint_database_is_reported_and_left_untouched(fake_llm, tmp_path, damage):
    settings = settings_for(fake_llm.base_url, tmp_path / "home", max_steps=2)
    deepstep.run(QUESTION, thread_id=KEPT, settings=settings)
    database = settings.checkpoint_file
    with sqlite3.connect(database) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = database.read_bytes()
    damaged = {
        "garbage": b"this is not a database " * 200,
        "truncated": data[: len(data) // 2],
        "corrupt-page": data[:4096] + b"\xff" * (len(data) - 8192) + data[-4096:],
    }[damage]
    database.write_bytes(damaged)
    for suffix in ("-wal", "-shm"):
        Path(f"{database}{suffix}").unlink(missing_ok=True)
    fake_llm.reset_log()

    for attempt in (
        lambda: deepstep.load(KEPT, settings=settings),
        lambda: deepstep.resume(KEPT, settings=settings),
        lambda: deepstep.run(QUESTION, thread_id="other", settings=settings),
    ):
        with pytest.raises(ConfigError, match="checkpoint database .* (unreadable|damaged)"):
            attempt()
    env = cli_env(fake_llm.base_url, settings.home, corpus=CORPUS)
    shown = subprocess.run(cli_command("show", KEPT), env=env, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 2 and "checkpoint database" in shown.stderr and "Traceback" not in shown.stderr
    assert database.read_bytes() == damaged  # never "repaired" by overwriting what may be recoverable
    assert fake_llm.log() == []


def test_a_corrupt_index_cache_is_rebuilt(fake_llm, tmp_path):
    settings = settings_for(fake_llm.base_url, tmp_path / "home", max_steps=2)
    first = deepstep.run(QUESTION, thread_id="first", settings=settings)
    cached = [p for p in settings.index_dir.rglob("*") if p.is_file()]
    assert cached, "the first run saved no index"
    for path in cached:
        path.write_bytes(b"\x00garbage{" + path.read_bytes()[:7])
    from deepstep import retrieval

    retrieval._corpus_retriever.cache_clear()  # a new process: the index comes from disk
    second = deepstep.run(QUESTION, thread_id="second", settings=settings)
    assert second.status == "done"
    assert [s["contexts"] for s in step_tree.steps(second.tree)] == [s["contexts"] for s in step_tree.steps(first.tree)]
    retrieval._corpus_retriever.cache_clear()
    from deepstep.retrieval import BM25Retriever

    # The rebuilt cache loads again.
    assert BM25Retriever.from_directory(CORPUS, cache_dir=settings.index_dir).passages


def test_unwritable_output_folder_is_one_line_and_the_run_is_kept(fake_llm, tmp_path, monkeypatch):
    for name, value in cli_env(fake_llm.base_url, tmp_path / "home", corpus=CORPUS, rollouts=1, max_steps=2).items():
        monkeypatch.setenv(name, value)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = runner.invoke(app, ["run", QUESTION, "--thread-id", "out", "--out", str(blocker / "sub")])
    assert result.exit_code == 2 and "cannot write the report" in result.output and "Traceback" not in result.output
    assert deepstep.load("out", settings=settings_for(fake_llm.base_url, tmp_path / "home")).status == "done"
