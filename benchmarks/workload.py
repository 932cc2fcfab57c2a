"""One measured deepstep run against the fake server; writes its figures as JSON.

The fake server runs in its own process, as a real model server would, so its threads
neither share this process's GIL nor count in its memory.

Run by ``benchmarks.harness.run_workload`` in a fresh child process:
``python -m benchmarks.workload --steps N --concurrency C --latency-ms L --home DIR --out FILE``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

import deepstep
from benchmarks.harness import QUESTION, checkpoint_stats
from deepstep import step_tree
from deepstep.configuration import Settings
from deepstep.retrieval import corpus_retriever

CHECKPOINT_SECONDS = {"put": 0.0, "put_writes": 0.0}


def time_checkpointer(*, fsync_every_commit: bool = False) -> None:
    """Make the SQLite saver add up the seconds it spends storing checkpoints and writes.

    ``fsync_every_commit`` puts back SQLite's default ``synchronous=FULL`` (an fsync per commit),
    which deepstep ran with before it switched to ``NORMAL``: the before-the-fix figure.
    """
    # Timed where the writes happen, in langgraph's SqliteSaver: deepstep's saver subclasses it
    # (checkpoint._FailFastSqliteSaver), so replacing the name deepstep imported would time nothing.
    from langgraph.checkpoint.sqlite import SqliteSaver

    def timed(method: Any, key: str) -> Any:
        def run(self: SqliteSaver, *args: Any, **kwargs: Any) -> Any:
            if fsync_every_commit:
                with self.lock:
                    self.conn.execute("PRAGMA synchronous=FULL")
            started = time.perf_counter()
            try:
                return method(self, *args, **kwargs)
            finally:
                CHECKPOINT_SECONDS[key] += time.perf_counter() - started

        return run

    SqliteSaver.put = timed(SqliteSaver.put, "put")  # type: ignore[method-assign]
    SqliteSaver.put_writes = timed(SqliteSaver.put_writes, "put_writes")  # type: ignore[method-assign]


class FakeServerProcess:
    """``python -m deepstep.testing.fake_llm`` on a free port; ``log()`` reads its request log."""

    def __init__(self, process: subprocess.Popen, base_url: str) -> None:
        self.process = process
        self.base_url = base_url

    def log(self) -> list[dict[str, Any]]:
        return httpx.get(self.base_url.removesuffix("/v1") + "/_log", timeout=60).json()


@contextmanager
def fake_server_process(*, latency_ms: float, steps: int, faults: list[str]) -> Iterator[FakeServerProcess]:
    command = [sys.executable, "-m", "deepstep.testing.fake_llm", "--port=0", f"--latency-ms={latency_ms:g}", f"--steps={steps}"]
    process = subprocess.Popen([*command, *(f"--fault={fault}" for fault in faults)], stdout=subprocess.PIPE, text=True)
    try:
        first_line = process.stdout.readline()  # "listening on http://127.0.0.1:PORT/v1"
        if not first_line.startswith("listening on "):
            raise RuntimeError(f"the fake server did not start: {first_line!r}")
        yield FakeServerProcess(process, first_line.removeprefix("listening on ").strip())
    finally:
        process.terminate()
        process.wait(timeout=10)
        process.stdout.close()


SETTINGS_BUILDS = {"for_run": 0}


def count_settings_builds() -> None:
    """Count the ``Settings.for_run`` calls that build settings: every node and route resolves its
    settings, which costs nothing when the run's context already is a ``Settings`` (the Python API)."""
    original = Settings.for_run.__func__

    def counted(cls: type[Settings], config: Any, context: Any = None) -> Settings:
        if not isinstance(context, Settings):
            SETTINGS_BUILDS["for_run"] += 1
        return original(cls, config, context)

    Settings.for_run = classmethod(counted)  # type: ignore[method-assign]


def warm_up(settings: Settings) -> None:
    """What the first question of a process pays and later ones do not: the corpus index, its language, and the
    model layer's imports (OpenAI client, ChatOpenAI), loaded lazily by deepstep. ``benchmarks.call_cpu`` measures
    that start-up on its own."""
    import langchain_openai  # noqa: F401

    from deepstep.retrieval import search_language

    search_language(QUESTION, settings, corpus_retriever(settings))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--rollouts", type=int, default=2)
    parser.add_argument("--malformed-every", type=int, default=0)
    parser.add_argument("--fsync-every-commit", action="store_true", help="before the fix: SQLite synchronous=FULL")
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    faults = [f"malformed_json:task={task},every={args.malformed_every}" for task in ("refine", "evaluate")] if args.malformed_every else []
    time_checkpointer(fsync_every_commit=args.fsync_every_commit)
    count_settings_builds()
    with fake_server_process(latency_ms=args.latency_ms, steps=args.steps, faults=faults) as server:
        settings = Settings.build(
            base_url=server.base_url,
            home=args.home,
            max_steps=args.steps,
            rollouts=args.rollouts,
            max_concurrency=args.concurrency,
            max_retries=0,
            # The machinery's figures (3 + 3R calls per step, the critical path): the answer-first layout
            # adds exactly one call after the fan-out (tests/test_trust.py counts it).
            report_layout="seed",
        )
        warm_up(settings)  # the process's start-up, before the clock: a second question would not pay it
        started, cpu_started = time.perf_counter(), time.process_time()
        result = deepstep.run(QUESTION, thread_id="bench", settings=settings)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        log = server.log()

    answered = [e for e in log if e["status"] == 200]
    usage = result.usage
    signature = json.dumps(step_tree.signature(result.tree), sort_keys=True, default=str)
    figures = {
        "steps": len(step_tree.step_ids(result.tree)),
        "failed_steps": len(result.failed_steps),
        "wall_s": wall,
        "cpu_s": cpu,  # CPU time of all of this process's threads during the run: the client's alone
        "calls": len(log),
        "answered": len(answered),
        "calls_by_task": dict(Counter(e["task"] for e in log)),
        "faults_injected": sum(1 for e in log if e["fault"]),
        # Time the server spent on requests (latency sleep included), summed over calls.
        "server_s": sum(e["finished"] - e["started"] for e in log if e.get("finished")),
        "completion_tokens": sum(e["completion_tokens"] for e in log),
        "repairs": sum(role.get("repairs", 0) for role in usage.values()),
        "fallbacks": sum(role.get("fallbacks", 0) for role in usage.values()),
        "retries": sum(role.get("retries", 0) for role in usage.values()),
        "checkpoint_put_s": CHECKPOINT_SECONDS["put"],
        "checkpoint_put_writes_s": CHECKPOINT_SECONDS["put_writes"],
        "settings_builds": SETTINGS_BUILDS["for_run"],
        "tree_sha256": hashlib.sha256(signature.encode()).hexdigest(),
        **checkpoint_stats(settings.checkpoint_file),
    }
    args.out.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
