"""Hostile input (issue 14): answers, files, replies and settings built to break deepstep get one
clear line (exit 2) or a typed DeepstepError, never a traceback, and never cost the thread.

- a rejected review answer leaves the plan waiting for review: the next answer is applied;
- huge numbers and deep nesting in model replies and in `resume --steps` files are refused
  like any other bad JSON (a critic's unusable score falls back to 0, the step keeps its answer);
- a checkpoint database another process keeps locked stops a run before its first model call
  (mid-run: at the first checkpoint that cannot wait longer), with the right reason;
- API arguments of the wrong type raise the DeepstepError a wrong value would, not a TypeError;
- settings that would fail deep in a run (infinite timeout, token counts past 2^64, JSON nested too
  deeply, an empty DEEPSTEP_HOME meaning the current directory) are refused before it starts;
- credentials in URLs (user info or ?api-key= in OPENAI_BASE_URL, a Postgres password anywhere)
  are never stored in checkpoints or printed, whatever the URL's shape;
- Ctrl-C while the command line starts, or several in a row, exits 130 with one line
  (tests/reliability/test_interrupts.py covers Ctrl-C during the steps).
"""

from __future__ import annotations

import json
import resource
import signal
import sqlite3
import subprocess
from pathlib import Path

import pytest
from langgraph.types import Command
from typer.testing import CliRunner

import deepstep
from deepstep import step_tree
from deepstep.api import _open_graph, _run_config, run_tree
from deepstep.cli import app
from deepstep.errors import ConfigError, CorpusError, DeepstepError, InputError
from deepstep.parsing import RefineResponse, ReplyParseError, Score, StepList, parse_reply
from deepstep.store import read_store
from deepstep.testing.crash import cli_command, cli_env
from deepstep.testing.fake_llm import Fault

from .conftest import CORPUS, QUESTION, settings_for

DEEP = 100_000  # far past Python's recursion limit
HUGE = "9" * 5000  # past Python's 4300-digit int/str conversion limit
EDITED = [{"name": "Only this step", "description": "The edited plan.", "level": "0"}]


@pytest.fixture
def awaiting_review(fake_llm, tmp_path):
    """A thread whose plan waits for review, and the settings it ran with."""
    settings = settings_for(fake_llm.base_url, tmp_path / "home", review=True, max_steps=2)
    paused = deepstep.run(QUESTION, thread_id="plan", settings=settings)
    assert paused.status == "awaiting_review"
    fake_llm.reset_log()
    return settings


