"""What every ``deepstep`` command shares: the consoles, one-line errors and the progress display."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from deepstep import api
from deepstep.configuration import Settings
from deepstep.errors import DeepstepError

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
    try:
        yield
    except DeepstepError as error:
        fail(str(error))
    except KeyboardInterrupt:
        hint = f": continue with `deepstep resume {thread_id}`" if thread_id else ""
        fail(f"interrupted{hint}", code=130)


@contextmanager
def progress_display() -> Iterator[Callable[[api.Progress], None]]:
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[phase]}"), TimeElapsedColumn()]
    with Progress(*columns, console=stderr, transient=False) as bar:
        task = bar.add_task("steps", total=None, phase="decompose")

        def update(event: api.Progress) -> None:
            bar.update(task, completed=event.steps_done, total=event.steps_total or None, phase=event.phase)

        yield update


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment, with the command line's options (None = not given) on top."""
    return Settings.build(**overrides)
