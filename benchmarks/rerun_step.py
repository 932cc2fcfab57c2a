"""Changing one step of a 10-step report against running the whole question again: calls and wall time.

One fake model server in its own process with a fixed latency per call (as a remote model API has);
the whole question is run, then one step is rerun (``deepstep.rerun_step``), then the same question is
run again from scratch, as a user without per-step changes would have to. Calls are counted from the
server's request log.

Run: .venv/bin/python -m benchmarks.rerun_step [--steps 10] [--rollouts 2] [--latency-ms 200] [--concurrency 4] [--json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import deepstep
from benchmarks.harness import QUESTION
from deepstep.configuration import Settings


def _calls(log: Path) -> int:
    return sum(1 for line in log.read_text().splitlines() if json.loads(line)["status"] == 200) if log.exists() else 0


def measure(*, steps: int, rollouts: int, latency_ms: float, concurrency: int) -> dict[str, float | int]:
    with tempfile.TemporaryDirectory() as home:
        log = Path(home) / "requests.jsonl"
        command = [sys.executable, "-m", "deepstep.testing.fake_llm", "--port", "0", "--steps", str(steps)]
        command += ["--latency-ms", str(latency_ms), "--log", str(log)]
        server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout is not None
            base_url = server.stdout.readline().split()[-1]
            settings = Settings.build(
                base_url=base_url, home=Path(home), max_steps=steps, max_concurrency=concurrency, rollouts=rollouts, report_layout="seed"
            )
            figures: dict[str, float | int] = {}
            for name, action in [
                ("full", lambda: deepstep.run(QUESTION, thread_id="first", settings=settings)),
                ("rerun", lambda: deepstep.rerun_step("first", "0>1", note="Give the formula.", settings=settings)),
                ("full_again", lambda: deepstep.run(QUESTION, thread_id="again", settings=settings)),
            ]:
                before, started = _calls(log), time.perf_counter()
                action()
                figures[f"{name}_seconds"] = round(time.perf_counter() - started, 2)
                figures[f"{name}_calls"] = _calls(log) - before
        finally:
            server.terminate()
            server.wait(10)
    figures["time_ratio"] = round(figures["rerun_seconds"] / figures["full_again_seconds"], 3)
    figures["call_ratio"] = round(figures["rerun_calls"] / figures["full_again_calls"], 3)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rollouts", type=int, default=2)
    parser.add_argument("--latency-ms", type=float, default=200)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    figures = measure(steps=args.steps, rollouts=args.rollouts, latency_ms=args.latency_ms, concurrency=args.concurrency)
    if args.json:
        print(json.dumps(figures))
        return
    print(f"{args.steps} steps, R = {args.rollouts}, {args.latency_ms:g} ms per call, {args.concurrency} calls in flight")
    print(f"full run: {figures['full_again_calls']} calls, {figures['full_again_seconds']} s")
    print(f"one step rerun: {figures['rerun_calls']} calls, {figures['rerun_seconds']} s")
    print(f"rerun / full: {figures['call_ratio']} of the calls, {figures['time_ratio']} of the time")


if __name__ == "__main__":
    main()
