"""The ``deepstep`` command line.

Exit codes: 0 success, 1 the run finished with failed steps, 2 bad input or settings
(one line on stderr, no traceback), 3 paused by its budget (``--max-calls``, ``--max-tokens``,
``--max-cost``; the line says how to resume with higher caps), 130 interrupted (the thread can be resumed).
Each command group lives in its own module and registers itself on the shared ``app``.

Ctrl-C never ends in a traceback: ``main`` makes it exit with code 130 before the commands are
even imported (typer, rich and pydantic take a noticeable while to load), a command then takes it
over (``common.user_errors``, a run's stop mark in ``deepstep.interrupts``), and once the command
is done, a Ctrl-C while the process exits is ignored: the command's exit code stands.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import typer


def main() -> None:
    _on_ctrl_c(_interrupted_while_starting)
    sys.unraisablehook = _quiet_pool_finalizer(sys.unraisablehook)
    app = _app()
    try:
        app()
    finally:
        # Exiting (threads are joined now): a Ctrl-C must not turn a finished command into a traceback,
        # nor kill the process by SIGINT once the interpreter has dropped its own handler (exit -2).
        _on_ctrl_c(signal.SIG_IGN)


def _app() -> typer.Typer:
    from deepstep.cli import batch, corpus, evaluate, llm, outputs, queue, run, studio  # noqa: F401  (registers the commands)
    from deepstep.cli.common import app

    return app


def _quiet_pool_finalizer(previous: Callable[[Any], object]) -> Callable[[Any], object]:
    """An unraisable-exception hook that drops one known message and passes the rest on: psycopg_pool's
    ConnectionPool.__del__ joins the pool's worker threads, and when the garbage collector happens to
    finalize a pool on one of those very threads (it can, after the database dropped its connections)
    the join raises "cannot join current thread". Nothing is lost; the run's own error says what failed."""

    def hook(unraisable: Any) -> None:
        error, where = unraisable.exc_value, getattr(unraisable.object, "__qualname__", "")
        if isinstance(error, RuntimeError) and "cannot join current thread" in str(error) and where.endswith("ConnectionPool.__del__"):
            return
        previous(unraisable)

    return hook


def _on_ctrl_c(handler: Any) -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, handler)


def _interrupted_while_starting(signum: int, frame: Any) -> None:
    # No command runs yet: there is nothing to save or to resume.
    os.write(2, b"error: interrupted\n")
    os._exit(130)


def __getattr__(name: str) -> Any:
    # `from deepstep.cli import app` (tests, other tools) loads the commands on first use, so that
    # `main` can take over Ctrl-C before they are imported.
    if name == "app":
        return _app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["app", "main"]
