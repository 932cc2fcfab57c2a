"""The Postgres job queue (``deepstep batch --submit``, ``deepstep worker``, ``deepstep batch --status``):
the retry decision and the settings a job carries (pure, hand-computed); then a real Postgres server and
real worker processes against the fake server: each job done once in effect (trees equal to a
single-process run's), a worker SIGKILLed mid-job whose job another worker finishes repeating at most the
calls in flight, SIGTERM releasing a job, and a poisoned job failed after its retries."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import deepstep
from deepstep import batch, job_queue, step_tree
from deepstep.cli import app
from deepstep.configuration import Settings
from deepstep.records import BatchQuestion
from deepstep.testing import FakeLLMServer, Fault, crash

CORPUS = Path(__file__).parent / "data" / "corpus"
QUESTIONS = ["What is a loss function?", "What is gradient descent?", "How does cross-validation work?", "What is overfitting?"]
CONCURRENCY = 4
STALL_SECONDS = 3.0  # a killed worker's job is taken again within about 4 s


# Pure: the retry decision and the job's settings.


def test_a_released_job_is_taken_again_at_once_and_a_failed_one_until_its_attempts_are_used():
    assert job_queue.retry_delay(job_queue.JobReleased("stopping")) == 0.0
    assert job_queue.retry_delay(job_queue.QuestionFailed("HTTP 500", failures=1, allowed=3)) == 2.0  # 2 s per failure so far
    assert job_queue.retry_delay(job_queue.QuestionFailed("HTTP 500", failures=2, allowed=3)) == 4.0
    assert job_queue.retry_delay(job_queue.QuestionFailed("HTTP 500", failures=3, allowed=3)) is None  # the third failure is final
    assert job_queue.retry_delay(job_queue.QuestionFailed("HTTP 500", failures=1, allowed=1)) is None
    assert job_queue.retry_delay(RuntimeError("not ours")) is None


def test_a_job_carries_the_submitters_run_settings_and_the_worker_machine_keeps_its_own_corpus(tmp_path):
    submitter = Settings.build(home=tmp_path / "a", base_url="http://127.0.0.1:9/v1", rollouts=1, top_k=3, corpus=tmp_path / "theirs")
    row: BatchQuestion = {"line": 1, "question": "Why?", "thread_id": "t", "corpus": None, "settings": {"top_k": 5}}
    carried = job_queue.job_settings(row, submitter)
    assert (carried["rollouts"], carried["top_k"]) == (1, 5)  # the row's own setting wins
    assert "corpus" not in carried and "review" not in carried
    worker = Settings.build(home=tmp_path / "b", base_url="http://127.0.0.1:8/v1", rollouts=3, corpus=tmp_path / "mine")
    settings = job_queue.worker_settings(row, carried, worker)
    assert (settings.rollouts, settings.top_k, settings.corpus, settings.review) == (1, 5, tmp_path / "mine", False)
    assert settings.base_url == worker.base_url
    named = job_queue.worker_settings({**row, "corpus": str(tmp_path / "named")}, carried, worker)
    assert named.corpus == tmp_path / "named"


def test_rows_are_counted_by_status_in_queue_order():
    rows = [job_queue.JobRow(i, status, f"t{i}", "Why?", 0, 0, "") for i, status in enumerate(["done", "todo", "failed", "done", "doing"])]
    assert job_queue.status_counts(rows) == {"todo": 1, "doing": 1, "done": 2, "failed": 1}
    assert list(job_queue.status_counts(rows)) == ["todo", "doing", "done", "failed"]


# SIGTERM's stop of every run in the process (interrupts.stop_every_run), runs being in other threads.


def _model_call(settings: Settings) -> str:
    """One real model call over HTTP, as a node makes it."""
    from langchain_core.messages import HumanMessage

    from deepstep.models import call_text

    return call_text(settings, "answer", [HumanMessage("Question: What is a loss function?")])[0]


def test_stopping_every_run_lets_the_call_in_flight_finish_and_starts_no_other(monkeypatch, tmp_path):
    import threading

    from deepstep import interrupts

    monkeypatch.setattr(interrupts, "_every_run_stopped", None)  # the process-wide mark: only for this test
    outcomes: list[str] = []
    with FakeLLMServer(latency_ms=1000) as server:  # twice Ctrl-C's grace
        settings = Settings.build(base_url=server.base_url, home=tmp_path / "home", corpus=CORPUS, max_retries=0)

        def run() -> None:
            with interrupts.stop_on_ctrl_c():
                outcomes.append(interrupts.unless_stopped(_model_call, settings))
                try:
                    interrupts.unless_stopped(_model_call, settings)
                except interrupts.RunInterrupted as stopped:
                    outcomes.append(str(stopped))

        runner = threading.Thread(target=run)
        runner.start()
        deadline = time.monotonic() + 10
        while not server.in_flight and time.monotonic() < deadline:  # the first request has reached the server
            time.sleep(0.01)
        interrupts.stop_every_run(5.0)
        runner.join(10)
        assert len(server.log()) == 1
    assert outcomes[0].strip() and outcomes[1:] == ["stopped before a model call"]
    with interrupts.stop_on_ctrl_c():  # a run that starts afterwards makes no call
        with pytest.raises(interrupts.RunInterrupted, match="before a model call"):
            interrupts.unless_stopped(_model_call, settings)


def test_a_second_stop_abandons_the_call_in_flight(monkeypatch, tmp_path):
    import threading

    from deepstep import interrupts

    monkeypatch.setattr(interrupts, "_every_run_stopped", None)
    outcomes: list[tuple[str, float]] = []
    with FakeLLMServer(latency_ms=3000) as server:
        settings = Settings.build(base_url=server.base_url, home=tmp_path / "home", corpus=CORPUS, max_retries=0)

        def run() -> None:
            with interrupts.stop_on_ctrl_c():
                try:
                    interrupts.unless_stopped(_model_call, settings)
                except interrupts.RunInterrupted as stopped:
                    outcomes.append((str(stopped), time.monotonic()))

        runner = threading.Thread(target=run)
        runner.start()
        deadline = time.monotonic() + 10
        while not server.in_flight and time.monotonic() < deadline:
            time.sleep(0.01)
        interrupts.stop_every_run(60.0)
        time.sleep(0.2)
        second = time.monotonic()
        interrupts.stop_every_run(0.0)
        runner.join(10)
    [(reason, at)] = outcomes
    assert reason == "abandoned a model call in flight" and at - second < 0.5


# The commands without a worker.


def test_submit_status_and_worker_without_a_database_are_one_line_exit_2(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    (tmp_path / "q.txt").write_text("Why?\n", encoding="utf-8")
    for args in (["batch", "--submit", str(tmp_path / "q.txt")], ["batch", "--status"], ["worker"]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2 and result.output.strip().count("\n") == 0, result.output
        assert "needs DEEPSTEP_DATABASE_URL" in result.output
    both = CliRunner().invoke(app, ["batch", str(tmp_path / "q.txt"), "--status"])
    assert both.exit_code == 2 and "one of them" in both.output
    assert "--concurrency must be 1 to 64" in CliRunner().invoke(app, ["worker", "--concurrency", "0"]).output


def _queue_env(monkeypatch, url: str, base_url: str) -> None:
    monkeypatch.setenv("DEEPSTEP_DATABASE_URL", url)
    monkeypatch.setenv("OPENAI_BASE_URL", base_url)
    monkeypatch.setenv("DEEPSTEP_CORPUS", str(CORPUS))
    monkeypatch.setenv("DEEPSTEP_RETRIEVER", "bm25")


def test_submitting_a_file_twice_queues_each_unfinished_question_once(postgres_url, fake_llm, tmp_path, monkeypatch):
    _queue_env(monkeypatch, postgres_url, fake_llm.base_url)
    monkeypatch.setenv("DEEPSTEP_ROLLOUTS", "0")
    questions = tmp_path / "questions.txt"
    questions.write_text("\n".join(QUESTIONS[:3]) + "\n", encoding="utf-8")
    finished = batch.default_thread_id(QUESTIONS[0], None, {})
    deepstep.run(QUESTIONS[0], thread_id=finished, settings=Settings.build())  # done before the batch: no job
    calls = len(fake_llm.log())

    first = CliRunner().invoke(app, ["batch", "--submit", str(questions)])
    assert first.exit_code == 0, first.output
    assert "2 queued, 1 done already" in first.output
    again = CliRunner().invoke(app, ["batch", "--submit", str(questions)])
    assert again.exit_code == 0 and "0 queued, 2 queued before (waiting or running), 1 done already" in again.output, again.output
    assert len(fake_llm.log()) == calls  # submitting makes no model call

    rows = job_queue.queue_status(Settings.build())
    assert [(row.thread_id, row.status, row.question) for row in rows] == [
        (batch.default_thread_id(question, None, {}), "todo", question) for question in QUESTIONS[1:3]
    ]
    status = CliRunner().invoke(app, ["batch", "--status"])
    assert status.exit_code == 0 and "2 jobs: 2 todo" in status.output and rows[0].thread_id in status.output, status.output
    assert "pw-Secret" not in status.output + first.output

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "Why?", "rollouts": "many"}\n', encoding="utf-8")
    refused = CliRunner().invoke(app, ["batch", "--submit", str(bad)])
    assert refused.exit_code == 2 and f"{bad} line 1: invalid settings: rollouts" in refused.output
    assert len(job_queue.queue_status(Settings.build())) == 2


# Worker processes.


def _env(server: FakeLLMServer, home: Path, url: str, **settings: object) -> dict[str, str]:
    # The seed layout: no synthesis call, so 2 + 6 calls per step with one rollout.
    values: dict[str, object] = dict(
        corpus=CORPUS, rollouts=1, max_concurrency=CONCURRENCY, max_retries=0, step_attempts=1, report_layout="seed", retriever="bm25"
    )
    env = crash.cli_env(server.base_url, home, database_url=url, queue_stall_seconds=STALL_SECONDS, **{**values, **settings})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(batch.__file__).parents[1]), os.environ.get("PYTHONPATH")]))
    return env


def _settings(env: dict[str, str]) -> Settings:
    """The settings of ``env`` (its DEEPSTEP_* variables), for loading threads and the queue in this process."""
    values = {name[len("DEEPSTEP_") :].lower(): value for name, value in env.items() if name.startswith("DEEPSTEP_")}
    return Settings.build(base_url=env["OPENAI_BASE_URL"], **values)


def _submit(env: dict[str, str], path: Path) -> None:
    result = subprocess.run(crash.cli_command("batch", "--submit", str(path)), env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


class Worker:
    """A `deepstep worker` process, its stderr in a file."""

    def __init__(self, env: dict[str, str], log: Path, *args: str) -> None:
        self.log = log
        self._out = log.open("wb")
        self.process = subprocess.Popen(crash.cli_command("worker", *args), env=env, stdout=self._out, stderr=subprocess.STDOUT)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def running_job(self) -> str | None:
        """The thread of the job this worker runs now, by its log lines."""
        started = re.findall(r"\(thread (\S+)\) started", self.text())
        ended = re.findall(r"\(thread (\S+)\) (?:done|released|failed)", self.text())
        return started[-1] if started and len(started) > len(ended) else None

    def stop(self, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self._out.close()


def _wait_for(condition, what: str, timeout: float = 120, workers: list[Worker] = ()):  # type: ignore[assignment]
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}: " + "\n".join(worker.text()[-3000:] for worker in workers)
        time.sleep(0.05)
    return found


def _baseline(server: FakeLLMServer, env: dict[str, str], tmp_path: Path, questions: list[str]) -> dict[str, list[tuple]]:
    """Each question run in this process, one after the other, with SQLite: the trees to compare with."""
    settings = Settings.build(**{**_settings(env).model_dump(), "database_url": None, "home": tmp_path / "baseline-home"})
    return {q: step_tree.signature(deepstep.run(q, thread_id=f"base-{i}", settings=settings).tree) for i, q in enumerate(questions)}


@pytest.mark.slow
def test_three_workers_finish_every_job_once_and_a_killed_workers_job_is_taken_again(postgres_url, tmp_path):
    """Four questions on three worker processes; one worker is SIGKILLed mid-job. Every thread ends as a
    single-process run ends, and only the calls in flight at the kill are made again."""
    with FakeLLMServer(latency_ms=60) as server:
        env = _env(server, tmp_path / "home", postgres_url)
        expected = _baseline(server, env, tmp_path, QUESTIONS)
        uninterrupted = crash.answered(server.log())
        repeated_uninterrupted = crash.repeated_calls(server.log())  # different questions may send the same request
        server.reset_log()

        (tmp_path / "questions.txt").write_text("\n".join(QUESTIONS) + "\n", encoding="utf-8")
        _submit(env, tmp_path / "questions.txt")
        workers = [Worker(env, tmp_path / f"worker-{i}.log") for i in range(3)]
        try:
            # A worker deep in its question's steps.
            def busy_worker() -> Worker | None:
                return next((w for w in workers if w.running_job()), None) if len(crash.answered(server.log())) >= 20 else None

            victim = _wait_for(busy_worker, "a busy worker", workers=workers)
            killed_thread = victim.running_job()
            victim.process.send_signal(signal.SIGKILL)
            victim.process.wait()
            killed_at = time.monotonic()
            calls_at_kill = len(server.log())
            settings = _settings(env)
            rows = _wait_for(
                lambda: (rows := job_queue.queue_status(settings)) and all(row.status == "done" for row in rows) and rows,
                "every job done",
                workers=workers,
            )
            all_done_at = time.monotonic()
            codes = [worker.stop() for worker in workers if worker is not victim]
        finally:
            for worker in workers:
                if worker.process.poll() is None:
                    worker.process.kill()
                    worker.process.wait()
        victim.stop()  # only closes its log: it is gone
        assert codes == [0, 0], [worker.text() for worker in workers]

        log = server.log()
        answered = crash.answered(log)
        record = {
            "calls_at_kill": calls_at_kill,
            "answered": len(answered),
            "baseline": len(uninterrupted),
            "repeated": crash.repeated_calls(log),
            "repeated_in_baseline": repeated_uninterrupted,
            "seconds_from_kill_to_all_done": round(all_done_at - killed_at, 1),
        }
        print("queue kill:", record)
        by_thread = {row.thread_id: row for row in rows}
        for question in QUESTIONS:
            thread_id = batch.default_thread_id(question, None, {})
            assert step_tree.signature(deepstep.load(thread_id, settings=settings).tree) == expected[question], question
            row = by_thread[thread_id]
            if thread_id == killed_thread:  # taken again after its worker's heartbeats stopped, one failure counted
                assert (row.failures, row.attempts) == (1, 2), row
                put_back = f"(thread {thread_id}) put back in the queue: its worker sent no heartbeat for 3 s"
                assert any(put_back in worker.text() for worker in workers), [worker.text() for worker in workers]
            else:
                assert (row.failures, row.attempts, row.error) == (0, 1, ""), row
        assert {entry["hash"] for entry in answered} == {entry["hash"] for entry in uninterrupted}, record  # the same calls
        # At most the calls in flight at the kill are made again: max_concurrency of one run.
        assert crash.repeated_calls(log) - repeated_uninterrupted <= CONCURRENCY, record
        assert len(answered) <= len(uninterrupted) + CONCURRENCY, record


@pytest.mark.slow
def test_sigterm_finishes_the_calls_in_flight_and_releases_the_job_to_another_worker(postgres_url, tmp_path):
    with FakeLLMServer() as server:
        env = _env(server, tmp_path / "home", postgres_url)
        expected = _baseline(server, env, tmp_path, QUESTIONS[:1])
        server.reset_log()
        # Longer than the half second a Ctrl-C gives a call in flight: SIGTERM lets it finish all the same.
        server.set_latency(1000)
        (tmp_path / "questions.txt").write_text(QUESTIONS[0] + "\n", encoding="utf-8")
        _submit(env, tmp_path / "questions.txt")
        first = Worker(env, tmp_path / "first.log")
        try:

            def calls_in_flight() -> bool:
                return len(crash.answered(server.log())) >= 10 and server.in_flight > 0

            _wait_for(calls_in_flight, "calls in flight in the run's steps", workers=[first])
            stopping = time.monotonic()
            assert first.stop(timeout=30) == 0, first.text()
            stop_seconds = time.monotonic() - stopping
        finally:
            if first.process.poll() is None:
                first.process.kill()
        settings = _settings(env)
        [row] = job_queue.queue_status(settings)
        assert (row.status, row.failures, row.attempts) == ("todo", 0, 1), (row, first.text())  # released, not failed
        assert "released" in first.text() and "Traceback" not in first.text()
        assert [entry["status"] for entry in server.log()] == [200] * len(server.log()) and stop_seconds < 10, stop_seconds
        calls_at_stop = len(crash.answered(server.log()))
        server.set_latency(0)

        second = Worker(env, tmp_path / "second.log", "--concurrency", "2")  # two worker processes
        try:
            _wait_for(lambda: job_queue.queue_status(settings)[0].status == "done", "the released job done", workers=[second])
        finally:
            assert second.stop() == 0, second.text()  # SIGTERM passed on to both processes, each idle: exit 0
        assert "2 worker processes" in second.text()
        assert step_tree.signature(deepstep.load(row.thread_id, settings=settings).tree) == expected[QUESTIONS[0]]
        record = {
            "stop_seconds": round(stop_seconds, 2),
            "calls_at_stop": calls_at_stop,
            "answered": len(crash.answered(server.log())),
            "repeated": crash.repeated_calls(server.log()),
        }
        print("queue sigterm:", record)
        # The calls in flight at SIGTERM were answered and kept: the second worker made none of them again.
        assert crash.repeated_calls(server.log()) == 0, record


@pytest.mark.slow
def test_a_job_whose_step_failed_is_retried_and_its_failed_steps_researched_again(postgres_url, tmp_path):
    with FakeLLMServer() as server:
        env = _env(server, tmp_path / "home", postgres_url, rollouts=0)
        expected = _baseline(server, env, tmp_path, QUESTIONS[:1])
        server.reset_log()
        server.set_faults([Fault(kind="http500", task="answer", match=QUESTIONS[0], times=1)])
        (tmp_path / "questions.txt").write_text(QUESTIONS[0] + "\n", encoding="utf-8")
        _submit(env, tmp_path / "questions.txt")
        worker = Worker(env, tmp_path / "worker.log")
        settings = _settings(env)
        try:
            [row] = _wait_for(
                lambda: (rows := job_queue.queue_status(settings)) and rows[0].status == "done" and rows, "the job done", workers=[worker]
            )
        finally:
            assert worker.stop() == 0, worker.text()
        assert (row.failures, row.attempts, row.error) == (1, 2, ""), row  # one failure, then done: no reason left to show
        assert re.search(r"failed \(1 of 3, to retry\): step \S+ .*HTTP 500", worker.text()), worker.text()
        assert step_tree.signature(deepstep.load(row.thread_id, settings=settings).tree) == expected[QUESTIONS[0]]


@pytest.mark.slow
def test_a_poisoned_job_is_failed_after_its_attempts_with_its_reason(postgres_url, tmp_path):
    vanishing = tmp_path / "corpus"
    shutil.copytree(CORPUS, vanishing)
    with FakeLLMServer() as server:
        env = _env(server, tmp_path / "home", postgres_url)
        (tmp_path / "questions.jsonl").write_text(f'{{"question": "{QUESTIONS[0]}", "corpus": "{vanishing}"}}\n', encoding="utf-8")
        _submit(env, tmp_path / "questions.jsonl")  # checked against the folder while it exists
        shutil.rmtree(vanishing)
        worker = Worker(env, tmp_path / "worker.log")
        settings = _settings(env)
        try:
            [row] = _wait_for(
                lambda: (rows := job_queue.queue_status(settings)) and rows[0].status == "failed" and rows, "the job failed", workers=[worker]
            )
            assert worker.process.poll() is None  # the worker goes on taking jobs
        finally:
            assert worker.stop() == 0, worker.text()
        assert row.failures == 3 and str(vanishing) in row.error and "does not exist" in row.error, row
        assert worker.text().count("failed (") == 3 and "failed (3 of 3, marked failed)" in worker.text()
        assert "Traceback" not in worker.text() and server.log() == []
        status = subprocess.run(crash.cli_command("batch", "--status"), env=env, capture_output=True, text=True, timeout=60)
        assert "1 job: 1 failed" in status.stdout and "corpus folder" in status.stdout, status.stdout  # the reason, folded in its column
