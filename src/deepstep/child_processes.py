"""Server processes deepstep starts (the embedded model, ``langgraph dev``): they die with
deepstep, and are stopped politely before they are killed."""

from __future__ import annotations

import contextlib
import ctypes
import signal
import subprocess
import sys
from typing import Any


def _die_with_parent() -> None:
    # PR_SET_PDEATHSIG: the kernel sends SIGTERM to the server if deepstep dies without cleaning up.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


def start_server(command: list[str], **popen_options: Any) -> subprocess.Popen[Any]:
    """``subprocess.Popen`` for a server that must not outlive deepstep (on Linux, even after SIGKILL)."""
    return subprocess.Popen(
        command,
        preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,  # noqa: PLW1509
        **popen_options,
    )


def stop(process: subprocess.Popen[Any], *, grace_seconds: float) -> None:
    """SIGTERM, then SIGKILL if the server has not exited within ``grace_seconds``."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=grace_seconds)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


__all__ = ["start_server", "stop"]
