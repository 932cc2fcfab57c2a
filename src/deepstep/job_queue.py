"""Batches across machines: one job per question on a Postgres job queue (procrastinate), taken by
``deepstep worker`` processes on any number of machines that share ``DEEPSTEP_DATABASE_URL``.

Why procrastinate: it needs nothing but the Postgres database the checkpoints are in already (no second
broker to run), a job taken by a worker is marked as such in one transaction, workers send heartbeats so a
dead worker's jobs can be found, and jobs have retries, locks (never two jobs of one thread at once) and
queueing locks (one waiting job per thread).

A job is a question's row of the batch file (``BatchQuestion``) with the settings it runs with; its thread is
run, resumed or retried exactly as ``deepstep batch`` does (``batch.run_question``), so a job taken again
after its worker died continues from the thread's checkpoints: only the calls in flight are repeated.

- A worker process runs one job at a time (procrastinate's concurrency 1): a run installs its model-call
  limit per process (``call_limits``), and a worker killed then loses one job only. ``--concurrency N``
  starts N such processes (``cli/queue.py``).
- Dead workers: each worker sends a heartbeat every ``queue_stall_seconds / 3``, and as often looks for jobs
  whose worker sent none for ``queue_stall_seconds`` (killed, or its machine lost); one worker at a time (an
  advisory lock) puts them back in the queue, counting a failure. So a dead worker's job is taken again within
  about ``queue_stall_seconds * 4 / 3`` plus the time another worker needs to become free.
- SIGTERM (or Ctrl-C): the worker takes no new job, lets the calls in flight finish (up to ``timeout``),
  stops the run before its next call (``interrupts.stop_every_run``), releases the job (back in the queue,
  no failure counted) and exits 0.
- A job that failed ``queue_attempts`` times (an error, failed steps, or its worker dying) is marked failed;
  its last reason is kept in ``deepstep_queue_failures`` and shown by ``deepstep batch --status``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from deepstep.configuration import RUN_SHAPING_FIELDS, Settings
from deepstep.errors import ConfigError
from deepstep.postgres import not_installed  # first: without the Postgres support it says how to install it
from deepstep.records import BatchQuestion

try:
    import procrastinate
    from procrastinate.retry import BaseRetryStrategy, RetryDecision
except ImportError as error:
    raise not_installed(error) from None

if TYPE_CHECKING:
    import psycopg
    from procrastinate.jobs import Job
    from procrastinate.types import JSONValue

TASK_NAME = "deepstep.research_question"
QUEUE = "deepstep"
# Advisory-lock key that lets one worker at a time put dead workers' jobs back.
RECOVERY_LOCK_KEY = 0x64656570_72656376  # "deeprecv"
RETRY_BACKOFF_SECONDS = 2  # a failed job waits this times its failures before it is taken again
FAILURES_TABLE = "deepstep_queue_failures"
STATUSES = ("todo", "doing", "done", "failed", "cancelled", "aborted")
# Settings a job does not carry from the submitting machine: where the corpus is (each machine has its own
# folder, unless the row names one) and review (a batch never pauses).
_MACHINE_FIELDS = ("corpus", "review")


class JobReleased(Exception):
    """The worker is stopping (SIGTERM): the job goes back in the queue, not counted as a failure."""


class QuestionFailed(Exception):
    """The question's run failed; ``failures`` counts this one, the job is retried below ``allowed``."""

    def __init__(self, reason: str, failures: int, allowed: int) -> None:
        super().__init__(reason)
        self.failures = failures
        self.allowed = allowed


def retry_delay(exception: BaseException) -> float | None:
    """Seconds before a job whose run raised ``exception`` is taken again; None: it is failed for good."""
    if isinstance(exception, JobReleased):
        return 0.0
    if isinstance(exception, QuestionFailed) and exception.failures < exception.allowed:
        return float(RETRY_BACKOFF_SECONDS * exception.failures)
    return None


def job_settings(question: BatchQuestion, base: Settings) -> dict[str, object]:
    """The run-shaping settings a job carries: the submitting environment's, with the row's on top; not the
    corpus folder (a row's own corpus travels in the row) nor review."""
    shaping = base.model_dump(mode="json", include={name for name in RUN_SHAPING_FIELDS if name not in _MACHINE_FIELDS})
    return {**shaping, **question["settings"]}


def worker_settings(question: BatchQuestion, carried: dict[str, object], base: Settings) -> Settings:
    """The settings a worker runs a job with: its machine's (model server, home, corpus) with the job's on top."""
    from deepstep.batch import question_settings

    return question_settings({**question, "settings": {**carried, **question["settings"]}}, base)


# The database.


