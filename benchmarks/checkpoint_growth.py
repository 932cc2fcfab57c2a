"""Checkpoint storage and calls per step for runs of N steps against the fake server.

Run: .venv/bin/python -m benchmarks.checkpoint_growth [N ...]   (default: 5 50)
Prints, per N, the SQLite size after the run (database + WAL, checkpointed), the number of
checkpoint and write rows, bytes per step, and LLM calls per step from the server's log.
"""

from __future__ import annotations

import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import deepstep
from deepstep.configuration import Settings
from deepstep.testing import FakeLLMServer

ROLLOUTS = 2


def measure(steps: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as home, FakeLLMServer(steps=steps) as server:
        settings = Settings.build(
            base_url=server.base_url, home=Path(home), max_steps=steps, rollouts=ROLLOUTS, max_concurrency=8, max_retries=0
        )
        started = time.perf_counter()
        deepstep.run("What is a loss function?", thread_id="bench", settings=settings)
        seconds = time.perf_counter() - started
        database = settings.checkpoint_file
        with sqlite3.connect(database) as connection:
            connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            checkpoints = connection.execute("SELECT count(*) FROM checkpoints").fetchone()[0]
            writes = connection.execute("SELECT count(*) FROM writes").fetchone()[0]
        size = database.stat().st_size
        calls = len(server.log())
    return {
        "steps": steps,
        "db_bytes": size,
        "bytes_per_step": size / steps,
        "checkpoint_rows": checkpoints,
        "write_rows": writes,
        "llm_calls_per_step": (calls - 2) / steps,
        "seconds": seconds,
    }


def main(argv: list[str]) -> None:
    sizes = [int(a) for a in argv] or [5, 50]
    print(f"rollouts={ROLLOUTS}, fake server latency 0 ms, expected calls per step = 3 + 3R = {3 + 3 * ROLLOUTS}")
    print("| steps | SQLite bytes | bytes/step | checkpoint rows | write rows | LLM calls/step | wall s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for n in sizes:
        r = measure(n)
        print(
            f"| {r['steps']} | {r['db_bytes']:,} | {r['bytes_per_step']:,.0f} | {r['checkpoint_rows']} | {r['write_rows']} "
            f"| {r['llm_calls_per_step']:.2f} | {r['seconds']:.1f} |"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
