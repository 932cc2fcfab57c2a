"""``deepstep batch``: the batch file, stable thread ids, what a re-run does, the summary rows (pure, hand-computed);
then real batch processes against the fake server: the outputs, a re-run without a call, failed questions
retried, bad input, and a batch killed or interrupted mid-run that finishes on re-run repeating at most the
calls in flight."""

from __future__ import annotations

import csv
import io
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from deepstep import batch, step_tree
from deepstep.cli import app
from deepstep.configuration import Settings
from deepstep.errors import InputError
from deepstep.records import BatchOutcome, BatchQuestion
from deepstep.testing import FakeLLMServer, Fault, crash
from deepstep.threads import RunResult

CORPUS = Path(__file__).parent / "data" / "corpus"
QUESTIONS = ["What is a loss function?", "What is gradient descent?", "How does cross-validation work?"]
WORKERS = 2
CONCURRENCY = 4


@pytest.fixture
def base(tmp_path) -> Settings:
    return Settings.build(home=tmp_path / "home", base_url="http://127.0.0.1:9/v1")


# The batch file.


def test_a_text_file_skips_blank_lines_and_comments_and_numbers_the_rest(base):
    text = "What is a loss function?\n\n  # not a question\nWhat  is\tgradient descent? \n"
    questions = batch.parse_batch(text, "text", base)
    assert [(q["line"], q["question"]) for q in questions] == [(1, "What is a loss function?"), (4, "What is gradient descent?")]
    assert questions[0]["thread_id"] == batch.default_thread_id("What is a loss function?", None, {})
    assert questions[0]["settings"] == {} and questions[0]["corpus"] is None


def test_the_thread_id_depends_on_the_question_and_the_rows_settings_only(base):
    plain = batch.default_thread_id("What is a loss function?", None, {})
    assert plain.startswith("q-") and len(plain) == 14
    assert batch.default_thread_id("What is a loss function?", None, {}) == plain  # stable
    assert batch.default_thread_id("What is a loss function?", None, {"rollouts": 1}) != plain
    assert batch.default_thread_id("What is a loss function?", "docs", {}) != plain
    assert batch.default_thread_id("What is a hinge loss?", None, {}) != plain
    # A CSV cell "1" and a JSON 1 are the same setting, so the same thread.
    from_csv = batch.parse_batch("question,rollouts,top_k\nWhat is a loss function?,1,\n", "csv", base)[0]
    from_jsonl = batch.parse_batch('{"question": "What is a loss function?", "rollouts": 1}\n', "jsonl", base)[0]
    assert from_csv["settings"] == from_jsonl["settings"] == {"rollouts": 1}  # the empty top_k cell is not set
    assert from_csv["thread_id"] == from_jsonl["thread_id"] == batch.default_thread_id("What is a loss function?", None, {"rollouts": 1})


def test_a_row_may_name_its_thread_and_corpus(base):
    row = batch.parse_batch('{"question": "Why?", "thread_id": "mine-1", "corpus": "docs"}\n\n', "jsonl", base)[0]
    assert (row["line"], row["thread_id"], row["corpus"]) == (1, "mine-1", "docs")
    assert batch.question_settings(row, base).corpus == Path("docs")


@pytest.mark.parametrize(
    ("kind", "text", "message"),
    [
        ("jsonl", '{"question": "Why?"}\n{"question": "How?", "rollouts": -1}\n', "line 2: invalid settings: rollouts"),
        ("jsonl", '{"question": "Why?"}\n["How?"]\n', "line 2: a list, not an object"),
        ("jsonl", '{"question": "Why?"\n', "line 1: not JSON"),
        ("jsonl", '{"question": "Why?", "colour": "red"}\n', "line 1: unknown column 'colour'"),
        ("jsonl", '{"thread_id": "t1"}\n', "line 1: no question"),
        ("jsonl", '{"question": "Why?", "thread_id": "../x"}\n', "line 1: invalid thread_id"),
        ("jsonl", '{"question": "Why?", "review": true}\n', "unknown column 'review'"),
        ("csv", "question,top_k\nWhy?,3\nHow?,99\n", "line 3: invalid settings: top_k"),
        ("csv", "question,colour\nWhy?,red\n", "line 1: unknown column 'colour'"),
        ("csv", "question\nWhy?,extra\n", "line 2: more cells"),
        ("text", "Why?\n\n#\nWhy?\n", "line 4: thread q-"),
        ("text", "# only a comment\n\n", "holds no question"),
        ("text", "   \t\n" + "x" * 5000 + "\n", "line 2: the question is 5000 characters long"),
    ],
)
def test_a_bad_row_is_an_input_error_naming_its_line(base, kind, text, message):
    with pytest.raises(InputError) as raised:
        batch.parse_batch(text, kind, base, name="q.file")
    assert message in str(raised.value) and str(raised.value).startswith("q.file ")
    assert "DEEPSTEP_<NAME>" not in str(raised.value)  # the row is at fault, not the environment


