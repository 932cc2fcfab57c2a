"""Many questions in one command (``deepstep batch``): the batch file, each question's thread, what a
re-run does with it, the summary rows, and the worker processes that run the questions.

Each question is a thread whose id, unless the file names one, is derived from the question and the
row's settings, so running the same file again finds its threads: a finished one is skipped (no model
call), an interrupted one resumed (only its unfinished calls), one with failed steps retried.

The workers are processes (multiprocessing's spawn context), not threads: a run installs its Ctrl-C
handling in its process's main thread, and its model-call limit and checkpointer connection are its
process's own. Spawn, not fork: the batch process already runs threads (the progress display, the
queues' feeders), which a fork would copy in whatever state they were. Each worker puts itself in its
own process group, so a Ctrl-C in the terminal reaches the batch process only, which passes it to each
worker once (a second one abandons the calls in flight, as for ``deepstep run``); a worker whose batch
process died stops its run the same way. All workers share the checkpoint database (SQLite in WAL mode
with a busy timeout, or Postgres).

The parsing, the thread ids, the action per thread and the summary rows are pure (tests/test_batch.py).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from deepstep import json_text
from deepstep.configuration import RUN_SHAPING_FIELDS, Settings
from deepstep.errors import ConfigError, DeepstepError, InputError, ThreadBusyError, UnknownThreadError
from deepstep.records import BatchAction, BatchOutcome, BatchQuestion, BatchRow, BatchStatus
from deepstep.threads import THREAD_ID

if TYPE_CHECKING:
    from multiprocessing.queues import Queue

    from deepstep.threads import RunResult

# Columns a batch file may have besides the question: the thread id, the corpus, and the settings that
# shape a run. Not review: a batch never pauses for one.
SETTING_COLUMNS = tuple(name for name in RUN_SHAPING_FIELDS if name not in ("corpus", "review"))
COLUMNS = ("question", "thread_id", "corpus", *SETTING_COLUMNS)
SUMMARY_COLUMNS = tuple(BatchRow.__annotations__)
MAX_WORKERS = 64
# How long a worker waits for a thread that another process still runs (a worker of a batch that was
# killed a moment ago stops its run within a second or two) before it counts the question as failed.
BUSY_WAIT_SECONDS = 30.0
_PARENT_POLL_SECONDS = 0.25

FileKind = Literal["text", "jsonl", "csv"]


def file_kind(path: Path) -> FileKind:
    """The batch file's format, by its suffix: .jsonl, .csv, else one question per line."""
    suffix = path.suffix.lower()
    return "jsonl" if suffix in (".jsonl", ".ndjson") else "csv" if suffix == ".csv" else "text"