def _database_url(settings: Settings) -> str:
    if settings.database_url is None:
        raise ConfigError(
            "the job queue needs Postgres: set DEEPSTEP_DATABASE_URL (postgresql://user:password@host:5432/db) "
            "on every machine, or run `deepstep batch FILE` on one machine"
        )
    return settings.database_url.get_secret_value()


def ensure_schema(url: str) -> None:
    """Create procrastinate's tables and deepstep's failure table once (workers and submitters at once may
    all try: the schema lock makes one do it)."""
    from deepstep import postgres

    with postgres.connect(url, application_name="deepstep-queue") as connection:
        try:
            with postgres.schema_lock(connection):
                exists = connection.execute("SELECT to_regclass('procrastinate_jobs') IS NOT NULL").fetchone()
                if not (exists and exists[0]):
                    from procrastinate.schema import SchemaManager

                    connection.execute(SchemaManager.get_schema())
                connection.execute(
                    f"CREATE TABLE IF NOT EXISTS {FAILURES_TABLE} ("
                    "job_id bigint PRIMARY KEY REFERENCES procrastinate_jobs(id) ON DELETE CASCADE, "
                    "failures integer NOT NULL, error text NOT NULL, at timestamptz NOT NULL DEFAULT now())"
                )
        except postgres.psycopg.Error as error:
            raise postgres.connection_error(url, error) from None


def record_failure(connection: psycopg.Connection[Any], job_id: int, reason: str) -> int:
    """Count one more failure of the job, keeping ``reason``; its failures so far."""
    row = connection.execute(
        f"INSERT INTO {FAILURES_TABLE} (job_id, failures, error) VALUES (%s, 1, %s) "
        f"ON CONFLICT (job_id) DO UPDATE SET failures = {FAILURES_TABLE}.failures + 1, error = EXCLUDED.error, at = now() "
        "RETURNING failures",
        (job_id, reason),
    ).fetchone()
    return int(row[0]) if row else 1


def queue_app(url: str, *, pool_size: int = 4) -> procrastinate.App:
    """The procrastinate app on ``url`` with deepstep's one task."""
    connector = procrastinate.PsycopgConnector(conninfo=url, min_size=1, max_size=pool_size, kwargs={"application_name": "deepstep-queue"})
    app = procrastinate.App(connector=connector)
    app.task(name=TASK_NAME, queue=QUEUE, pass_context=True, retry=_RetryPolicy())(research_job)
    return app


class _RetryPolicy(BaseRetryStrategy):
    """procrastinate's retry decision from ``retry_delay``."""

    def get_retry_decision(self, *, exception: BaseException, job: Job) -> RetryDecision | None:
        delay = retry_delay(exception)
        return None if delay is None else RetryDecision(retry_in={"seconds": int(delay)})


# Submitting.


@dataclass
class Submitted:
    queued: list[str]  # thread ids of the jobs deferred now
    already_queued: list[str]  # a job of the thread waits or runs already
    done: list[str]  # the thread is finished: no job


def submit(questions: list[BatchQuestion], finished: set[str], base: Settings) -> Submitted:
    """Defer one job per question, except for finished threads and threads that have a job waiting or running."""
    from procrastinate.exceptions import AlreadyEnqueued

    from deepstep import postgres

    url = _database_url(base)
    ensure_schema(url)
    with postgres.connect(url, application_name="deepstep-queue") as connection:
        rows = connection.execute(
            "SELECT queueing_lock FROM procrastinate_jobs WHERE task_name = %s AND status IN ('todo', 'doing')", (TASK_NAME,)
        ).fetchall()
    active = {row[0] for row in rows}
    result = Submitted([], [], [])
    app = queue_app(url, pool_size=1)
    try:
        with app.open():
            for question in questions:
                thread_id = question["thread_id"]
                if thread_id in finished:
                    result.done.append(thread_id)
                    continue
                if thread_id in active:
                    result.already_queued.append(thread_id)
                    continue
                task = app.tasks[TASK_NAME].configure(lock=thread_id, queueing_lock=thread_id)
                try:
                    # Both are JSON values: the row as parsed from the file, the settings as dumped in JSON mode.
                    task.defer(question=cast("JSONValue", question), settings=cast("JSONValue", job_settings(question, base)))
                except AlreadyEnqueued:  # submitted by someone else since we looked
                    result.already_queued.append(thread_id)
                    continue
                result.queued.append(thread_id)
    except Exception as error:
        raise _database_error(url, error) from None
    return result