def test_the_file_kind_is_read_off_its_suffix():
    assert [batch.file_kind(Path(name)) for name in ("a.jsonl", "a.CSV", "a.txt", "questions")] == ["jsonl", "csv", "text", "text"]


# What a re-run does, and the summary.


def _stored(status: str = "done", failed: int = 0, tree=None) -> RunResult:
    failures = [{"id": f"s{i}", "level": f"{i}", "name": f"Step {i}", "error": "HTTP 500"} for i in range(failed)]
    return RunResult("t", tree if tree is not None else step_tree.new_tree("Why?"), "# Why?\n", {}, failures, status=status)  # type: ignore[arg-type]


def test_a_finished_thread_is_skipped_an_unfinished_one_resumed_a_failed_one_retried():
    assert batch.plan_action(None) == "run"
    assert batch.plan_action(_stored("incomplete")) == "resume"
    assert batch.plan_action(_stored("awaiting_review")) == "resume"
    assert batch.plan_action(_stored("done", failed=1)) == "retry"
    assert batch.plan_action(_stored("done")) == "skip"


def test_a_question_is_done_only_when_its_thread_finished_without_a_failed_step():
    ran: BatchOutcome = {"status": "done", "error": "", "wall_seconds": 1.0}
    stopped: BatchOutcome = {"status": "interrupted", "error": "interrupted", "wall_seconds": 1.0}
    assert batch.final_status(_stored("done"), ran, interrupted=False) == "done"
    assert batch.final_status(_stored("done"), None, interrupted=False) == "done"  # skipped
    assert batch.final_status(_stored("done", failed=1), ran, interrupted=False) == "failed"
    assert batch.final_status(_stored("incomplete"), stopped, interrupted=True) == "interrupted"
    assert batch.final_status(None, None, interrupted=True) == "interrupted"  # Ctrl-C came before it started
    assert batch.final_status(_stored("incomplete"), {"status": "failed", "error": "gone", "wall_seconds": 0.0}, interrupted=False) == "failed"


def _claim(verdict: str) -> dict:
    return {"text": "x", "citations": [1], "verdict": verdict, "support": 0.0}


def _confidence(level: str) -> dict:
    return {"level": level, "best_q": 10.0, "supported_share": 0.5, "cited_passages": 1, "retrieval_strength": 0.5}


def test_the_summary_row_counts_steps_calls_tokens_confidence_and_claims():
    tree = step_tree.new_tree("Why?")
    tree.nodes[step_tree.ROOT_ID]["claims"] = [_claim("unsupported"), _claim("supported")]
    steps = [
        ("a", "0", {"status": "done", "confidence": _confidence("low"), "claims": [_claim("unsupported"), _claim("partial")]}),
        ("b", "1", {"status": "done", "confidence": _confidence("high"), "claims": [_claim("unsupported")]}),
        ("c", "2", {"status": "insufficient_evidence", "confidence": _confidence("low")}),
        ("d", "3", {"status": "failed", "claims": [_claim("unsupported")]}),  # not in the report: not counted
    ]
    for step_id, level, fields in steps:
        tree.add_node(step_id, **{**step_tree.STEP_DEFAULTS, "name": step_id, "level": level, **fields})
        tree.add_edge(step_tree.ROOT_ID, step_id)
    stored = _stored("done", failed=1, tree=tree)
    stored.usage = {"answer": {"calls": 3, "prompt_tokens": 100, "completion_tokens": 20}, "question": {"calls": 2, "prompt_tokens": 5}}
    question: BatchQuestion = {"line": 1, "question": "Why?", "thread_id": "t", "corpus": None, "settings": {}}
    row = batch.summary_row(
        question, "retry", stored, {"status": "failed", "error": "", "wall_seconds": 2.5}, cost=0.0125, earlier_wall_seconds=4.0, report="t.md"
    )
    assert row == {
        "question": "Why?",
        "thread_id": "t",
        "status": "failed",
        "action": "retry",
        "steps": 4,
        "failed_steps": 1,
        "insufficient_steps": 1,
        "calls": 5,
        "tokens": 125,
        "cost": 0.0125,
        "wall_seconds": 6.5,
        "low_confidence_share": round(2 / 3, 3),  # a, c low; b high; d has no level
        "unsupported_claims": 3,  # the answer's 1, a's 1, b's 1
        "error": "step 0 Step 0: HTTP 500",
        "report": "t.md",
    }
    never = batch.summary_row(question, "run", None, None, cost=None, earlier_wall_seconds=0.0, report="", interrupted=True)
    assert (never["status"], never["steps"], never["calls"], never["low_confidence_share"]) == ("interrupted", 0, 0, None)
    assert "run the batch again" in never["error"]


