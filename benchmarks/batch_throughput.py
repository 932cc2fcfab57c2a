"""Batch throughput (issue 20 item 4): questions per minute of `deepstep batch` with 1, 2 and 4 worker
processes against the fake server at 200 ms per call, against the ideal.

Each question is a 3-step plan at R = 1 (seed layout: 2 planning calls, then 3 steps of 3 + 3R = 6 calls
run side by side), so its critical path is (2 + 6) x L; W workers at best finish W questions per critical
path: ideal questions per minute = W x 60 / ((2 + 6) x L). The measured wall time is the whole command
(its start, the workers' starts, the summary), as a user waits for it. The fake server runs in its own
process, as a model server would.

Run: .venv/bin/python -m benchmarks.batch_throughput [--questions 8] [--workers 1 2 4] [--latency-ms 200] [--json]
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


def _demo_corpus() -> Path:
    from deepstep.corpus import demo_corpus_dir

    return demo_corpus_dir()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--latency-ms", type=float, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    figures = measure(args.questions, args.workers, args.latency_ms)
    if args.json:
        print(json.dumps(figures))
        return
    print(f"{args.questions} questions, 3 steps at R = 1 each, {args.latency_ms:g} ms per call; {os.cpu_count()} cores")
    print("| workers | wall | questions / min | ideal | share of ideal |")
    print("| --- | --- | --- | --- | --- |")
    for count, row in figures.items():
        print(f"| {count} | {row['wall_s']} s | {row['questions_per_min']} | {row['ideal_per_min']} | {row['share_of_ideal']} |")


if __name__ == "__main__":
    main()
