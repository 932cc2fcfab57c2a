"""What every ``deepstep`` command shares: the consoles, one-line errors, the progress display and the end of
a run (``finish_run``: the report, the summary, the exit code)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from deepstep import json_text
from deepstep.atomic_files import write_text_atomically
from deepstep.configuration import Settings
from deepstep.errors import DeepstepError

if TYPE_CHECKING:
    from deepstep import api  # for api.Progress only: the commands import the API (LangGraph and all) when they run
    from deepstep.records import BudgetPause

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Step-by-step research: decompose, retrieve, answer, refine (MCTSr).")
stderr = Console(stderr=True, soft_wrap=True)
stdout = Console()


def fail(message: str, code: int = 2) -> NoReturn:
    """Print one readable line on stderr and exit with ``code`` (2: bad input or settings)."""
    # The message is text, not Rich markup: "pip install 'deepstep[pdf]'" must keep its "[pdf]".
    stderr.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def user_errors(thread_id: str | None = None) -> Iterator[None]:
    """Turn deepstep's own errors into one line and exit code 2, Ctrl-C into exit code 130."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        # From here on Ctrl-C is a KeyboardInterrupt this handles (`deepstep.cli.main` exits at once until now).
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    except DeepstepError as error:
        fail(str(error))
    except KeyboardInterrupt:
        # Exiting now: a further Ctrl-C must not cut the exit short (Python would then die of SIGINT).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        hint = f": continue with `deepstep resume {thread_id}`" if thread_id else ""
        fail(f"interrupted{hint}", code=130)


@contextmanager
def progress_display() -> Iterator[Callable[[api.Progress], None]]:
    """The run's progress line: phase, steps done (of how many, once planned), model calls at a time."""
    fields = [TextColumn("{task.fields[count]}"), TextColumn("{task.fields[calls]}")]
    columns = [TextColumn("[bold]{task.fields[phase]}"), BarColumn(), *fields, TimeElapsedColumn()]
    with Progress(*columns, console=stderr, transient=False) as bar:
        task = bar.add_task("run", total=None, phase="starting", count="", calls="")
        shown_estimate = False

        def update(event: api.Progress) -> None:
            nonlocal shown_estimate
            if event.estimate is not None and not shown_estimate:  # once, before the fan-out starts
                from deepstep.budget import describe

                shown_estimate = True
                steps = event.estimate["steps"]
                bar.console.print(f"{steps} step{'s' if steps != 1 else ''} to research: at most {describe(event.estimate)}", highlight=False)
            if event.steps_total:
                count = f"{event.steps_done}/{event.steps_total} steps"
            else:  # not planned yet: no total to show
                count = f"{event.steps_done} steps" if event.steps_done else ""
            calls = f"{event.calls_in_flight} model call{'s' if event.calls_in_flight != 1 else ''} at a time" if event.calls_in_flight > 0 else ""
            bar.update(task, completed=event.steps_done, total=event.steps_total or None, phase=event.phase, count=count, calls=calls)

        yield update


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment, with the command line's options (None = not given) on top."""
    return Settings.build(**overrides)


def _write_outputs(result: api.RunResult, out: Path | None, settings: Settings) -> Path:
    from deepstep.render import storyboard_csv

    folder = out or settings.home / "runs" / result.thread_id
    report = folder / "report.md"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # Atomic writes: a run killed while exporting never leaves a truncated report or table.
        write_text_atomically(report, result.markdown)
        write_text_atomically(folder / "table.csv", storyboard_csv(result.tree))
    except OSError as error:
        fail(
            f"cannot write the report to {folder} ({error.strerror or error}); the run is saved: "
            f"pass --out DIR to `deepstep resume {result.thread_id}`, or use `deepstep show {result.thread_id}`"
        )
    return report


def _print_summary(result: api.RunResult, report: Path | None, settings: Settings) -> None:
    from rich.table import Table

    from deepstep import step_tree

    table = Table(title="model usage", show_edge=False)
    for column in ("role", "calls", "prompt tokens", "completion tokens", "repairs", "fallbacks", "seconds"):
        table.add_column(column, justify="right" if column != "role" else "left")
    for role, fields in result.usage.items():
        table.add_row(
            role,
            *(str(int(fields.get(k, 0))) for k in ("calls", "prompt_tokens", "completion_tokens", "repairs", "fallbacks")),
            f"{fields.get('seconds', 0):.1f}",
        )
    stderr.print(table)
    cost = settings.estimate_cost(result.usage)
    if cost is not None and settings.prices:
        stderr.print(f"estimated cost: ${cost:.4f}")
    steps = step_tree.steps(result.tree)
    done = sum(1 for s in steps if s["status"] == "done")
    stderr.print(f"thread {result.thread_id}: {done}/{len(steps)} steps done, {len(result.failed_steps)} failed")
    for failed in result.failed_steps:
        stderr.print(f"  failed {failed['level']} {failed['name']}: {failed['error']}", highlight=False)
    _print_warnings(result)
    if report:
        stderr.print(f"report: {report}")


def _print_warnings(result: api.RunResult) -> None:
    """What the run recorded as worth knowing (a plan taken from the outline, a cut outline), each once."""
    from rich.markup import escape

    for warning in dict.fromkeys(result.warnings):
        stderr.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)


# Exit code of a run paused by its budget (max_calls, max_run_tokens, max_cost): resume it with higher caps.
EXIT_BUDGET = 3


def finish_run(result: api.RunResult, out: Path | None, settings: Settings) -> None:
    """End a run, resume or import: print the plan waiting for review, or the budget pause (exit 3), or write the
    report and table and print the summary; exit 1 when steps failed."""
    if result.status == "awaiting_budget" and result.budget_pause is not None:
        stdout.print_json(json_text.dumps(result.budget_pause, ensure_ascii=False))
        _print_warnings(result)
        stderr.print(f"paused by the budget: {budget_pause_line(result.thread_id, result.budget_pause)}", highlight=False)
        raise typer.Exit(EXIT_BUDGET)
    if result.status == "awaiting_review":
        stdout.print_json(json_text.dumps(result.review_request, ensure_ascii=False))
        _print_warnings(result)
        stderr.print(
            f"plan waiting for review: approve with `deepstep resume {result.thread_id}`, "
            f"or edit it with `deepstep resume {result.thread_id} --steps FILE.json`"
        )
        return
    report = _write_outputs(result, out, settings)
    _print_summary(result, report, settings)
    if result.failed_steps:
        raise typer.Exit(1)


def budget_pause_line(thread_id: str, pause: BudgetPause) -> str:
    """What was used of which cap, what the rest needs, and the resume command whose caps cover it."""
    from deepstep.budget import describe

    used, rest, caps = pause["used"], pause["rest"], pause["caps"]
    options = []
    if "max_calls" in caps:
        options.append(f"--max-calls {used['calls'] + rest['calls']}")
    if "max_run_tokens" in caps:
        options.append(f"--max-tokens {used['tokens'] + rest['tokens']}")
    if "max_cost" in caps and used["cost"] is not None and rest["cost"] is not None:
        options.append(f"--max-cost {math.ceil((used['cost'] + rest['cost']) * 100) / 100:.2f}")
    return (
        f"used {describe(used)}; the {rest['steps']} step(s) left and the report need at most {describe(rest)}: "
        f"continue with `{' '.join([f'deepstep resume {thread_id}', *options])}`"
    )
