"""Batch throughput (issue 20 item 4): questions per minute of `deepstep batch` with 1, 2 and 4 worker
processes against the fake server at 200 ms per call, against the ideal.

Each question is a 3-step plan at R = 1 (seed layout: 2 planning calls, then 3 steps of 3 + 3R = 6 calls
run side by side), so its critical path is (2 + 6) x L; W workers at best finish W questions per critical
path: ideal questions per minute = W x 60 / ((2 + 6) x L). The measured wall time is the whole command
(its start, the workers' starts, the summary), as a user waits for it. The fake server runs in its own
process, as a model server would.

With ``--queue`` it also runs the same questions through the Postgres job queue (``deepstep batch --submit``,
then one ``deepstep worker``, on a temporary local Postgres) and reports the queue's overhead per job: its
wall time until every job is done, less one-worker ``deepstep batch``'s, per question.

Run: .venv/bin/python -m benchmarks.batch_throughput [--questions 8] [--workers 1 2 4] [--latency-ms 200] [--queue] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.harness import clean_env
from benchmarks.workload import fake_server_process

STEPS, ROLLOUTS = 3, 1
CRITICAL_CALLS = 2 + (3 + 3 * ROLLOUTS)  # planning, then one step's calls (the steps run side by side)


def measure(questions: int, workers: list[int], latency_ms: float) -> dict[int, dict[str, float]]:
    critical_path = CRITICAL_CALLS * latency_ms / 1000
    figures: dict[int, dict[str, float]] = {}
    deepstep = shutil.which("deepstep", path=str(Path(sys.executable).parent)) or "deepstep"
    with fake_server_process(latency_ms=latency_ms, steps=STEPS, faults=[]) as server, tempfile.TemporaryDirectory() as scratch:
        for count in workers:
            home = Path(scratch) / f"home{count}"
            batch_file = Path(scratch) / f"questions{count}.txt"
            # Distinct questions per run, so no thread of an earlier run is found finished.
            batch_file.write_text("".join(f"What is loss function number {count}-{i}?\n" for i in range(questions)), encoding="utf-8")
            env = clean_env(
                OPENAI_BASE_URL=server.base_url, OPENAI_API_KEY="bench", DEEPSTEP_HOME=str(home), DEEPSTEP_MAX_STEPS=str(STEPS),
                DEEPSTEP_ROLLOUTS=str(ROLLOUTS), DEEPSTEP_MAX_CONCURRENCY="4", DEEPSTEP_REPORT_LAYOUT="seed", DEEPSTEP_MAX_RETRIES="0",
            )  # fmt: skip
            # Index the corpus once, before the clock, as a user's earlier runs would have.
            subprocess.run([deepstep, "corpus", "index", str(_demo_corpus())], env=env, capture_output=True, check=True)
            started = time.perf_counter()
            done = subprocess.run([deepstep, "batch", str(batch_file), "--workers", str(count), "--out", str(Path(scratch) / f"out{count}")],
                                  env=env, capture_output=True, text=True, check=False)  # fmt: skip
            wall = time.perf_counter() - started
            if done.returncode != 0:
                raise RuntimeError(f"deepstep batch --workers {count} exited {done.returncode}: {done.stderr[-2000:]}")
            measured = questions / wall * 60
            ideal = count * 60 / critical_path
            figures[count] = {"wall_s": round(wall, 2), "questions_per_min": round(measured, 1), "ideal_per_min": round(ideal, 1),
                              "share_of_ideal": round(measured / ideal, 3)}  # fmt: skip
    return figures


def measure_queue(questions: int, latency_ms: float) -> dict[str, float]:
    """Wall time of the same batch through the job queue with one worker process, from submitting to the last
    job done, against `deepstep batch --workers 1`."""
    import psycopg

    from deepstep.testing.postgres_server import PostgresTestServer

    deepstep = shutil.which("deepstep", path=str(Path(sys.executable).parent)) or "deepstep"
    with (
        fake_server_process(latency_ms=latency_ms, steps=STEPS, faults=[]) as server,
        tempfile.TemporaryDirectory() as scratch,
        PostgresTestServer() as postgres,
    ):
        batch_file = Path(scratch) / "questions.txt"
        batch_file.write_text("".join(f"What is queued loss function number {i}?\n" for i in range(questions)), encoding="utf-8")
        env = clean_env(
            OPENAI_BASE_URL=server.base_url, OPENAI_API_KEY="bench", DEEPSTEP_HOME=str(Path(scratch) / "home"), DEEPSTEP_MAX_STEPS=str(STEPS),
            DEEPSTEP_ROLLOUTS=str(ROLLOUTS), DEEPSTEP_MAX_CONCURRENCY="4", DEEPSTEP_REPORT_LAYOUT="seed", DEEPSTEP_MAX_RETRIES="0",
            DEEPSTEP_DATABASE_URL=postgres.url, DEEPSTEP_CORPUS=str(_demo_corpus()),
        )  # fmt: skip
        started = time.perf_counter()
        subprocess.run([deepstep, "batch", "--submit", str(batch_file)], env=env, capture_output=True, check=True)
        worker = subprocess.Popen([deepstep, "worker", "--concurrency", "1"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            with psycopg.connect(postgres.url, autocommit=True) as connection:
                while True:
                    row = connection.execute(
                        "SELECT count(*) FILTER (WHERE status::text IN ('todo', 'doing')), count(*) FROM procrastinate_jobs"
                    ).fetchone()
                    if row and row[0] == 0 and row[1] == questions:
                        break
                    if worker.poll() is not None:
                        raise RuntimeError(f"deepstep worker exited {worker.returncode} before the jobs were done")
                    time.sleep(0.05)
            wall = time.perf_counter() - started
        finally:
            worker.terminate()
            worker.wait(60)
    return {"wall_s": round(wall, 2), "questions_per_min": round(questions / wall * 60, 1)}


def _demo_corpus() -> Path:
    from deepstep.corpus import demo_corpus_dir

    return demo_corpus_dir()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--latency-ms", type=float, default=200)
    parser.add_argument("--queue", action="store_true", help="also through the Postgres job queue, with one worker")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    figures: dict = measure(args.questions, args.workers, args.latency_ms)
    if args.queue:
        queued = measure_queue(args.questions, args.latency_ms)
        one = figures.get(1) or measure(args.questions, [1], args.latency_ms)[1]
        figures["queue"] = {**queued, "overhead_per_job_s": round((queued["wall_s"] - one["wall_s"]) / args.questions, 2)}
    if args.json:
        print(json.dumps(figures))
        return
    print(f"{args.questions} questions, 3 steps at R = 1 each, {args.latency_ms:g} ms per call; {os.cpu_count()} cores")
    print("| workers | wall | questions / min | ideal | share of ideal |")
    print("| --- | --- | --- | --- | --- |")
    for count, row in figures.items():
        if count != "queue":
            print(f"| {count} | {row['wall_s']} s | {row['questions_per_min']} | {row['ideal_per_min']} | {row['share_of_ideal']} |")
    if "queue" in figures:
        queued = figures["queue"]
        print(
            f"queue, 1 worker: {queued['wall_s']} s, {queued['questions_per_min']} questions / min; overhead {queued['overhead_per_job_s']} s per job"
        )


if __name__ == "__main__":
    main()
