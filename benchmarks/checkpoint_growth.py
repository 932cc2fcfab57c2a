"""Checkpoint storage and calls per step for runs of N steps, alone (the full suite, ``benchmarks.run``,
reports the same figures in its section 5).

Run: .venv/bin/python -m benchmarks.checkpoint_growth [N ...]   (default: 5 50)
"""

from __future__ import annotations

import sys

from benchmarks.harness import DECOMPOSE_CALLS, Workload, calls_per_step, run_workload

ROLLOUTS = 2


def main(argv: list[str]) -> None:
    sizes = [int(a) for a in argv] or [5, 50]
    print(f"rollouts={ROLLOUTS}, fake server latency 0 ms, expected calls per step = 3 + 3R = {calls_per_step(ROLLOUTS)}")
    print("| steps | SQLite bytes | bytes/step | checkpoint rows | write rows | bytes/super-step | LLM calls/step | peak RSS MiB | wall s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for n in sizes:
        r = run_workload(Workload(steps=n, rollouts=ROLLOUTS))
        print(
            f"| {n} | {r['db_bytes']:,} | {r['db_bytes'] / n:,.0f} | {r['checkpoint_rows']} | {r['write_rows']} "
            f"| {r['bytes_per_superstep_mean']:,.0f} | {(r['calls'] - DECOMPOSE_CALLS) / n:.2f} | {r['peak_rss_mib']:.0f} | {r['wall_s']:.1f} |"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
