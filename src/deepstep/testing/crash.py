"""Running the ``deepstep`` CLI as a real process and killing it at a chosen point (tests only).

A kill point is "after the fake server has answered ``calls`` requests, wait ``delay`` seconds,
then SIGKILL"; with ``calls`` past the last model call the kill lands in collect/report or
while the CLI writes report.md and table.csv.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepstep.testing.fake_llm import FakeLLMServer


def cli_command(*args: str) -> list[str]:
    """``deepstep ARGS`` with the interpreter running the tests."""
    return [sys.executable, "-m", "deepstep.cli", *args]


def cli_env(base_url: str, home: Path, **settings: Any) -> dict[str, str]:
    """The current environment without any DEEPSTEP_/OPENAI_ variable, pointed at ``base_url`` and
    ``home``; each keyword becomes ``DEEPSTEP_<NAME>``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEEPSTEP_", "OPENAI_"))}
    env.update(OPENAI_BASE_URL=base_url, DEEPSTEP_HOME=str(home))
    env.update({f"DEEPSTEP_{name.upper()}": str(value) for name, value in settings.items()})
    return env


def answered(log: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [entry for entry in log if entry["status"] == 200]


def repeated_calls(log: list[dict[str, Any]]) -> int:
    """Answered requests that had been answered before (same request hash)."""
    counts = Counter(entry["hash"] for entry in answered(log))
    return sum(count - 1 for count in counts.values())


@dataclass(frozen=True)
class KillPoint:
    calls: int  # answered model calls before the kill
    delay: float = 0.0  # seconds to wait after that

    def phase(self, plan_calls: int, total_calls: int) -> str:
        if self.calls < plan_calls:
            return "decompose"
        if self.calls < total_calls:
            return "steps (fan-out / MCTSr)"
        return "collect/report/export"


@dataclass(frozen=True)
class Killed:
    returncode: int
    calls_before_kill: int
    finished_before_kill: bool  # the process exited on its own before the signal landed


def run_and_kill(command: list[str], env: Mapping[str, str], server: FakeLLMServer, point: KillPoint, *, timeout: float = 90) -> Killed:
    """Start ``command``, SIGKILL it at ``point``, and wait for it to be gone."""
    process = subprocess.Popen(command, env=dict(env), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert process.stderr is not None  # stderr=PIPE
    try:
        deadline = time.monotonic() + timeout
        while len(answered(server.log())) < point.calls:
            if process.poll() is not None:
                raise AssertionError(f"the run exited ({process.returncode}) before call {point.calls}: {process.stderr.read().decode()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"the run never reached call {point.calls}")
            time.sleep(0.002)
        if point.delay:
            time.sleep(point.delay)
        finished = process.poll() is not None
        process.send_signal(signal.SIGKILL)
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stderr.close()
    return Killed(returncode=process.returncode, calls_before_kill=len(server.log()), finished_before_kill=finished)


def integrity_check(database: Path) -> str:
    """SQLite's own verdict on the file: ``ok`` when it is intact."""
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        return "; ".join(row[0] for row in connection.execute("PRAGMA integrity_check"))
    finally:
        connection.close()


__all__ = ["KillPoint", "Killed", "answered", "cli_command", "cli_env", "integrity_check", "repeated_calls", "run_and_kill"]