def _database_error(url: str, error: Exception) -> Exception:
    from deepstep import postgres

    cause = error
    while cause.__cause__ is not None and not isinstance(cause, postgres.psycopg.Error):
        cause = cause.__cause__  # type: ignore[assignment]
    if isinstance(cause, postgres.psycopg.Error):
        return postgres.connection_error(url, cause)
    return error


# The queue's state.


@dataclass(frozen=True)
class JobRow:
    job_id: int
    status: str  # todo, doing, done, failed, cancelled, aborted
    thread_id: str
    question: str
    attempts: int  # runs of it that ended: done, failed, released, or put back after its worker died
    failures: int
    error: str  # the last failure's reason ("" once the job is done)


def queue_status(settings: Settings) -> list[JobRow]:
    """Every question job on the queue, oldest first."""
    from deepstep import postgres

    url = _database_url(settings)
    ensure_schema(url)
    with postgres.connect(url, application_name="deepstep-queue") as connection:
        try:
            rows = connection.execute(
                "SELECT j.id, j.status::text, j.args->'question'->>'thread_id', j.args->'question'->>'question', j.attempts, "
                f"COALESCE(f.failures, 0), COALESCE(f.error, '') FROM procrastinate_jobs j LEFT JOIN {FAILURES_TABLE} f ON f.job_id = j.id "
                "WHERE j.task_name = %s ORDER BY j.id",
                (TASK_NAME,),
            ).fetchall()
        except postgres.psycopg.Error as error:
            raise postgres.connection_error(url, error) from None
    found = [JobRow(r[0], "done" if r[1] == "succeeded" else r[1], r[2] or "", r[3] or "", r[4], r[5], r[6]) for r in rows]
    # A done job's earlier failures stay counted, but their reason no longer applies.
    return [dataclasses.replace(row, error="") if row.status == "done" else row for row in found]


def status_counts(rows: list[JobRow]) -> dict[str, int]:
    """Jobs per status, in the order todo, doing, done, failed (then any other), only those present."""
    counts = {status: sum(1 for row in rows if row.status == status) for status in STATUSES}
    return {status: count for status, count in counts.items() if count}


# The worker.


_stopping = False  # set by the first SIGTERM / Ctrl-C; read by the job thread


def research_job(context: Any, question: dict[str, Any], settings: dict[str, object]) -> str:
    """procrastinate's task: run, resume or retry the question's thread (in a thread of the worker process)."""
    from deepstep import postgres
    from deepstep.batch import WorkerTask, run_question

    row: BatchQuestion = question  # type: ignore[assignment]
    job_id = context.job.id
    where = f"job {job_id} (thread {row['thread_id']})"
    base = Settings.build()
    url = _database_url(base)
    if _stopping:
        raise JobReleased("the worker is stopping")
    try:
        run_settings = worker_settings(row, settings, base)
    except Exception as error:  # noqa: BLE001 - an unusable job is a failure of that job, not of the worker
        outcome_error = f"its settings do not apply here: {error}"
        status = "failed"
    else:
        _say(f"{where} started: {row['question'][:100]}")
        outcome = run_question(WorkerTask(0, row, run_settings), lambda progress: None)
        status, outcome_error = outcome["status"], outcome["error"]
        if status == "done":
            _say(f"{where} done in {outcome['wall_seconds']:.1f} s")
            return "done"
    if status == "interrupted" or _stopping:
        _say(f"{where} released: the worker is stopping; another worker continues it from its checkpoints")
        raise JobReleased(outcome_error or "the worker is stopping")
    if not outcome_error:  # the thread finished with failed steps: their reasons
        outcome_error = _failed_steps(row["thread_id"], run_settings)
    with postgres.connect(url, application_name="deepstep-queue") as connection:
        failures = record_failure(connection, job_id, outcome_error)
    allowed = base.queue_attempts
    then = "marked failed" if failures >= allowed else "to retry"
    _say(f"{where} failed ({failures} of {allowed}, {then}): {outcome_error}")
    raise QuestionFailed(outcome_error, failures, allowed)


def _failed_steps(thread_id: str, settings: Settings) -> str:
    from deepstep.threads import load

    failed = load(thread_id, settings=settings).failed_steps
    return "; ".join(f"step {step['level']} {step['name']}: {step['error']}" for step in failed) or "the run failed"


def _say(line: str) -> None:
    print(f"[worker {socket.gethostname()}:{os.getpid()}] {line}", file=sys.stderr, flush=True)


