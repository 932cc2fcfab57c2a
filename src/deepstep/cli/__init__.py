"""The ``deepstep`` command line.

Exit codes: 0 success, 1 the run finished with failed steps, 2 bad input or settings
(one line on stderr, no traceback), 130 interrupted (the thread can be resumed).
Each command group lives in its own module and registers itself on the shared ``app``.
"""

from deepstep.cli import corpus, llm, outputs, run, studio  # noqa: F401  (registers the commands)
from deepstep.cli.common import app


def main() -> None:
    app()


__all__ = ["app", "main"]
