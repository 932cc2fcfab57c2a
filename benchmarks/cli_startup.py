"""CPU cost of the ``deepstep`` commands that answer at once: ``--help``, ``corpus search``, ``show``, ``export``, ``graph``.

Run: .venv/bin/python -m benchmarks.cli_startup [--repeat 7] [--json]

Makes a scratch DEEPSTEP_HOME holding one finished thread (a run against the fake model server on
the test corpus), then runs each command as a fresh process ``--repeat`` times after one unmeasured
warm-up (which also builds the corpus index, so every measured search reuses it, as a user's would).
The figure is the CPU time (user + sys, from ``os.wait4``) of the whole process: almost all of it is
imports, it counts what the machine spends whatever else runs on it, and the target is 1 s per command.
Two reference processes without deepstep put the figures in scale: a bare interpreter, and one that only
imports LangGraph's graph module (``graph`` needs the compiled graph, so that is its floor; ``show`` and
``export`` read a finished thread with the checkpointer alone).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.harness import QUESTION, REPO, clean_env

TEST_CORPUS = REPO / "tests" / "data" / "corpus"
TARGET_CPU_S = 1.0
SEARCH_QUERY = "loss function"
REFERENCES = {
    "reference: python -c pass": [sys.executable, "-c", "pass"],
    "reference: python -c 'import langgraph.graph'": [sys.executable, "-c", "import langgraph.graph"],
}


@dataclass(frozen=True)
class CommandCost:
    command: str
    reference: bool
    runs: int
    cpu_p50_s: float
    cpu_max_s: float
    wall_p50_s: float


def deepstep_command() -> list[str]:
    """The installed ``deepstep`` script next to this interpreter (what a user runs), else ``python -m deepstep.cli``."""
    script = Path(sys.executable).with_name("deepstep")
    return [str(script)] if script.exists() else [sys.executable, "-m", "deepstep.cli"]


def make_home(home: Path) -> str:
    """A DEEPSTEP_HOME with one finished thread; its id."""
    from deepstep import Settings, run
    from deepstep.testing import FakeLLMServer

    with FakeLLMServer() as fake:
        settings = Settings.build(base_url=fake.base_url, home=home, corpus=TEST_CORPUS, rollouts=1, max_steps=2, max_retries=0)
        result = run(QUESTION, settings=settings)
    if result.status != "done" or result.failed_steps:
        raise RuntimeError(f"the setup run did not finish cleanly: {result.status}, {len(result.failed_steps)} failed steps")
    return result.thread_id


def measure_once(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """CPU seconds (user + sys) and wall seconds of one run of ``argv``; raises if it fails."""
    started = time.perf_counter()
    process = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    error = process.stderr.read().decode(errors="replace")
    process.stderr.close()
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited with {process.returncode}:\n{error[-2000:]}")
    return usage.ru_utime + usage.ru_stime, wall


def measure(name: str, argv: list[str], env: dict[str, str], repeat: int, *, reference: bool = False) -> CommandCost:
    measure_once(argv, env)  # warm-up: bytecode caches, the corpus index
    runs = [measure_once(argv, env) for _ in range(repeat)]
    cpu = [c for c, _ in runs]
    return CommandCost(name, reference, repeat, statistics.median(cpu), max(cpu), statistics.median(w for _, w in runs))


def commands(thread_id: str, scratch: Path) -> dict[str, list[str]]:
    return {
        "deepstep --help": ["--help"],
        f"deepstep corpus search {SEARCH_QUERY!r} --corpus tests/data/corpus": ["corpus", "search", SEARCH_QUERY, "--corpus", str(TEST_CORPUS)],
        "deepstep show ID": ["show", thread_id],
        "deepstep export ID --md FILE": ["export", thread_id, "--md", str(scratch / "report.md")],
        "deepstep graph": ["graph"],
    }


def markdown_table(costs: list[CommandCost]) -> str:
    lines = ["| command | CPU s p50 | CPU s max | wall s p50 | target: CPU < 1 s |", "| --- | --- | --- | --- | --- |"]
    for cost in costs:
        verdict = "" if cost.reference else "met" if cost.cpu_p50_s < TARGET_CPU_S else "**missed**"
        lines.append(f"| `{cost.command}` | {cost.cpu_p50_s:.2f} | {cost.cpu_max_s:.2f} | {cost.wall_p50_s:.2f} | {verdict} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="measured runs per command (after one warm-up)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="deepstep-cli-bench-") as scratch_dir:
        scratch = Path(scratch_dir)
        home = scratch / "home"
        thread_id = make_home(home)
        env = clean_env(DEEPSTEP_HOME=str(home))
        load = os.getloadavg()[0]
        costs = [measure(name, deepstep_command() + arguments, env, args.repeat) for name, arguments in commands(thread_id, scratch).items()]
        costs += [measure(name, argv, env, args.repeat, reference=True) for name, argv in REFERENCES.items()]
    if args.json:
        print(json.dumps({"repeat": args.repeat, "load_average_1min": load, "commands": [asdict(c) for c in costs]}, indent=2))
    else:
        print(f"{args.repeat} runs per command after one warm-up; 1-min load average at start {load:.2f}")
        print(markdown_table(costs))
    return 0 if all(c.reference or c.cpu_p50_s < TARGET_CPU_S for c in costs) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
