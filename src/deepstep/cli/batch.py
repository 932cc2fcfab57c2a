"""``deepstep batch``: research every question of a file on several worker processes (``deepstep.batch``)."""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from deepstep.cli.common import app, fail, load_settings, stderr, user_errors

if TYPE_CHECKING:
    from rich.console import RenderableType

    from deepstep.batch import WorkerEvent
    from deepstep.configuration import Settings
    from deepstep.records import BatchAction, BatchOutcome, BatchQuestion, BatchRow
    from deepstep.threads import RunResult


@app.command()
def batch(
    file: Annotated[
        Path | None,
        typer.Argument(
            help="Questions: a text file (one per line, # comments), or JSONL/CSV with question and optional thread_id, corpus, settings."
        ),
    ] = None,
    submit: Annotated[
        Path | None,
        typer.Option(
            "--submit",
            metavar="FILE",
            help="Put one job per question of FILE on the Postgres job queue (DEEPSTEP_DATABASE_URL) for `deepstep worker` processes.",
        ),
    ] = None,
    status: Annotated[bool, typer.Option("--status", help="Show the job queue: each question's job, its status, attempts and error.")] = False,
    workers: Annotated[int, typer.Option("--workers", "-w", help="Worker processes running questions at once.")] = 2,
    out: Annotated[
        Path | None, typer.Option(help="Folder for summary.csv, summary.parquet and one report per question (default: HOME/batches/FILE_STEM).")
    ] = None,
) -> None:
    """Research every question of FILE; a re-run skips finished questions, resumes interrupted ones, retries failed ones."""
    from deepstep import batch as batching

    with user_errors():
        if (file is not None) + (submit is not None) + status != 1:
            fail("give a batch FILE, --submit FILE or --status (one of them)")
        if submit is not None or status:
            from deepstep.cli import queue

            base = load_settings()
            queue.submit(submit, base) if submit is not None else queue.status(base)
            return
        assert file is not None
        if not 1 <= workers <= batching.MAX_WORKERS:
            fail(f"--workers must be 1 to {batching.MAX_WORKERS}, not {workers}")
        base = load_settings()
        questions = batching.read_batch(file, base)
        folder = out or base.home / "batches" / file.stem
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            fail(f"cannot create the output folder {folder}: {error.strerror or error}; pass a writable --out DIR")
        runs = [_prepared(question, base, file) for question in questions]  # every row checked before any run starts
        actions = [batching.plan_action(stored) for _, stored in runs]
        stderr.print(_plan_line(actions), highlight=False)
        tasks = [
            batching.WorkerTask(i, q, settings) for i, (q, (settings, _)) in enumerate(zip(questions, runs, strict=True)) if actions[i] != "skip"
        ]
        started = time.monotonic()
        with _embedded_model(base, bool(tasks)), _BatchDisplay(questions, actions, min(workers, max(1, len(tasks)))) as display:
            results = batching.run_workers(tasks, workers, display.on_event)
        rows = _write_outputs(questions, actions, results.outcomes, results.interrupted, folder, base)
        _print_summary(rows, folder, time.monotonic() - started)
        code = batching.exit_code(rows, results.interrupted)
        if code == 130:
            fail("interrupted: run the same `deepstep batch` command again to continue", code=130)
        raise typer.Exit(code)


def _prepared(question: BatchQuestion, base: Settings, file: Path) -> tuple[Settings, RunResult | None]:
    """The question's settings, its corpus indexed, and its thread as stored (None: not started)."""
    from deepstep import step_tree
    from deepstep.batch import question_settings
    from deepstep.configuration import ROLES
    from deepstep.errors import DeepstepError, InputError, UnknownThreadError
    from deepstep.retrieval import corpus_retriever
    from deepstep.threads import load

    where = f"{file} line {question['line']} (thread {question['thread_id']})"
    try:
        settings = question_settings(question, base)
        if not settings.needs_embedded_model:
            for role in ROLES:
                settings.resolve_model(role)  # no server configured, or not an http(s) URL: one line now, not a failure per question
        # Indexed here, once per corpus, not by every worker at the same time; a bad corpus fails before any run.
        corpus_retriever(settings)
    except DeepstepError as error:
        raise InputError(f"{where}: {error}") from None
    try:
        stored: RunResult | None = load(question["thread_id"], settings=settings)
    except UnknownThreadError:
        stored = None
    if stored is not None and step_tree.question_of(stored.tree) not in ("", question["question"]):
        raise InputError(f"{where}: thread {question['thread_id']} holds another question: give this row another thread_id")
    return settings, stored