def test_the_summary_csv_leaves_unknown_values_empty_and_earlier_wall_seconds_carry_over():
    question: BatchQuestion = {"line": 1, "question": 'Say "hi", twice', "thread_id": "t", "corpus": None, "settings": {}}
    row = batch.summary_row(question, "run", None, None, cost=None, earlier_wall_seconds=1.5, report="")
    text = batch.summary_csv([row])
    assert text.splitlines()[0].split(",")[:3] == ["question", "thread_id", "status"]
    read = next(csv.DictReader(io.StringIO(text)))
    assert (read["question"], read["cost"], read["low_confidence_share"], read["wall_seconds"]) == ('Say "hi", twice', "", "", "1.5")
    assert batch.earlier_wall_seconds(text) == {"t": 1.5}
    assert batch.earlier_wall_seconds("thread_id,wall_seconds\na,2\nb,x\nc,-1\n") == {"a": 2.0, "c": 0.0}
    assert batch.earlier_wall_seconds("not,a\nsummary") == {}


def test_the_exit_code_is_0_only_when_every_question_is_done():
    question: BatchQuestion = {"line": 1, "question": "Why?", "thread_id": "t", "corpus": None, "settings": {}}
    done = batch.summary_row(question, "skip", _stored("done"), None, cost=None, earlier_wall_seconds=0.0, report="")
    failed = batch.summary_row(question, "run", _stored("done", failed=1), None, cost=None, earlier_wall_seconds=0.0, report="")
    assert (batch.exit_code([done], False), batch.exit_code([done, failed], False), batch.exit_code([done], True)) == (0, 1, 130)


# Real batch processes against the fake server.


def _env(server: FakeLLMServer, home: Path) -> dict[str, str]:
    # The seed layout: no synthesis call, so 2 + 6 calls per step with one rollout.
    env = crash.cli_env(
        server.base_url, home, corpus=CORPUS, rollouts=1, max_concurrency=CONCURRENCY, max_retries=0, step_attempts=1, report_layout="seed"
    )
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(batch.__file__).parents[1]), os.environ.get("PYTHONPATH")]))
    return env


