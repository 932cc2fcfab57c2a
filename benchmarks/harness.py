"""Shared benchmark machinery: run one deepstep workload in a child process and read its
checkpoint database (killing a real ``deepstep run`` is ``deepstep.testing.crash``).

Every measured run is a fresh child process (``python -m benchmarks.workload``), so imports
and caches of one run never flatter the next, and ``os.wait4`` gives that run's own peak RSS.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
QUESTION = "What is a loss function?"
DECOMPOSE_CALLS = 2  # outline + steps


def calls_per_step(rollouts: int, reward_samples: int = 1) -> int:
    """question + answer + root evaluation, then per rollout: critique + refine + evaluation."""
    return 2 + reward_samples + rollouts * (2 + reward_samples)


@dataclass(frozen=True)
class Workload:
    """One run of ``steps`` steps against a fresh fake server in a child process."""

    steps: int
    concurrency: int = 1
    latency_ms: float = 0.0
    rollouts: int = 2
    malformed_every: int = 0  # every k-th refine/evaluate reply is malformed JSON (0 = never)
    fsync_every_commit: bool = False  # before the fix: SQLite synchronous=FULL

    def args(self) -> list[str]:
        return [
            f"--steps={self.steps}",
            f"--concurrency={self.concurrency}",
            f"--latency-ms={self.latency_ms:g}",
            f"--rollouts={self.rollouts}",
            f"--malformed-every={self.malformed_every}",
            *(["--fsync-every-commit"] if self.fsync_every_commit else []),
        ]


def run_workload(workload: Workload, *, timeout: float = 900, profiler: list[str] | None = None, attempts: int = 2) -> dict[str, Any]:
    """Run ``workload`` in a child process; its JSON figures plus ``peak_rss_mib`` of that child.

    ``profiler`` is a command prefix (e.g. ``py-spy record ... --``) that launches the child;
    peak RSS is then the profiler's own and is not reported. A failed child is run once more
    (after printing why), so one transient failure does not cost the whole suite.
    """
    for attempt in range(1, attempts + 1):
        try:
            return _run_workload_once(workload, timeout=timeout, profiler=profiler)
        except (RuntimeError, TimeoutError) as error:
            if attempt == attempts:
                raise
            print(f"[bench] attempt {attempt} of {workload} failed, running it again: {error}", file=sys.stderr, flush=True)
            time.sleep(5)
    raise AssertionError("unreachable")


def _run_workload_once(workload: Workload, *, timeout: float, profiler: list[str] | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="deepstep-bench-") as scratch:
        out = Path(scratch) / "figures.json"
        command = [*(profiler or []), sys.executable, "-m", "benchmarks.workload", *workload.args(), f"--home={scratch}/home", f"--out={out}"]
        process = subprocess.Popen(command, cwd=REPO, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                process.kill()
                process.wait()
                raise TimeoutError(f"workload {workload} did not finish within {timeout:.0f} s")
            time.sleep(0.05)
        stdout, stderr = process.stdout.read().decode(), process.stderr.read().decode()
        process.stdout.close()
        process.stderr.close()
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0 or not out.exists():
            raise RuntimeError(f"workload {workload} failed (exit {process.returncode}):\n{stdout[-2000:]}\n{stderr[-4000:]}")
        figures = json.loads(out.read_text())
    if not profiler:
        figures["peak_rss_mib"] = usage.ru_maxrss / 1024  # kilobytes on Linux
    return figures


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without the developer's model server, keys or DEEPSTEP_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEEPSTEP_", "OPENAI_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    env.update(extra)
    return env


def checkpoint_stats(database: Path) -> dict[str, Any]:
    """Size, rows and bytes per checkpoint (super-step) of a SQLite checkpoint database."""
    with sqlite3.connect(database) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        rows = connection.execute(
            "SELECT checkpoint_ns = '' AS root, length(checkpoint) + length(metadata), "
            "(SELECT coalesce(sum(length(w.value)), 0) FROM writes w WHERE w.thread_id = c.thread_id "
            " AND w.checkpoint_ns = c.checkpoint_ns AND w.checkpoint_id = c.checkpoint_id) "
            "FROM checkpoints c"
        ).fetchall()
        write_rows = connection.execute("SELECT count(*) FROM writes").fetchone()[0]
    written = [blob + writes for _, blob, writes in rows]
    root = [blob + writes for is_root, blob, writes in rows if is_root]
    inner = [blob + writes for is_root, blob, writes in rows if not is_root]
    return {
        "db_bytes": database.stat().st_size,
        "checkpoint_rows": len(rows),
        "write_rows": write_rows,
        "bytes_written": sum(written),
        "bytes_per_superstep_mean": sum(written) / max(len(written), 1),
        "bytes_per_superstep_max": max(written, default=0),
        "root_checkpoints": len(root),
        "root_bytes": sum(root),
        "root_bytes_max": max(root, default=0),
        "step_checkpoints": len(inner),
        "step_bytes_mean": sum(inner) / max(len(inner), 1),
        "step_bytes_max": max(inner, default=0),
    }
