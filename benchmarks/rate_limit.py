"""A run against a rate-limited model API: how close to the rate limit's bound it finishes, how many of its
requests the API rejects, and whether any step fails; in one process, or in several worker processes
sharing the limit through Postgres.

The fake server runs in its own process with a token bucket (``--rate`` requests per second, burst 2)
and answers HTTP 429 with Retry-After when it is empty, as a rate-limited API does. The bound is the
time the run's accepted calls need at that rate: calls / rate. deepstep adapts the calls it keeps in
flight to the server (``deepstep.call_limits``: AIMD, honouring Retry-After). With ``--workers N``, N
worker processes each run the question (their own thread) against the one server, on one Postgres
database (``--database-url``, ``$DEEPSTEP_DATABASE_URL``, else a temporary local server), so they share
the limit (``deepstep.shared_call_limits``); the wall is from the first worker's run start to the
last one's end (process start-up excluded), the bound all workers' accepted calls / rate.

Run: .venv/bin/python -m benchmarks.rate_limit [--steps 20] [--concurrency 8] [--rate 5] [--latency-ms 200]
     [--workers N [--database-url URL | --separate-limits]] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import deepstep
from benchmarks.harness import QUESTION
from deepstep import step_tree
from deepstep.configuration import Settings


def _settings(base_url: str, home: Path, *, steps: int, concurrency: int, rollouts: int, database_url: str | None) -> Settings:
    shared = {"database_url": database_url, "retriever": "bm25"} if database_url else {}
    return Settings.build(
        base_url=base_url, home=home, max_steps=steps, max_concurrency=concurrency, rollouts=rollouts, report_layout="seed", **shared
    )


def run_one(config: dict) -> dict[str, float | int]:
    """One worker's run (in its own process with --workers): its start, end and failed steps."""
    config = dict(config)
    thread_id = config.pop("thread_id", None)
    settings = _settings(**{**config, "home": Path(config["home"])})
    started = time.time()
    result = deepstep.run(QUESTION, thread_id=thread_id, settings=settings)
    finished = time.time()
    return {"started": started, "finished": finished, "failed": sum(1 for step in step_tree.steps(result.tree) if step["status"] == "failed")}


def _workers(count: int, config: dict) -> list[dict[str, float | int]]:
    processes = []
    for index in range(count):
        worker_config = {**config, "home": str(Path(config["home"]) / f"worker-{index}"), "thread_id": f"worker-{index}"}
        command = [sys.executable, "-m", "benchmarks.rate_limit", "--run-one", json.dumps(worker_config)]
        processes.append(subprocess.Popen(command, stdout=subprocess.PIPE, text=True))
    results = []
    for process in processes:
        output, _ = process.communicate(timeout=1800)
        if process.returncode != 0:
            raise SystemExit(f"a worker failed (exit {process.returncode})")
        results.append(json.loads(output.strip().splitlines()[-1]))
    return results


def measure(
    *, steps: int, concurrency: int, rate: float, latency_ms: float, rollouts: int = 2, workers: int = 0, database_url: str | None = None
) -> dict[str, float | int | str]:
    """``workers`` 0: one run in this process, with ``database_url`` (shared limit) or without (in-process limit)."""
    with tempfile.TemporaryDirectory() as home:
        log = Path(home) / "requests.jsonl"
        command = [
            sys.executable, "-m", "deepstep.testing.fake_llm", "--port", "0", "--steps", str(steps),
            "--latency-ms", str(latency_ms), "--rate-limit", str(rate), "--rate-burst", "2", "--log", str(log),
        ]  # fmt: skip
        server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout is not None
            base_url = server.stdout.readline().split()[-1]
            config = dict(base_url=base_url, home=home, steps=steps, concurrency=concurrency, rollouts=rollouts, database_url=database_url)
            runs = _workers(workers, config) if workers else [run_one(config)]
        finally:
            server.terminate()
            server.wait(10)
        statuses = Counter(json.loads(line)["status"] for line in log.read_text().splitlines())
    accepted, rejected = statuses[200], statuses[429]
    bound = accepted / rate
    wall = max(run["finished"] for run in runs) - min(run["started"] for run in runs)
    return {
        "processes": max(1, workers),
        "limit": "shared (Postgres)" if database_url else "in-process",
        "steps": steps,
        "concurrency": concurrency,
        "rate": rate,
        "latency_ms": latency_ms,
        "accepted": accepted,
        "rejected": rejected,
        "rejected_share": round(rejected / max(1, accepted + rejected), 3),
        "wall_seconds": round(wall, 2),
        "bound_seconds": round(bound, 2),
        "wall_over_bound": round(wall / bound, 3),
        "failed_steps": sum(int(run["failed"]) for run in runs),
    }


def _temporary_postgres(cleanup: contextlib.ExitStack) -> str:
    from deepstep.testing.postgres_server import PostgresTestServer

    print("no --database-url or DEEPSTEP_DATABASE_URL: starting a temporary local Postgres", file=sys.stderr)
    return cleanup.enter_context(PostgresTestServer()).url


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rate", type=float, default=5.0)
    parser.add_argument("--latency-ms", type=float, default=200.0)
    parser.add_argument("--workers", type=int, default=0, help="worker processes sharing the limit through Postgres (0: one run in this process)")
    parser.add_argument("--database-url", help="Postgres for the shared limit (default with --workers: $DEEPSTEP_DATABASE_URL, else a temporary one)")
    parser.add_argument("--separate-limits", action="store_true", help="with --workers: no database, each process adapts alone (as before)")
    parser.add_argument("--run-one", help=argparse.SUPPRESS)  # a worker's run, started by --workers
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.run_one:
        print(json.dumps(run_one(json.loads(args.run_one))))
        return
    with contextlib.ExitStack() as cleanup:
        database_url = args.database_url
        if args.workers and not database_url and not args.separate_limits:
            database_url = os.environ.get("DEEPSTEP_DATABASE_URL") or _temporary_postgres(cleanup)
        figures = measure(
            steps=args.steps,
            concurrency=args.concurrency,
            rate=args.rate,
            latency_ms=args.latency_ms,
            workers=args.workers,
            database_url=database_url,
        )
    if args.json:
        print(json.dumps(figures))
        return
    print(
        f"{figures['processes']} process(es), {figures['limit']} limit: {figures['steps']} steps each at C = {figures['concurrency']} "
        f"against {figures['rate']:g} requests/s (latency {figures['latency_ms']:g} ms): {figures['wall_seconds']} s = "
        f"{figures['wall_over_bound']}x the bound ({figures['accepted']} calls / rate = {figures['bound_seconds']} s); {figures['rejected']} of "
        f"{figures['accepted'] + figures['rejected']} requests rejected ({figures['rejected_share']:.1%}); "
        f"{figures['failed_steps']} steps failed"
    )


if __name__ == "__main__":
    main()
