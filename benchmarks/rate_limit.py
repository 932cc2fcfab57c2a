"""A run against a rate-limited model API: how close to the rate limit's bound it finishes, how many of its
requests the API rejects, and whether any step fails.

The fake server runs in its own process with a token bucket (``--rate`` requests per second, burst 2)
and answers HTTP 429 with Retry-After when it is empty, as a rate-limited API does. The bound is the
time the run's accepted calls need at that rate: calls / rate. deepstep adapts the calls it keeps in
flight to the server (``deepstep.call_limits``: AIMD, honouring Retry-After).

Run: .venv/bin/python -m benchmarks.rate_limit [--steps 20] [--concurrency 8] [--rate 5] [--latency-ms 200] [--json]
"""

from __future__ import annotations

import argparse
import json
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


def measure(*, steps: int, concurrency: int, rate: float, latency_ms: float, rollouts: int = 2) -> dict[str, float | int]:
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
            settings = Settings.build(
                base_url=base_url, home=Path(home), max_steps=steps, max_concurrency=concurrency, rollouts=rollouts, report_layout="seed"
            )
            started = time.perf_counter()
            result = deepstep.run(QUESTION, settings=settings)
            wall = time.perf_counter() - started
        finally:
            server.terminate()
            server.wait(10)
        statuses = Counter(json.loads(line)["status"] for line in log.read_text().splitlines())
    accepted, rejected = statuses[200], statuses[429]
    bound = accepted / rate
    failed = sum(1 for step in step_tree.steps(result.tree) if step["status"] == "failed")
    return {
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
        "failed_steps": failed,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rate", type=float, default=5.0)
    parser.add_argument("--latency-ms", type=float, default=200.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    figures = measure(steps=args.steps, concurrency=args.concurrency, rate=args.rate, latency_ms=args.latency_ms)
    if args.json:
        print(json.dumps(figures))
        return
    print(
        f"{figures['steps']} steps at C = {figures['concurrency']} against {figures['rate']:g} requests/s "
        f"(latency {figures['latency_ms']:g} ms): {figures['wall_seconds']} s = {figures['wall_over_bound']}x the bound "
        f"({figures['accepted']} calls / rate = {figures['bound_seconds']} s); {figures['rejected']} of "
        f"{figures['accepted'] + figures['rejected']} requests rejected ({figures['rejected_share']:.1%}); "
        f"{figures['failed_steps']} steps failed"
    )


if __name__ == "__main__":
    main()