def _plan_line(actions: list[BatchAction]) -> str:
    counts = {action: actions.count(action) for action in ("run", "resume", "retry", "skip")}
    words = {"run": "to run", "resume": "to resume", "retry": "to retry (failed steps)", "skip": "done already"}
    parts = [f"{counts[action]} {words[action]}" for action in words if counts[action]]
    return f"{len(actions)} question{'s' * (len(actions) != 1)}: " + ", ".join(parts)


def _embedded_model(settings: Settings, needed: bool) -> Any:
    """The embedded model server for the whole batch when no server is configured: started once here, the
    workers' runs find it under HOME and share it (it computes one request at a time)."""
    if not (needed and settings.needs_embedded_model):
        return nullcontext()
    from deepstep.llm_server import embedded_server

    return embedded_server(settings.home, module=settings.llama_server_module)


class _BatchDisplay:
    """The live view: one line per worker (thread, phase, steps done/total, question) and the overall count;
    plain lines, one per start, phase change and end, when stderr is not a terminal."""

    def __init__(self, questions: list[BatchQuestion], actions: list[BatchAction], workers: int) -> None:
        self.questions = questions
        self.total = len(questions)
        self.skipped = actions.count("skip")
        self.ended: dict[int, BatchOutcome] = {}
        self.current: dict[int, tuple[int, str, int, int]] = {}  # worker -> question index, phase, steps done, total
        self.workers = workers
        self.live: Any = None

    def __enter__(self) -> _BatchDisplay:
        if stderr.is_terminal:
            from rich.live import Live

            self.live = Live(self._render(), console=stderr, refresh_per_second=4, transient=False)
            self.live.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.live is not None:
            self.live.update(self._render())
            self.live.__exit__(*exc_info)

    def on_event(self, event: WorkerEvent) -> None:
        question = self.questions[event.index]
        name = f"[worker {event.worker + 1}] {question['thread_id']}"
        if event.kind == "start":
            self.current[event.worker] = (event.index, "starting", 0, 0)
            self._say(f"{name} started: {_short(question['question'], 100)}")
        elif event.kind == "progress":
            _, phase, _, _ = self.current.get(event.worker, (event.index, "", 0, 0))
            self.current[event.worker] = (event.index, event.phase, event.steps_done, event.steps_total)
            if event.phase != phase and event.phase != "done":  # the end line follows
                self._say(f"{name} {event.phase}")
        elif event.outcome is not None:
            self.ended[event.index] = event.outcome
            self.current.pop(event.worker, None)
            outcome = event.outcome
            detail = f": {outcome['error']}" if outcome["error"] else ""
            self._say(f"{name} {outcome['status']} in {outcome['wall_seconds']:.1f} s{detail}")
        if self.live is not None:
            self.live.update(self._render())

    def _say(self, line: str) -> None:
        if self.live is None:
            stderr.print(line, highlight=False, markup=False)

    def _overall(self) -> str:
        done = sum(1 for outcome in self.ended.values() if outcome["status"] == "done")
        failed = sum(1 for outcome in self.ended.values() if outcome["status"] == "failed")
        line = f"{done + self.skipped}/{self.total} questions done"
        if self.skipped:
            line += f" ({self.skipped} before this batch)"
        return line + (f", {failed} failed" if failed else "")

    def _render(self) -> RenderableType:
        from rich.table import Table

        table = Table.grid(padding=(0, 2))
        for _ in range(4):
            table.add_column(no_wrap=True)
        table.add_column(overflow="ellipsis", no_wrap=True)
        for worker in range(self.workers):
            if worker in self.current:
                index, phase, done, total = self.current[worker]
                steps = f"{done}/{total} steps" if total else ""
                question = self.questions[index]
                table.add_row(f"worker {worker + 1}", question["thread_id"], f"[bold]{phase}[/]", steps, _short(question["question"], 80))
            else:
                table.add_row(f"worker {worker + 1}", "", "[dim]idle[/]", "", "")
        table.add_row("", "", "", "", "")
        table.add_row(f"[bold]{self._overall()}[/]", "", "", "", "")
        return table


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _write_outputs(
    questions: list[BatchQuestion], actions: list[BatchAction], outcomes: dict[int, BatchOutcome], interrupted: bool, folder: Path, base: Settings
) -> list[BatchRow]:
    """One report per finished question, and the summary as CSV and Parquet, in ``folder``."""
    from deepstep.atomic_files import write_text_atomically
    from deepstep.batch import earlier_wall_seconds, question_settings, summary_csv, summary_row
    from deepstep.errors import UnknownThreadError
    from deepstep.threads import load

    summary = folder / "summary.csv"
    try:
        earlier = earlier_wall_seconds(summary.read_text(encoding="utf-8")) if summary.exists() else {}
    except (OSError, UnicodeDecodeError):
        earlier = {}
    rows: list[BatchRow] = []
    try:
        for index, question in enumerate(questions):
            settings = question_settings(question, base)
            try:
                stored: RunResult | None = load(question["thread_id"], settings=settings)
            except UnknownThreadError:
                stored = None
            report = ""
            if stored is not None and stored.status == "done":
                report = f"{question['thread_id']}.md"
                write_text_atomically(folder / report, stored.markdown)
            rows.append(
                summary_row(
                    question,
                    actions[index],
                    stored,
                    outcomes.get(index),
                    cost=settings.estimate_cost(stored.usage) if stored is not None and settings.prices else None,
                    earlier_wall_seconds=earlier.get(question["thread_id"], 0.0),
                    report=report,
                    interrupted=interrupted,
                )
            )
        write_text_atomically(summary, summary_csv(rows))
        _write_parquet(rows, folder / "summary.parquet")
    except OSError as error:
        fail(
            f"cannot write the batch's outputs to {folder} ({error.strerror or error}); the threads are saved: "
            "run the batch again with a writable --out DIR"
        )
    return rows