def read_question_file(path: Path, what: str) -> str:
    """The text of a file of questions (``what``: "batch", "evaluation"); one readable ``InputError`` otherwise."""
    try:
        return path.read_text(encoding="utf-8-sig")  # a BOM, as Windows editors write, is not an error
    except OSError as error:
        raise InputError(f"cannot read the {what} file {path}: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise InputError(f"the {what} file {path} is not UTF-8 text: save it as UTF-8") from None


def read_batch(path: Path, base: Settings) -> list[BatchQuestion]:
    """The questions of the batch file at ``path``, checked (``InputError`` naming the line otherwise)."""
    return parse_batch(read_question_file(path, "batch"), file_kind(path), base, name=str(path))


def parse_batch(text: str, kind: FileKind, base: Settings, *, name: str = "the batch file") -> list[BatchQuestion]:
    """The questions in ``text``, each with its thread id and settings checked over ``base``."""
    questions = [_checked(line, fields, base, name) for line, fields in _rows(text, kind, name)]
    if not questions:
        raise InputError(f"{name} holds no question: one question per line, or JSONL/CSV rows with a question")
    seen: dict[str, int] = {}
    for question in questions:
        if (first := seen.setdefault(question["thread_id"], question["line"])) != question["line"]:
            raise InputError(
                f"{name} line {question['line']}: thread {question['thread_id']} is also line {first}'s; remove one or give another thread_id"
            )
    return questions


def _rows(text: str, kind: FileKind, name: str) -> Iterator[tuple[int, dict[str, Any]]]:
    if kind == "text":
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip() and not line.lstrip().startswith("#"):
                yield number, {"question": line}
    elif kind == "jsonl":
        yield from json_text.objects_by_line(text, name, '{"question": "..."}')
    else:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        try:
            header = reader.fieldnames or []
            _check_columns(header, name, 1)
            for fields in reader:
                if None in fields:  # more cells than the header has columns
                    raise InputError(f"{name} line {reader.line_num}: more cells than the header's {len(header)} columns")
                # An empty cell is not set: the environment's value (or the default) applies.
                yield reader.line_num, {key: value for key, value in fields.items() if value not in ("", None)}
        except csv.Error as error:
            raise InputError(f"{name} line {reader.line_num}: not CSV ({error})") from None


def _check_columns(columns: list[str] | Any, name: str, line: int) -> None:
    unknown = [str(column) for column in columns if column not in COLUMNS]
    if unknown:
        raise InputError(
            f"{name} line {line}: unknown column {', '.join(map(repr, unknown))}; use question, thread_id, corpus "
            f"or a run setting ({', '.join(SETTING_COLUMNS)})"
        )


def _checked(line: int, fields: dict[str, Any], base: Settings, name: str) -> BatchQuestion:
    from deepstep.api import question_field  # the API's own check: a question it would refuse fails here, before any run

    where = f"{name} line {line}"
    _check_columns(list(fields), name, line)
    question = question_field(fields, where)
    corpus = fields.get("corpus")
    if corpus is not None and (not isinstance(corpus, str) or not corpus.strip()):
        raise InputError(f"{where}: corpus must be the path of a folder")
    chosen = {key: value for key, value in fields.items() if key in SETTING_COLUMNS and value is not None}
    try:
        checked = Settings.build(**{**base.model_dump(), **chosen})
    except ConfigError as error:  # without the hint at DEEPSTEP_* variables: the row is at fault
        raise InputError(f"{where}: {str(error).split(' (see the command')[0]}") from None
    settings: dict[str, object] = checked.model_dump(mode="json", include=set(chosen))  # "2" from a CSV cell and 2 alike
    thread_id = fields.get("thread_id")
    if thread_id is None:
        thread_id = default_thread_id(question, corpus, settings)
    elif not isinstance(thread_id, str) or not THREAD_ID.match(thread_id):
        raise InputError(f"{where}: invalid thread_id {thread_id!r}: use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return {"line": line, "question": question, "thread_id": thread_id, "corpus": corpus, "settings": settings}


def default_thread_id(question: str, corpus: str | None, settings: dict[str, object]) -> str:
    """A stable thread id for a question: the same question with the same corpus and settings gets the same id."""
    key = json.dumps([question, corpus, settings], sort_keys=True, ensure_ascii=False)
    return "q-" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:12]


def question_settings(question: BatchQuestion, base: Settings) -> Settings:
    """The settings one question runs with: ``base``, its row's settings and corpus, never a review pause."""
    corpus = {"corpus": Path(question["corpus"])} if question["corpus"] is not None else {}
    return Settings.build(**{**base.model_dump(), **question["settings"], **corpus, "review": False})


def plan_action(stored: RunResult | None) -> BatchAction:
    """What the batch does with a question's thread: ``stored`` is the thread as saved (None: no thread yet)."""
    if stored is None:
        return "run"
    if stored.status != "done":
        return "resume"  # interrupted, or (a thread started elsewhere) waiting for review: resuming approves the plan
    return "retry" if stored.failed_steps else "skip"


def final_status(stored: RunResult | None, outcome: BatchOutcome | None, *, interrupted: bool) -> BatchStatus:
    """A question's status once the batch is over (``interrupted``: by Ctrl-C): done only when its thread
    finished without a failed step; interrupted when Ctrl-C stopped it or came before it started."""
    if stored is not None and stored.status == "done" and not stored.failed_steps:
        return "done"
    if (outcome is not None and outcome["status"] == "interrupted") or (outcome is None and interrupted):
        return "interrupted"
    return "failed"


def summary_row(
    question: BatchQuestion,
    action: BatchAction,
    stored: RunResult | None,
    outcome: BatchOutcome | None,
    *,
    cost: float | None,
    earlier_wall_seconds: float,
    report: str,
    interrupted: bool = False,
) -> BatchRow:
    """The summary row of one question, from its thread as saved and what this batch did with it."""
    from deepstep import step_tree
    from deepstep.claims import count_verdict

    status = final_status(stored, outcome, interrupted=interrupted)
    usage = stored.usage if stored is not None else {}
    steps = step_tree.steps(stored.tree) if stored is not None else []
    levels = [confidence["level"] for step in steps if (confidence := step.get("confidence"))]
    root = stored.tree.nodes[step_tree.ROOT_ID] if stored is not None else {}
    answered = [root.get("claims") or [], *(step.get("claims") or [] for step in steps if step["status"] == "done")]
    error = outcome["error"] if outcome is not None and status != "done" else ""
    if not error and stored is not None and stored.failed_steps:
        error = "; ".join(f"step {failed['level']} {failed['name']}: {failed['error']}" for failed in stored.failed_steps)
    if not error and status == "interrupted":
        error = "not finished: run the batch again to continue it"
    return {
        "question": question["question"],
        "thread_id": question["thread_id"],
        "status": status,
        "action": action,
        "steps": len(steps),
        "failed_steps": len(stored.failed_steps) if stored is not None else 0,
        "insufficient_steps": sum(1 for step in steps if step["status"] == "insufficient_evidence"),
        "calls": int(sum(fields.get("calls", 0) for fields in usage.values())),
        "tokens": int(sum(fields.get("prompt_tokens", 0) + fields.get("completion_tokens", 0) for fields in usage.values())),
        "cost": None if cost is None else round(cost, 6),
        "wall_seconds": round(earlier_wall_seconds + (outcome["wall_seconds"] if outcome is not None else 0.0), 2),
        "low_confidence_share": round(levels.count("low") / len(levels), 3) if levels else None,
        "unsupported_claims": sum(count_verdict(claims, "unsupported") for claims in answered),
        "error": error,
        "report": report,
    }


def summary_csv(rows: list[BatchRow]) -> str:
    """The summary table as CSV text (an unknown cost or confidence is an empty cell)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=SUMMARY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({key: "" if value is None else value for key, value in row.items()} for row in rows)
    return out.getvalue()


def earlier_wall_seconds(summary_text: str) -> dict[str, float]:
    """Wall seconds per thread from an earlier run's summary.csv (so a resumed question's time adds up);
    a summary that cannot be read counts nothing."""
    found: dict[str, float] = {}
    try:
        for row in csv.DictReader(io.StringIO(summary_text, newline="")):
            try:
                found[row["thread_id"]] = max(0.0, float(row["wall_seconds"]))
            except (KeyError, TypeError, ValueError):
                continue
    except csv.Error:
        return {}
    return found


def exit_code(rows: list[BatchRow], interrupted: bool) -> int:
    """0 when every question is done, 130 when the batch was interrupted, else 1."""
    if interrupted:
        return 130
    return 0 if all(row["status"] == "done" for row in rows) else 1


# The worker processes.


@dataclass(frozen=True)
class WorkerTask:
    index: int  # the question's position in the file's questions
    question: BatchQuestion
    settings: Settings


@dataclass(frozen=True)
class WorkerEvent:
    """What a worker tells the batch process: it took a question, how it gets on, how it ended."""

    kind: Literal["start", "progress", "end"]
    worker: int
    index: int
    phase: str = ""
    steps_done: int = 0
    steps_total: int = 0
    outcome: BatchOutcome | None = None


@dataclass
class WorkerResults:
    outcomes: dict[int, BatchOutcome]
    interrupted: bool


def run_workers(tasks: list[WorkerTask], workers: int, on_event: Callable[[WorkerEvent], None], *, stop_timeout: float = 60.0) -> WorkerResults:
    """Run ``tasks`` on ``workers`` processes, calling ``on_event`` with each event; Ctrl-C stops them cleanly."""
    import multiprocessing
    import queue
    import signal
    import threading

    if not tasks:
        return WorkerResults({}, interrupted=False)
    context = multiprocessing.get_context("spawn")
    task_queue: Queue[WorkerTask | None] = context.Queue()
    events: Queue[WorkerEvent] = context.Queue()
    count = min(workers, len(tasks))
    for task in tasks:
        task_queue.put(task)
    for _ in range(count):
        task_queue.put(None)  # one stop mark per worker
    processes: list[Any] = []
    interrupted = False
    in_main_thread = threading.current_thread() is threading.main_thread()

    def forward_ctrl_c(signum: int, frame: Any) -> None:
        nonlocal interrupted
        interrupted = True
        for process in processes:
            try:
                os.kill(process.pid, signal.SIGINT)
            except (OSError, TypeError):  # gone already, or not started
                pass

    previous: Any = None
    if in_main_thread:
        # The workers start with Ctrl-C ignored (the setting passes to a child) until they are in their own process group.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        for worker in range(count):
            process = context.Process(target=worker_main, args=(worker, task_queue, events, os.getpid()), name=f"deepstep-batch-worker-{worker + 1}")
            process.start()
            processes.append(process)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGINT, forward_ctrl_c)
    outcomes: dict[int, BatchOutcome] = {}
    taken: dict[int, int] = {}  # worker -> the question it runs
    stop_deadline: float | None = None
    try:
        while True:
            try:
                event = events.get(timeout=0.2)
            except queue.Empty:
                if not any(process.is_alive() for process in processes):
                    break
                if interrupted:
                    stop_deadline = stop_deadline or time.monotonic() + stop_timeout
                    if time.monotonic() > stop_deadline:
                        for process in processes:
                            process.kill()
                continue
            if event.kind == "start":
                taken[event.worker] = event.index
            elif event.kind == "end" and event.outcome is not None:
                outcomes[event.index] = event.outcome
                taken.pop(event.worker, None)
            on_event(event)
        while True:  # what the last workers sent before they exited
            try:
                event = events.get_nowait()
            except queue.Empty:
                break
            if event.kind == "end" and event.outcome is not None:
                outcomes[event.index] = event.outcome
                taken.pop(event.worker, None)
            on_event(event)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
        for process in processes:
            process.join(timeout=stop_timeout)
    for worker, index in taken.items():
        exitcode = processes[worker].exitcode
        status: BatchStatus = "interrupted" if interrupted else "failed"
        outcomes[index] = {
            "status": status,
            "error": f"its worker process died (exit code {exitcode}): run the batch again to resume it",
            "wall_seconds": 0.0,
        }
        on_event(WorkerEvent("end", worker, index, outcome=outcomes[index]))
    return WorkerResults(outcomes, interrupted)


def worker_main(worker: int, tasks: Queue[WorkerTask | None], events: Queue[WorkerEvent], parent_pid: int) -> None:
    """A worker process: take questions until the stop mark, Ctrl-C or the batch process's death."""
    import signal

    os.setpgrp()  # a Ctrl-C in the terminal reaches the batch process, which passes it on once
    signal.signal(signal.SIGINT, signal.default_int_handler)
    _stop_when_orphaned(parent_pid)
    try:
        while (task := tasks.get()) is not None:
            events.put(WorkerEvent("start", worker, task.index))

            def report(progress: Any, index: int = task.index) -> None:
                events.put(WorkerEvent("progress", worker, index, progress.phase, progress.steps_done, progress.steps_total))

            outcome = run_question(task, report)
            events.put(WorkerEvent("end", worker, task.index, outcome=outcome))
            if outcome["status"] == "interrupted":
                return
    except KeyboardInterrupt:
        return


