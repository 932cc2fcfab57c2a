"""The deepstep command: exit codes, one-line errors without tracebacks, outputs."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from deepstep.cli import app
from deepstep.testing import Fault

runner = CliRunner()


@pytest.fixture
def cli_env(fake_llm, monkeypatch, tmp_path):
    from conftest import TEST_CORPUS

    monkeypatch.setenv("OPENAI_BASE_URL", fake_llm.base_url)
    monkeypatch.setenv("DEEPSTEP_CORPUS", str(TEST_CORPUS))
    monkeypatch.setenv("DEEPSTEP_ROLLOUTS", "1")
    monkeypatch.setenv("DEEPSTEP_MAX_RETRIES", "0")
    monkeypatch.setenv("DEEPSTEP_STEP_ATTEMPTS", "1")
    return tmp_path


def test_run_show_and_resume(cli_env, fake_llm):
    out = cli_env / "out"
    result = runner.invoke(app, ["run", "What is a loss function?", "--thread-id", "cli1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "report.md").read_text().startswith("# What is a loss function?\n\n_5 steps: 5 answered._")  # answer first, by default
    assert "5/5 steps done" in result.output and "report:" in result.output
    calls = len(fake_llm.log())
    assert calls == 2 + 5 * 6 + 1  # planning, 3 + 3R per step, and the synthesized answer the report opens with

    shown = runner.invoke(app, ["show", "cli1", "--format", "json"])
    payload = json.loads(shown.stdout)
    assert payload["status"] == "done" and len(payload["tree"]["nodes"]) == 6
    for node in payload["tree"]["nodes"][1:]:  # every step: its status, checked claims and confidence
        assert node["status"] == "done" and node["claims"] and node["confidence"]["level"] in ("high", "medium", "low")
        assert all({"text", "citations", "verdict", "support"} <= set(claim) for claim in node["claims"])
    assert runner.invoke(app, ["show", "cli1", "--format", "csv"]).stdout.startswith("task_step_id,shot_number,scene_number")
    assert runner.invoke(app, ["show", "cli1"]).stdout.startswith("# What is a loss function?\n\n_5 steps: 5 answered._")

    again = runner.invoke(app, ["resume", "cli1"])
    assert again.exit_code == 0 and len(fake_llm.log()) == calls


@pytest.mark.parametrize("how", ["export", "run", "show"])
def test_storyboard_csv_holds_contexts_as_json(cli_env, how):
    import pandas as pd

    from deepstep import api

    out = cli_env / "out"
    assert runner.invoke(app, ["run", "What is a loss function?", "--thread-id", "csv1", "--out", str(out)]).exit_code == 0
    if how == "export":
        assert runner.invoke(app, ["export", "csv1", "--csv", str(cli_env / "t.csv")]).exit_code == 0
        text = (cli_env / "t.csv").read_text(encoding="utf-8")
    elif how == "show":
        text = runner.invoke(app, ["show", "csv1", "--format", "csv"]).stdout
    else:
        text = (out / "table.csv").read_text(encoding="utf-8")
    back = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    expected = api.load("csv1").table()["task_step_question_context"].tolist()
    assert any(expected), "the run retrieved no passages: nothing to compare"
    assert [json.loads(cell) for cell in back["task_step_question_context"]] == expected


def test_failed_steps_exit_1(cli_env, fake_llm):
    fake_llm.set_faults([Fault(kind="http500", task="question", match="Step: Aspect 2 ")])
    result = runner.invoke(app, ["run", "What is a loss function?", "--thread-id", "cli2"])
    assert result.exit_code == 1
    assert "1 failed" in result.output and "HTTP 500" in result.output


def test_review_prints_the_plan_and_resume_takes_an_edited_list(cli_env, fake_llm):
    paused = runner.invoke(app, ["run", "What is a loss function?", "--thread-id", "cli3", "--review"])
    assert paused.exit_code == 0 and "waiting for review" in paused.output
    plan = cli_env / "plan.json"
    plan.write_text(json.dumps([{"name": "Only", "description": "one step", "level": "0"}]))
    done = runner.invoke(app, ["resume", "cli3", "--steps", str(plan)])
    assert done.exit_code == 0, done.output
    assert "1/1 steps done" in done.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "   "], "question is empty"),
        (["run", "q", "--thread-id", "../etc/passwd"], "invalid thread id"),
        (["run", "q", "--rollouts", "-1"], "rollouts"),
        (["run", "q", "--corpus", "/no/such/folder"], "does not exist"),
        (["resume", "unknown-thread"], "no thread unknown-thread"),
        (["show", "unknown-thread"], "unknown-thread"),
        (["show", "x", "--format", "pdf"], "unknown format"),
    ],
)
def test_bad_input_is_one_line_exit_2(cli_env, fake_llm, args, message):
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert fake_llm.log() == []


def test_real_process_unreachable_server(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "DEEPSTEP_HOME": str(tmp_path), "OPENAI_BASE_URL": "http://127.0.0.1:9/v1", "DEEPSTEP_MAX_RETRIES": "0"}
    dead = subprocess.run(
        [sys.executable, "-m", "deepstep.cli", "run", "What is a loss function?"], env=env, capture_output=True, text=True, timeout=120
    )
    assert dead.returncode == 2
    assert "cannot reach the model server at http://127.0.0.1:9/v1" in dead.stderr
    assert "Traceback" not in dead.stderr


def test_a_connection_pool_finalized_on_its_own_worker_thread_is_no_traceback():
    """psycopg_pool's ConnectionPool.__del__ raises "cannot join current thread" when the garbage collector
    finalizes a pool on one of its workers (seen once in CI after the database was cut mid-run): the CLI's
    hook drops exactly that and passes every other unraisable exception on."""
    import gc
    import sys

    from deepstep.cli import _quiet_pool_finalizer

    class ConnectionPool:
        def __del__(self):
            raise RuntimeError("cannot join current thread")

    class Other:
        def __del__(self):
            raise RuntimeError("cannot join current thread")

    passed_on: list = []
    previous = sys.unraisablehook
    sys.unraisablehook = _quiet_pool_finalizer(passed_on.append)
    try:
        ConnectionPool()
        Other()
        gc.collect()
    finally:
        sys.unraisablehook = previous
    assert [unraisable.object.__qualname__.split(".")[-2:] for unraisable in passed_on] == [["Other", "__del__"]]