def _write_parquet(rows: list[BatchRow], path: Path) -> None:
    import pandas as pd

    from deepstep.batch import SUMMARY_COLUMNS
    from deepstep.cli.outputs import write_parquet
    from deepstep.errors import ConfigError

    table = pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))
    try:
        write_parquet(table, path)
    except ConfigError as error:  # no pyarrow: the CSV summary is written, so say so and go on
        stderr.print(f"[yellow]warning:[/] summary.parquet not written: {error}", highlight=False)


def _print_summary(rows: list[BatchRow], folder: Path, seconds: float) -> None:
    from rich.table import Table

    table = Table(show_edge=False)
    cells = [
        [
            row["thread_id"],
            row["status"],
            row["action"],
            str(row["steps"]),
            str(row["calls"]),
            f"{row['wall_seconds']:.1f}",
            _short(row["question"], 60),
        ]
        for row in rows
    ]
    headers = ("thread", "status", "action", "steps", "calls", "wall s", "question")
    for position, column in enumerate(headers):
        # Every column but the question keeps its width; the question is cut to fit (80 columns when not a terminal).
        widest = None if column == "question" else max(len(column), *(len(cell[position]) for cell in cells))
        table.add_column(
            column, justify="right" if column in ("steps", "calls", "wall s") else "left", no_wrap=True, overflow="ellipsis", min_width=widest
        )
    for cell in cells:
        table.add_row(*cell)
    stderr.print(table)
    counts = {status: sum(1 for row in rows if row["status"] == status) for status in ("done", "failed", "interrupted")}
    stderr.print(", ".join(f"{count} {status}" for status, count in counts.items() if count) + f" in {seconds:.1f} s", highlight=False)
    for row in rows:
        if row["status"] == "failed":
            stderr.print(f"  {row['thread_id']} failed: {row['error']}", highlight=False, markup=False)
    stderr.print(f"summary: {folder / 'summary.csv'}", highlight=False)