async def recover_stalled_jobs(app: procrastinate.App, lock_connection: psycopg.AsyncConnection[Any], settings: Settings) -> int:
    """Put back the jobs of workers that sent no heartbeat for ``queue_stall_seconds`` (one worker at a time
    does it), counting a failure each (failed for good at ``queue_attempts``); how many were put back."""
    from procrastinate import jobs, utils

    row = await (await lock_connection.execute("SELECT pg_try_advisory_lock(%s)", (RECOVERY_LOCK_KEY,))).fetchone()
    if not (row and row[0]):
        return 0  # another worker does it now
    recovered = 0
    try:
        stalled = await app.job_manager.get_stalled_jobs(task_name=TASK_NAME, seconds_since_heartbeat=settings.queue_stall_seconds)
        for job in stalled:
            assert job.id is not None
            reason = f"its worker sent no heartbeat for {settings.queue_stall_seconds:g} s (killed, or its machine lost) mid-job"
            failures = await asyncio.to_thread(_record_failure_now, _database_url(settings), job.id, reason)
            if failures >= settings.queue_attempts:
                await app.job_manager.finish_job_by_id_async(job.id, status=jobs.Status.FAILED, delete_job=False)
                _say(f"job {job.id} (thread {job.queueing_lock}) failed ({failures} of {settings.queue_attempts}): {reason}")
            else:
                await app.job_manager.retry_job_by_id_async(job.id, retry_at=utils.utcnow())
                _say(f"job {job.id} (thread {job.queueing_lock}) put back in the queue: {reason}")
            recovered += 1
    finally:
        await lock_connection.execute("SELECT pg_advisory_unlock(%s)", (RECOVERY_LOCK_KEY,))
    return recovered


def _record_failure_now(url: str, job_id: int, reason: str) -> int:
    from deepstep import postgres

    with postgres.connect(url, application_name="deepstep-queue") as connection:
        return record_failure(connection, job_id, reason)


class _OneLineLogs(logging.Filter):
    """procrastinate's log lines without tracebacks: a job's failure is already one line of ours."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info, record.exc_text = None, None
        return True


def run_worker(settings: Settings) -> int:
    """Take jobs until SIGTERM or Ctrl-C (this process's main thread): one run at a time. Returns the exit code."""
    url = _database_url(settings)
    ensure_schema(url)
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_OneLineLogs())
    handler.setFormatter(logging.Formatter(f"[worker {socket.gethostname()}:{os.getpid()}] procrastinate: %(message)s"))
    procrastinate_log = logging.getLogger("procrastinate")
    procrastinate_log.addHandler(handler)
    procrastinate_log.setLevel(logging.WARNING)
    procrastinate_log.propagate = False
    try:
        return asyncio.run(_work(url, settings))
    except Exception as error:
        raise _database_error(url, error) from None


async def _work(url: str, settings: Settings) -> int:
    import psycopg
    from procrastinate.worker import Worker

    from deepstep.interrupts import stop_every_run

    heartbeat = settings.queue_stall_seconds / 3
    app = queue_app(url)
    async with app.open_async():
        worker = Worker(
            app,
            queues=[QUEUE],
            name=f"{socket.gethostname()}:{os.getpid()}",
            concurrency=1,
            fetch_job_polling_interval=min(5.0, heartbeat),
            install_signal_handlers=False,
            update_heartbeat_interval=heartbeat,
            stalled_worker_timeout=settings.queue_stall_seconds,
            shutdown_graceful_timeout=None,
        )
        loop = asyncio.get_running_loop()

        def on_signal() -> None:
            global _stopping
            if not _stopping:
                _stopping = True
                _say("stopping: the calls in flight finish, then the job goes back in the queue")
                stop_every_run(settings.timeout)  # the calls in flight may take up to their own deadline
            else:
                _say("stopping now: abandoning the calls in flight")
                stop_every_run(0.0)
            worker.stop()

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal)
        async with await psycopg.AsyncConnection.connect(url, autocommit=True, application_name="deepstep-queue-recovery") as lock_connection:
            recovery = asyncio.create_task(_recover_periodically(app, lock_connection, settings, heartbeat))
            try:
                await worker.run()
            finally:
                recovery.cancel()
                await asyncio.gather(recovery, return_exceptions=True)
    return 0


async def _recover_periodically(app: procrastinate.App, lock_connection: psycopg.AsyncConnection[Any], settings: Settings, every: float) -> None:
    while True:
        try:
            await recover_stalled_jobs(app, lock_connection, settings)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001 - a failed look is tried again next time; the worker goes on
            _say(f"could not look for dead workers' jobs: {type(error).__name__}: {error}")
        await asyncio.sleep(every)


__all__ = [
    "JobReleased",
    "JobRow",
    "QuestionFailed",
    "Submitted",
    "ensure_schema",
    "job_settings",
    "queue_status",
    "retry_delay",
    "run_worker",
    "status_counts",
    "submit",
    "worker_settings",
]
