"""The job queue from the command line: ``deepstep batch --submit FILE`` and ``--status`` (called by
``deepstep batch``), and ``deepstep worker`` (``deepstep.job_queue``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from deepstep.cli.common import app, fail, load_settings, stderr, user_errors

if TYPE_CHECKING:
    from deepstep.configuration import Settings

MAX_CONCURRENCY = 64
NEEDS_DATABASE = "needs DEEPSTEP_DATABASE_URL (postgresql://user:password@host:5432/db), the database every worker shares"


def submit(file: Path, base: Settings) -> None:
    """Check FILE as `deepstep batch` does, then put one job per unfinished question on the queue."""
    from deepstep import batch as batching
    from deepstep import job_queue
    from deepstep.cli.batch import _plan_line, _prepared

    if base.database_url is None:
        fail(f"--submit {NEEDS_DATABASE}; without it, run `deepstep batch {file}` on this machine")
    questions = batching.read_batch(file, base)
    runs = [_prepared(question, base, file) for question in questions]  # every row checked before any job is queued
    actions = [batching.plan_action(stored) for _, stored in runs]
    stderr.print(_plan_line(actions), highlight=False)
    finished = {question["thread_id"] for question, action in zip(questions, actions, strict=True) if action == "skip"}
    result = job_queue.submit(questions, finished, base)
    parts = [f"{len(result.queued)} queued"]
    if result.already_queued:
        parts.append(f"{len(result.already_queued)} queued before (waiting or running)")
    if result.done:
        parts.append(f"{len(result.done)} done already")
    typer.echo(", ".join(parts) + ": start `deepstep worker` on each machine; `deepstep batch --status` shows the queue")


def status(base: Settings) -> None:
    """The queue as a table: each question job's status, thread, attempts and last error."""
    from rich.console import Console
    from rich.table import Table

    from deepstep import job_queue

    if base.database_url is None:
        fail(f"--status {NEEDS_DATABASE}")
    rows = job_queue.queue_status(base)
    counts = job_queue.status_counts(rows)
    table = Table(show_edge=False)
    for column in ("job", "status", "thread", "attempts", "failures", "question", "error"):
        table.add_column(column, justify="right" if column in ("job", "attempts", "failures") else "left", overflow="fold")
    for row in rows:
        table.add_row(str(row.job_id), row.status, row.thread_id, str(row.attempts), str(row.failures), _short(row.question, 60), row.error)
    console = Console(width=max(160, Console().width), soft_wrap=False)
    console.print(table)
    summary = ", ".join(f"{count} {name}" for name, count in counts.items()) or "no job"
    console.print(f"{len(rows)} job{'s' * (len(rows) != 1)}: {summary}", highlight=False)


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


@app.command()
def worker(
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-c", help="Questions run at once on this machine, each in its own worker process.")
    ] = 1,
) -> None:
    """Take questions from the job queue (DEEPSTEP_DATABASE_URL) until SIGTERM or Ctrl-C, which release the jobs in progress."""
    from deepstep.cli.batch import _embedded_model

    with user_errors():
        if not 1 <= concurrency <= MAX_CONCURRENCY:
            fail(f"--concurrency must be 1 to {MAX_CONCURRENCY}, not {concurrency}")
        settings = load_settings()
        if settings.database_url is None:
            fail(f"deepstep worker {NEEDS_DATABASE}")
        from deepstep.configuration import ROLES
        from deepstep.job_queue import ensure_schema, run_worker

        if not settings.needs_embedded_model:
            for role in ROLES:
                settings.resolve_model(role)  # no usable model server: one line now, not a failure per job
        ensure_schema(settings.database_url.get_secret_value())
        with _embedded_model(settings, True):
            code = run_worker(settings) if concurrency == 1 else _run_processes(concurrency)
        raise typer.Exit(code)


def _run_processes(count: int) -> int:
    """``count`` worker processes (``deepstep worker`` each), each in its own process group so a Ctrl-C in the
    terminal reaches this one only, which passes SIGTERM / Ctrl-C on to every worker once; 0 when all exit 0."""
    command = [sys.executable, "-m", "deepstep.cli", "worker", "--concurrency", "1"]
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    processes: list[subprocess.Popen[bytes]] = []

    def forward(signum: int, frame: Any) -> None:
        for process in processes:
            if process.poll() is None:
                try:
                    os.kill(process.pid, signum)
                except OSError:  # gone meanwhile
                    pass

    for signum in previous:
        signal.signal(signum, forward)
    try:
        for _ in range(count):
            processes.append(subprocess.Popen(command, start_new_session=True))
        stderr.print(f"{count} worker processes: {', '.join(str(p.pid) for p in processes)}", highlight=False)
        while any(process.poll() is None for process in processes):
            time.sleep(0.2)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    codes = [process.returncode for process in processes]
    failed = [f"{process.pid} ({code})" for process, code in zip(processes, codes, strict=True) if code != 0]
    if failed:
        stderr.print(f"worker processes that did not stop cleanly: {', '.join(failed)}; their jobs are taken again by other workers", highlight=False)
        return 1
    return 0