def _stop_when_orphaned(parent_pid: int) -> None:
    """Stop this worker's run, as Ctrl-C does, once the batch process is gone (killed): its thread is then
    left to the next batch, not run on by a process no one watches."""
    import signal
    import threading

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(_PARENT_POLL_SECONDS)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(BUSY_WAIT_SECONDS / 2)  # the run stops within a second; this only ends a worker stuck elsewhere
        os._exit(1)

    threading.Thread(target=watch, name="deepstep-batch-parent-watch", daemon=True).start()


def _thread_exists(thread_id: str, settings: Settings) -> bool:
    from deepstep.threads import load

    try:
        load(thread_id, settings=settings)
    except UnknownThreadError:
        return False
    return True


def run_question(task: WorkerTask, on_progress: Callable[[Any], None]) -> BatchOutcome:
    """Run, resume or retry one question's thread (in a worker); every error becomes the outcome."""
    from deepstep import api

    started = time.monotonic()
    thread_id = task.question["thread_id"]
    deadline = started + BUSY_WAIT_SECONDS
    while True:
        try:
            # Decided again here: a worker of a batch killed a moment ago may have started the thread since.
            if _thread_exists(thread_id, task.settings):
                result = api.resume(thread_id, settings=task.settings, on_progress=on_progress)
            else:
                result = api.run(task.question["question"], thread_id=thread_id, settings=task.settings, on_progress=on_progress)
        except ThreadBusyError as error:
            if time.monotonic() < deadline:
                time.sleep(0.5)
                continue
            return {"status": "failed", "error": str(error), "wall_seconds": time.monotonic() - started}
        except KeyboardInterrupt:
            return {"status": "interrupted", "error": "interrupted: run the batch again to continue it", "wall_seconds": time.monotonic() - started}
        except DeepstepError as error:
            return {"status": "failed", "error": str(error), "wall_seconds": time.monotonic() - started}
        except Exception as error:  # noqa: BLE001 - a fault in one question must not end the worker and the others' runs
            return {"status": "failed", "error": f"{type(error).__name__}: {error}", "wall_seconds": time.monotonic() - started}
        wall = time.monotonic() - started
        if result.status != "done":
            return {"status": "failed", "error": f"the thread is {result.status.replace('_', ' ')}", "wall_seconds": wall}
        return {"status": "failed" if result.failed_steps else "done", "error": "", "wall_seconds": wall}


__all__ = [
    "SUMMARY_COLUMNS",
    "WorkerEvent",
    "WorkerTask",
    "default_thread_id",
    "earlier_wall_seconds",
    "exit_code",
    "final_status",
    "parse_batch",
    "plan_action",
    "question_settings",
    "read_batch",
    "run_question",
    "run_workers",
    "summary_csv",
    "summary_row",
]