def _batch(tmp_path: Path, env: dict[str, str], out: str = "out", timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        crash.cli_command("batch", str(tmp_path / "questions.txt"), "--workers", str(WORKERS), "--out", str(tmp_path / out)),
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _summary(tmp_path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((tmp_path / "out" / "summary.csv").open(encoding="utf-8")))


def _write_questions(tmp_path: Path) -> None:
    (tmp_path / "questions.txt").write_text("# three questions\n" + "\n".join(QUESTIONS) + "\n", encoding="utf-8")


def test_a_batch_writes_the_summary_and_reports_and_a_rerun_makes_no_call(fake_llm, tmp_path):
    import pandas as pd

    _write_questions(tmp_path)
    env = _env(fake_llm, tmp_path / "home")
    first = _batch(tmp_path, env)
    assert first.returncode == 0, first.stderr
    rows = _summary(tmp_path)
    assert [(row["question"], row["status"], row["action"]) for row in rows] == [(q, "done", "run") for q in QUESTIONS]
    calls = len(fake_llm.log())
    assert calls == sum(int(row["calls"]) for row in rows)  # each call counted in its thread's usage, none lost or made twice
    for row in rows:
        assert row["thread_id"] == batch.default_thread_id(row["question"], None, {})
        assert int(row["steps"]) > 0 and int(row["tokens"]) > 0 and float(row["wall_seconds"]) > 0
        report = (tmp_path / "out" / row["report"]).read_text(encoding="utf-8")
        assert report.lstrip().startswith(f"# {row['question']}") and row["report"] == f"{row['thread_id']}.md"
    parquet = pd.read_parquet(tmp_path / "out" / "summary.parquet")
    assert list(parquet.columns) == list(batch.SUMMARY_COLUMNS) and parquet["status"].tolist() == ["done"] * 3
    # Plain progress lines (stderr is no terminal), each naming its worker. Which worker takes which question is
    # up to them: one that starts first may take all three.
    started = re.findall(r"^\[worker ([12])\] q-\w+ started: (.+)$", first.stderr, flags=re.MULTILINE)
    assert sorted(question for _, question in started) == sorted(QUESTIONS), first.stderr

    again = _batch(tmp_path, env)
    assert again.returncode == 0, again.stderr
    assert len(fake_llm.log()) == calls  # every thread finished: no model call
    assert [(row["status"], row["action"]) for row in _summary(tmp_path)] == [("done", "skip")] * 3
    assert "3 done already" in again.stderr


def test_a_failed_question_exits_1_and_is_retried_on_rerun(fake_llm, tmp_path):
    _write_questions(tmp_path)
    env = _env(fake_llm, tmp_path / "home")
    fake_llm.set_faults([Fault(kind="http500", task="answer", match=QUESTIONS[1], times=1)])
    first = _batch(tmp_path, env)
    assert first.returncode == 1, first.stderr
    statuses = {row["question"]: (row["status"], row["failed_steps"]) for row in _summary(tmp_path)}
    assert statuses[QUESTIONS[1]] == ("failed", "1") and statuses[QUESTIONS[0]] == statuses[QUESTIONS[2]] == ("done", "0")
    assert "failed: step" in first.stderr

    again = _batch(tmp_path, env)
    assert again.returncode == 0, again.stderr
    assert [row["action"] for row in _summary(tmp_path)] == ["skip", "retry", "skip"]
    assert all(row["status"] == "done" for row in _summary(tmp_path))


def test_bad_input_is_one_line_exit_2_before_any_call(fake_llm, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", fake_llm.base_url)
    monkeypatch.setenv("DEEPSTEP_CORPUS", str(CORPUS))
    bad = tmp_path / "questions.jsonl"
    bad.write_text('{"question": "What is a loss function?"}\n{"question": "Why?", "rollouts": "many"}\n', encoding="utf-8")
    result = CliRunner().invoke(app, ["batch", str(bad), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert result.output.strip().count("\n") == 0 and f"{bad} line 2: invalid settings: rollouts" in result.output
    assert fake_llm.log() == [] and not (tmp_path / "out").exists()
    missing_corpus = tmp_path / "corpus.jsonl"
    missing_corpus.write_text('{"question": "Why?", "corpus": "/no/such/folder"}\n', encoding="utf-8")
    result = CliRunner().invoke(app, ["batch", str(missing_corpus), "--workers", "2"])
    assert result.exit_code == 2 and "line 1 (thread q-" in result.output and "does not exist" in result.output
    assert CliRunner().invoke(app, ["batch", str(tmp_path / "none.txt")]).exit_code == 2
    assert "--workers must be 1 to 64" in CliRunner().invoke(app, ["batch", str(bad), "--workers", "0"]).output


def _task(settings: Settings, thread_id: str) -> batch.WorkerTask:
    question: BatchQuestion = {"line": 1, "question": QUESTIONS[0], "thread_id": thread_id, "corpus": None, "settings": {}}
    return batch.WorkerTask(0, question, settings)


def test_a_worker_waits_for_a_thread_another_process_still_runs(settings, monkeypatch):
    """A worker of a batch killed a moment ago may still hold a thread while it stops: the next batch waits for it."""
    import threading

    from deepstep.locks import thread_lock

    monkeypatch.setattr(batch, "BUSY_WAIT_SECONDS", 20.0)
    released = threading.Event()

    def hold_for_a_while() -> None:
        with thread_lock(settings, "busy-1"):  # another open file description: flock excludes it like another process
            time.sleep(1.5)
        released.set()

    holder = threading.Thread(target=hold_for_a_while)
    holder.start()
    time.sleep(0.2)
    outcome = batch.run_question(_task(settings, "busy-1"), lambda progress: None)
    holder.join()
    assert released.is_set() and outcome["status"] == "done" and outcome["wall_seconds"] >= 1.0, outcome

    monkeypatch.setattr(batch, "BUSY_WAIT_SECONDS", 0.5)
    with thread_lock(settings, "busy-2"):
        refused = batch.run_question(_task(settings, "busy-2"), lambda progress: None)
    assert refused["status"] == "failed" and "already running in another process" in refused["error"]


def test_a_worker_resumes_a_thread_started_since_the_batch_looked(settings, fake_llm):
    """The batch planned to run it, but the thread exists by the time the worker starts: the worker resumes it."""
    import deepstep

    deepstep.run(QUESTIONS[0], thread_id="since-1", settings=settings)
    calls = len(fake_llm.log())
    outcome = batch.run_question(_task(settings, "since-1"), lambda progress: None)
    assert outcome["status"] == "done" and len(fake_llm.log()) == calls  # a finished thread: resumed without a call


def test_no_model_server_is_one_line_before_any_run(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", "ftp://example.org")
    monkeypatch.setenv("DEEPSTEP_CORPUS", str(CORPUS))
    (tmp_path / "questions.txt").write_text("What is a loss function?\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["batch", str(tmp_path / "questions.txt"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "line 1 (thread q-" in result.output and "is not an http(s) URL" in result.output


def _workers(pid: int) -> list[int]:
    """The worker processes of the batch process ``pid`` (Linux: /proc lists children per thread), not
    multiprocessing's resource tracker."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return [child for child in found if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()]


@pytest.mark.slow
@pytest.mark.parametrize("stop", ["sigkill-all", "sigkill-batch", "sigkill-worker", "ctrl-c"])
def test_a_stopped_batch_finishes_on_rerun_repeating_only_calls_in_flight(tmp_path, stop):
    """Stopped mid-run (the machine's processes killed, the batch process alone, one worker, or Ctrl-C),
    the re-run finishes every question; only calls in flight at the stop may be made again."""
    with FakeLLMServer(latency_ms=60) as server:
        _write_questions(tmp_path)
        baseline = _batch(tmp_path, _env(server, tmp_path / "baseline-home"), out="baseline-out")
        assert baseline.returncode == 0, baseline.stderr
        uninterrupted = crash.answered(server.log())
        # Different questions may send some of the same requests (the fake server answers by request hash).
        repeated_uninterrupted = crash.repeated_calls(server.log())
        server.reset_log()

        env = _env(server, tmp_path / "home")
        command = crash.cli_command("batch", str(tmp_path / "questions.txt"), "--workers", str(WORKERS), "--out", str(tmp_path / "out"))
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while len(crash.answered(server.log())) < 20:  # both workers deep in their first question's steps
            assert process.poll() is None and time.monotonic() < deadline, process.stderr.read() if process.stderr else ""
            time.sleep(0.005)
        if stop == "ctrl-c":
            process.send_signal(signal.SIGINT)
            assert process.wait(timeout=60) == 130
        elif stop == "sigkill-worker":
            os.kill(_workers(process.pid)[0], signal.SIGKILL)
            assert process.wait(timeout=120) == 1  # its question failed; the other worker finished the rest
        else:
            workers = _workers(process.pid) if stop == "sigkill-all" else []
            for pid in [process.pid, *workers]:
                os.kill(pid, signal.SIGKILL)
            process.wait()
        assert process.stderr is not None
        stopped_stderr = process.stderr.read()
        process.stderr.close()
        if stop == "sigkill-worker":
            failed = [row for row in _summary(tmp_path) if row["status"] != "done"]
            assert len(failed) == 1 and "its worker process died (exit code -9)" in failed[0]["error"], stopped_stderr
        calls_at_stop = len(server.log())

        rerun = _batch(tmp_path, env)
        assert rerun.returncode == 0, (stopped_stderr, rerun.stderr)
        log = server.log()
        answered = crash.answered(log)
        record = {"stop": stop, "calls_at_stop": calls_at_stop, "answered": len(answered), "repeated": crash.repeated_calls(log)}
        print("batch stop-rerun:", record)
        assert all(row["status"] == "done" for row in _summary(tmp_path)), rerun.stderr
        assert {entry["hash"] for entry in answered} == {entry["hash"] for entry in uninterrupted}, record  # the same calls
        # At most the calls in flight when it stopped are made again: max_concurrency per worker.
        assert crash.repeated_calls(log) - repeated_uninterrupted <= WORKERS * CONCURRENCY, record
        assert len(answered) <= len(uninterrupted) + WORKERS * CONCURRENCY, record