# Step files a user (or a broken tool) may hand to `deepstep resume ID --steps FILE`.
BAD_STEP_FILES = {
    "empty-list": (b"[]", "the edited plan has no valid steps"),
    "not-utf8": (b'\xff\xfe[{"name": "x", "level": "0"}]', "UTF-8"),
    "deep-nesting": (b"[" * DEEP + b"]" * DEEP, "nested too deeply"),
    "nested-in-a-step": (b'[{"name": ' + b"[" * 900 + b"]" * 900 + b', "level": "0"}]', "name must be text"),
    "huge-level": (b'[{"name": "x", "level": ' + HUGE.encode() + b"}]", "the edited plan has no valid steps"),
    "not-json": (b"name: x", "cannot read the step list"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(BAD_STEP_FILES))
def test_rejected_steps_file_leaves_the_plan_waiting_and_the_next_answer_applies(awaiting_review, fake_llm, tmp_path, case):
    settings = awaiting_review
    content, message = BAD_STEP_FILES[case]
    bad = tmp_path / "bad.json"
    bad.write_bytes(content)
    env = cli_env(fake_llm.base_url, settings.home, corpus=CORPUS, rollouts=1, max_retries=0)
    rejected = subprocess.run(cli_command("resume", "plan", "--steps", str(bad)), env=env, capture_output=True, text=True, timeout=120)
    assert rejected.returncode == 2, rejected.stderr
    assert message in rejected.stderr and "Traceback" not in rejected.stderr
    assert rejected.stderr.count("error:") == 1
    assert fake_llm.log() == []
    assert deepstep.load("plan", settings=settings).status == "awaiting_review"

    good = tmp_path / "good.json"
    good.write_text(json.dumps(EDITED))
    applied = subprocess.run(cli_command("resume", "plan", "--steps", str(good)), env=env, capture_output=True, text=True, timeout=120)
    assert applied.returncode == 0, applied.stderr
    done = deepstep.load("plan", settings=settings)
    assert done.status == "done"
    assert [s["name"] for s in step_tree.steps(done.tree)] == ["Only this step"]


@pytest.mark.parametrize("answer", [{"steps": []}, [], {"steps": "all of them"}, {"steps": [[[[]]]]}, {"steps": [{"name": {"a": 1}, "level": "0"}]}])
def test_rejected_review_answer_then_approval_runs_the_proposed_plan(awaiting_review, fake_llm, answer):
    settings = awaiting_review
    proposed = deepstep.load("plan", settings=settings).review_request["steps"]
    with pytest.raises(InputError):
        deepstep.resume("plan", review=answer, settings=settings)
    assert fake_llm.log() == []
    done = deepstep.resume("plan", review=True, settings=settings)
    assert done.status == "done" and not done.failed_steps
    assert [s["level"] for s in step_tree.steps(done.tree)] == [s["level"] for s in proposed]


def test_bad_answer_given_to_the_graph_itself_asks_again(awaiting_review):
    """Studio and code driving the graph send Command(resume=...) without the API's check: the
    review node then asks again (the reason in the request's error) and applies the next answer."""
    settings = awaiting_review
    with _open_graph(settings, None) as graph:
        config = _run_config("plan", settings)
        for bad in ({"steps": []}, [[[[]]]], {"steps": [{"name": "x", "level": HUGE}]}):
            graph.invoke(Command(resume=bad), config, context=settings)
            request = next(i.value for task in graph.get_state(config).tasks for i in task.interrupts)
            assert request["error"] and request["steps"]
        graph.invoke(Command(resume={"steps": EDITED}), config, context=settings)
    done = deepstep.load("plan", settings=settings)
    assert done.status == "done"
    assert [s["name"] for s in step_tree.steps(done.tree)] == ["Only this step"]


# Model replies with numbers too large for Python's int/float conversions and nesting past the
# recursion limit: each must be a parse error (repaired, then the fallback), never a crash.
HOSTILE_REPLIES = [
    ('{"score": 1e999}', Score),
    ('{"score": -1e999}', Score),
    ("1e999", Score),
    ('{"score": ' + HUGE + "}", Score),
    ("Score: " + HUGE, Score),
    ("Score: 1" + "0" * 400 + ".5/100", Score),
    ('{"score": ' + "[" * DEEP + "]" * DEEP + "}", Score),
    ('{"steps": ' + "[" * DEEP + "]" * DEEP + "}", StepList),
    ('{"steps": [{"name": "a", "level": ' + HUGE + "}]}", StepList),
    ('{"steps": [{"name": "a", "level": "' + HUGE + '"}]}', StepList),
    ('{"steps": [{"name": "a", "level": "0>' + HUGE + '"}]}', StepList),
    ('{"steps": [{"name": ' + '{"a": ' * 5000 + "1" + "}" * 5000 + ', "level": "0"}]}', StepList),
    ('{"steps": [{"name": ' + HUGE + ', "level": "0"}]}', StepList),
    ('{"answer": ' + "[" * DEEP + "]" * DEEP + "}", RefineResponse),
    ("{'answer': " + "[" * DEEP + "]" * DEEP + "}", RefineResponse),
]


@pytest.mark.parametrize(("reply", "schema"), HOSTILE_REPLIES, ids=[f"{i:02d}-{s.__name__}" for i, (_, s) in enumerate(HOSTILE_REPLIES)])
def test_huge_numbers_and_deep_nesting_in_replies_are_parse_errors(reply, schema):
    with pytest.raises(ReplyParseError):
        parse_reply(reply, schema)


def test_levels_too_long_for_int_are_no_levels():
    assert step_tree.normalize_level("0>" + HUGE) is None
    assert step_tree.normalize_level(HUGE) is None
    assert step_tree.normalize_level("007>01") == "7>1"
    built = step_tree.build_tree(QUESTION, "", [step_tree.StepSpec("a", "", HUGE), step_tree.StepSpec("b", "", "0")], max_steps=4, max_depth=3)
    assert [s["name"] for s in step_tree.steps(built.tree)] == ["b"] and "dropped step 'a'" in built.warnings[0]


SEED_STORE = Path(__file__).resolve().parents[1] / "data" / "seed_store" / "task_step_store.json"
STORE_EDITS = {
    "huge-level-number": ('"task_step_level": "0>2"', '"task_step_level": ' + HUGE),
    "huge-level-text": ('"task_step_level": "0>2"', '"task_step_level": "0>' + HUGE + '"'),
    "huge-score": ('"score": 0.83', '"score": ' + HUGE),
    "infinite-score": ('"score": 0.83', '"score": 1e999'),
}


@pytest.mark.parametrize("case", list(STORE_EDITS))
def test_store_with_numbers_too_long_for_python_is_refused_in_one_line(tmp_path, case):
    old, new = STORE_EDITS[case]
    text = SEED_STORE.read_text(encoding="utf-8")
    assert old in text
    (tmp_path / "task_step_store.json").write_text(text.replace(old, new, 1), encoding="utf-8")
    with pytest.raises(InputError) as refused:
        read_store(tmp_path)
    assert len(str(refused.value)) < 300  # names the field, never prints the number


@pytest.fixture
def locked_home(fake_llm, tmp_path):
    """A home with one finished thread, and a way to hold its database's write lock from another connection."""
    settings = settings_for(fake_llm.base_url, tmp_path / "home", max_steps=2)
    kept = deepstep.run(QUESTION, thread_id="kept", settings=settings)
    fake_llm.reset_log()
    holder = sqlite3.connect(settings.checkpoint_file, isolation_level=None)
    yield settings, kept, holder
    holder.close()


@pytest.mark.slow
def test_locked_database_stops_the_run_before_any_model_call(locked_home, fake_llm):
    settings, kept, holder = locked_home
    holder.execute("BEGIN IMMEDIATE")  # another process writing, and never finishing
    env = cli_env(fake_llm.base_url, settings.home, corpus=CORPUS, rollouts=1, max_retries=0, max_steps=2)
    refused = subprocess.run(cli_command("run", QUESTION, "--thread-id", "next"), env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2, refused.stderr
    assert "is locked by another process" in refused.stderr and "unreadable" not in refused.stderr
    assert "Traceback" not in refused.stderr and refused.stderr.count("error:") == 1
    assert fake_llm.log() == []
    # Reading needs no write lock: the finished thread still shows.
    assert step_tree.trees_equal(deepstep.load("kept", settings=settings).tree, kept.tree)


@pytest.mark.slow
def test_database_locked_mid_run_fails_once_with_the_reason_and_resumes(locked_home, fake_llm):
    settings, _, holder = locked_home
    env = cli_env(fake_llm.base_url, settings.home, corpus=CORPUS, rollouts=1, max_retries=0, max_steps=2)
    fake_llm.hold()
    run = subprocess.Popen(cli_command("run", QUESTION, "--thread-id", "next"), env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert fake_llm.wait_in_flight(1)  # past the writable check, in its first model call
        holder.execute("BEGIN IMMEDIATE")
    finally:
        fake_llm.release()
    stderr = run.communicate(timeout=300)[1]
    assert run.returncode == 2, stderr
    assert "is locked by another process" in stderr and "deepstep resume" in stderr
    assert "Traceback" not in stderr and stderr.count("error:") == 1
    holder.execute("ROLLBACK")
    resumed = subprocess.run(cli_command("resume", "next"), env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert deepstep.load("next", settings=settings).status == "done"


# Python callers passing the wrong type get the typed error a wrong value gets, naming the argument.
WRONG_TYPES = [
    (lambda s: deepstep.run(None, settings=s), InputError, "question must be text"),
    (lambda s: deepstep.run(123, settings=s), InputError, "question must be text"),
    (lambda s: deepstep.run(b"What is a loss function?", settings=s), InputError, "question must be text"),
    (lambda s: deepstep.run(QUESTION, thread_id=123, settings=s), InputError, "thread id must be text"),
    (lambda s: deepstep.run(QUESTION, corpus=42, settings=s), InputError, "corpus must be the path of a folder"),
    (lambda s: deepstep.run(QUESTION, corpus=CORPUS / "gradient-descent.md", settings=s), CorpusError, "is a file, not a folder"),
    (lambda s: deepstep.run(QUESTION, settings={"rollouts": 1}), ConfigError, "settings must be a deepstep.Settings"),
    (lambda s: deepstep.run(QUESTION, settings=s, on_progress="print"), InputError, "on_progress must be a function"),
    (lambda s: deepstep.resume(None, settings=s), InputError, "thread id must be text"),
    (lambda s: deepstep.resume(["kept"], settings=s), InputError, "thread id must be text"),
    (lambda s: deepstep.load(None, settings=s), InputError, "thread id must be text"),
    (lambda s: deepstep.load("kept", settings="home"), ConfigError, "settings must be a deepstep.Settings"),
    (lambda s: deepstep.import_store(None, settings=s), InputError, "path of its folder"),
    (lambda s: deepstep.import_store(CORPUS, settings={"rollouts": 1}), ConfigError, "settings must be a deepstep.Settings"),
    (lambda s: run_tree({"nodes": []}, settings=s), InputError, "tree must be a step tree"),
]


@pytest.mark.parametrize(("call", "error", "message"), WRONG_TYPES, ids=[f"{i:02d}-{c[2][:20]}" for i, c in enumerate(WRONG_TYPES)])
def test_wrong_argument_types_raise_a_deepstep_error(fake_llm, tmp_path, call, error, message):
    settings = settings_for(fake_llm.base_url, tmp_path / "home", max_steps=2)
    with pytest.raises(error, match=message):
        call(settings)
    assert fake_llm.log() == []


# Settings that validated, then failed deep in a run (or silently meant the current directory).
BAD_SETTINGS = [
    ("DEEPSTEP_TIMEOUT", "inf", "timeout: Input should be a finite number"),
    ("DEEPSTEP_TIMEOUT", "1e300", "timeout: Input should be less than or equal to 86400"),
    ("DEEPSTEP_MAX_TOKENS", str(2**64), "max_tokens: Input should be less than or equal to"),
    ("DEEPSTEP_CONTEXT_TOKENS", str(2**64), "context_tokens: Input should be less than or equal to"),
    ("DEEPSTEP_OUTLINE_TOKENS", str(2**64), "outline_tokens: Input should be less than or equal to"),
    ("DEEPSTEP_EXPLORATION_C", "nan", "exploration_c: Input should be a finite number"),
    ("DEEPSTEP_ROLES", "[" * DEEP + "]" * DEEP, "nested too deeply"),
    ("DEEPSTEP_ROLES", '{"answer": {"max_tokens": 18446744073709551616}}', "roles.answer.max_tokens"),
    ("DEEPSTEP_ROLES", '{"answer": {"timeout": 1e999}}', "roles.answer.timeout"),
    ("DEEPSTEP_PRICES", '{"m": ' + "[" * DEEP + "]" * DEEP + "}", "nested too deeply"),
    ("DEEPSTEP_PRICES", '{"m": {"prompt": 1e999, "completion": 1}}', "prices.m.prompt: Input should be a finite number"),
    ("DEEPSTEP_HOME", "", "home: is empty"),
    ("DEEPSTEP_CORPUS", " ", "corpus: is empty"),
]


@pytest.mark.parametrize(("name", "value", "message"), BAD_SETTINGS, ids=[f"{i:02d}-{c[0][9:]}" for i, c in enumerate(BAD_SETTINGS)])
def test_settings_that_would_fail_later_are_refused_up_front(fake_llm, tmp_path, monkeypatch, name, value, message):
    for variable, setting in cli_env(fake_llm.base_url, tmp_path / "home", corpus=CORPUS, rollouts=1, max_retries=0).items():
        monkeypatch.setenv(variable, setting)
    monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["run", QUESTION])
    assert result.exit_code == 2, result.output
    assert message in result.output and result.output.count("error:") == 1
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert fake_llm.log() == []
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written, neither in HOME nor here


def test_credentials_in_the_model_server_url_are_never_stored_or_printed(fake_llm, tmp_path):
    home = tmp_path / "home"
    with_user_info = fake_llm.base_url.replace("http://", "http://someone:PASSWORD-IN-URL@")
    done = deepstep.run(QUESTION, thread_id="userinfo", settings=settings_for(with_user_info, home, max_steps=2))
    assert done.status == "done"
    with pytest.raises(DeepstepError) as failed:  # the client cannot use such a URL: the server answers 404
        deepstep.run(QUESTION, thread_id="query", settings=settings_for(fake_llm.base_url + "?api-key=KEY-IN-URL", home, max_steps=2))
    assert "KEY-IN-URL" not in str(failed.value) and "api-key=***" in str(failed.value)
    stored = b"".join(path.read_bytes() for path in home.iterdir() if path.name.startswith("checkpoints.sqlite"))
    assert b"PASSWORD-IN-URL" not in stored  # neither in metadata nor in the state's settings
    with sqlite3.connect(home / "checkpoints.sqlite") as database:
        metadata = " ".join(row[0].decode() if isinstance(row[0], bytes) else row[0] for row in database.execute("SELECT metadata FROM checkpoints"))
    assert "KEY-IN-URL" not in metadata and "PASSWORD-IN-URL" not in metadata


POSTGRES_URLS = [
    ("postgresql://me:PW-IN-URL@127.0.0.1:99999/db", "postgresql://me:***@127.0.0.1:99999/db"),
    ("postgresql://me:PW-IN-URL@127.0.0.1:1,127.0.0.2:2/db", "postgresql://me:***@127.0.0.1:1,127.0.0.2:2/db"),
    ("postgresql://me@127.0.0.1:1/db?password=PW-IN-URL&sslmode=disable", "postgresql://me@127.0.0.1:1/db?password=***&sslmode=disable"),
    ("postgresql://me:PW-IN-URL@[::1/db", "postgresql://me:***@[::1/db"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("url", "shown"), POSTGRES_URLS, ids=["port-out-of-range", "multi-host", "password-parameter", "unclosed-ipv6"])
def test_postgres_urls_are_redacted_in_errors_whatever_their_shape(tmp_path, url, shown):
    pytest.importorskip("psycopg")
    env = cli_env("http://127.0.0.1:9/v1", tmp_path / "home", database_url=url)
    result = subprocess.run(cli_command("show", "some-thread"), env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert shown in result.stderr
    assert "PW-IN-URL" not in result.stderr and "Traceback" not in result.stderr


def _loaded(pid: int, library: str) -> bool:
    """Whether process ``pid`` has mapped ``library`` (a compiled extension it imports)."""
    try:
        return library in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc to see how far the start-up got")
@pytest.mark.parametrize("signals", [1, 3])
# pydantic_core: the command line imports its commands; ormsgpack: `run` imports LangGraph (the API).
@pytest.mark.parametrize("library", ["pydantic_core", "ormsgpack"])
def test_ctrl_c_while_the_cli_starts_exits_130_without_a_traceback(fake_llm, tmp_path, library, signals):
    """Ctrl-C (once, or several in a row) while the command line still imports its modules, before
    any model call: one line, exit 130, no traceback."""
    env = cli_env(fake_llm.base_url, tmp_path / "home", corpus=CORPUS, rollouts=1, max_retries=0)
    process = subprocess.Popen(cli_command("run", QUESTION), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while not _loaded(process.pid, library) and process.poll() is None:
            pass
        for _ in range(signals):
            process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    assert stderr.count("interrupted") == 1
    assert fake_llm.log() == []


@pytest.mark.parametrize(
    ("kind", "task"),
    [("huge_numbers", "evaluate"), ("deep_json", "evaluate"), ("huge_numbers", "steps"), ("deep_json", "steps"), ("deep_json", "refine")],
)
def test_replies_with_huge_numbers_or_deep_nesting_fall_back_and_keep_every_answer(fake_llm, tmp_path, kind, task):
    """The critic's unusable score falls back to 0 (README), an unusable plan to the outline's, an
    unusable refinement to the answer it refines: the run finishes with every step answered."""
    fake_llm.set_faults([Fault(kind=kind, task=task)])
    result = deepstep.run(QUESTION, settings=settings_for(fake_llm.base_url, tmp_path / "home", max_steps=2))
    assert result.status == "done" and result.failed_steps == []
    assert all(step["status"] == "done" and step["answer"] for step in step_tree.steps(result.tree))
    role = {"steps": "decompose"}.get(task, task)
    assert result.usage[role]["fallbacks"] >= 1


@pytest.mark.slow
def test_a_database_that_cannot_grow_is_reported_before_any_model_call(locked_home, fake_llm):
    """A file-size limit makes every write past 8 KB fail, as a full disk does: the run stops before
    its first model call with what to check, not "unreadable ... move it away"."""
    settings, kept, _ = locked_home
    env = cli_env(fake_llm.base_url, settings.home, corpus=CORPUS, rollouts=1, max_retries=0, max_steps=2)

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))  # Python ignores SIGXFSZ: writes fail instead

    refused = subprocess.run(
        cli_command("run", QUESTION, "--thread-id", "next"), env=env, capture_output=True, text=True, timeout=120, preexec_fn=small_files
    )
    assert refused.returncode == 2, refused.stderr
    assert "cannot write the checkpoint database" in refused.stderr and "free space" in refused.stderr
    assert "unreadable" not in refused.stderr and "Traceback" not in refused.stderr
    assert fake_llm.log() == []
    assert step_tree.trees_equal(deepstep.load("kept", settings=settings).tree, kept.tree)
