"""What every ``deepstep`` command shares: the consoles, one-line errors and the progress display."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from deepstep.configuration import Settings
from deepstep.errors import DeepstepError

if TYPE_CHECKING:
    from deepstep import api  # for api.Progress only: the commands import the API (LangGraph and all) when they run

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Step-by-step research: decompose, retrieve, answer, refine (MCTSr).")
stderr = Console(stderr=True, soft_wrap=True)
stdout = Console()


def fail(message: str, code: int = 2) -> NoReturn:
    """Print one readable line on stderr and exit with ``code`` (2: bad input or settings)."""
    stderr.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
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

        def update(event: api.Progress) -> None:
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
