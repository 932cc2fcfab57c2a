"""The deepstep benchmark suite: one command, every figure a ratio or a count from this run.

Run: .venv/bin/python -m benchmarks.run [--quick] [--embedded] [--out DIR]

Writes DIR/results.md (machine, versions, settings, one table per benchmark) and
DIR/results.json (the same figures, raw). DIR defaults to benchmarks/. ``--quick`` is the
N = 5 smoke version (about a minute); ``--embedded`` adds the demo on the embedded SmolLM2.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.harness import (
    DECOMPOSE_CALLS,
    QUESTION,
    REPO,
    Workload,
    calls_per_step,
    clean_env,
    run_workload,
)

ROLLOUTS = 2
CRITICAL_PATH_TARGET = 1.10  # wall / ideal at the largest N and concurrency


@dataclass(frozen=True)
class Plan:
    latency_ms: float
    critical_sizes: tuple[int, ...]
    concurrencies: tuple[int, ...]
    overhead_sizes: tuple[int, ...]
    malformed_steps: int
    resume_steps: int
    resume_kills: int
    resume_concurrency: int
    resume_latency_ms: float
    profile_steps: int
    seed: int = 20261129


FULL = Plan(
    latency_ms=200,
    critical_sizes=(5, 20, 50),
    concurrencies=(1, 4, 8),
    overhead_sizes=(5, 20, 50, 100, 200),
    malformed_steps=20,
    resume_steps=20,
    resume_kills=10,
    resume_concurrency=4,
    resume_latency_ms=60,
    profile_steps=50,
)
QUICK = Plan(
    latency_ms=50,
    critical_sizes=(5,),
    concurrencies=(1, 4),
    overhead_sizes=(5,),
    malformed_steps=5,
    resume_steps=5,
    resume_kills=2,
    resume_concurrency=4,
    resume_latency_ms=60,
    profile_steps=5,
)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# 1. Critical path -------------------------------------------------------------------------


def critical_path(plan: Plan) -> list[dict[str, Any]]:
    per_step = calls_per_step(ROLLOUTS)
    rows = []
    for steps in plan.critical_sizes:
        for concurrency in plan.concurrencies:
            log(f"critical path N={steps} C={concurrency} L={plan.latency_ms:g} ms")
            figures = run_workload(Workload(steps=steps, concurrency=concurrency, latency_ms=plan.latency_ms, rollouts=ROLLOUTS))
            ideal = (DECOMPOSE_CALLS + math.ceil(steps / concurrency) * per_step) * plan.latency_ms / 1000
            rows.append(
                {
                    "steps": steps,
                    "concurrency": concurrency,
                    "latency_ms": plan.latency_ms,
                    "ideal_s": ideal,
                    "wall_s": figures["wall_s"],
                    "ratio": figures["wall_s"] / ideal,
                    "calls": figures["calls"],
                    "failed_steps": figures["failed_steps"],
                    "tree_sha256": figures["tree_sha256"],
                }
            )
    return rows


# 2, 5, 6. Overhead, checkpoint growth and memory from the same L = 0 runs -------------------


def overhead_figures(workload: Workload) -> dict[str, Any]:
    """One L = 0, C = 1 run with its per-call and per-step figures."""
    figures = run_workload(workload)
    steps, calls = workload.steps, figures["calls"]
    client_s = figures["wall_s"] - figures["server_s"]  # serial (C = 1): the server's share subtracts exactly
    checkpoint_s = figures["checkpoint_put_s"] + figures["checkpoint_put_writes_s"]
    return {
        **figures,
        "client_ms_per_call": 1000 * client_s / calls,
        "client_ms_per_step": 1000 * client_s / steps,
        "cpu_ms_per_call": 1000 * figures["cpu_s"] / calls,
        "cpu_ms_per_step": 1000 * figures["cpu_s"] / steps,
        "checkpoint_ms_per_call": 1000 * checkpoint_s / calls,
        "checkpoint_ms_per_step": 1000 * checkpoint_s / steps,
        "server_ms_per_call": 1000 * figures["server_s"] / calls,
        "db_bytes_per_step": figures["db_bytes"] / steps,
        "bytes_written_per_step": figures["bytes_written"] / steps,
        "checkpoint_rows_per_step": figures["checkpoint_rows"] / steps,
        "write_rows_per_step": figures["write_rows"] / steps,
    }


def overhead_runs(plan: Plan) -> list[dict[str, Any]]:
    rows = []
    for steps in plan.overhead_sizes:
        log(f"overhead / checkpoint / memory N={steps} C=1 L=0")
        rows.append(overhead_figures(Workload(steps=steps, concurrency=1, latency_ms=0, rollouts=ROLLOUTS)))
    return rows


def before_fix(plan: Plan) -> dict[str, Any]:
    """The same L = 0 run with SQLite's default fsync per commit, as deepstep had it before."""
    steps = plan.overhead_sizes[min(1, len(plan.overhead_sizes) - 1)]
    log(f"overhead before the fix (synchronous=FULL) N={steps} C=1 L=0")
    return overhead_figures(Workload(steps=steps, concurrency=1, latency_ms=0, rollouts=ROLLOUTS, fsync_every_commit=True))


def linear_fit(xs: list[float], ys: list[float]) -> dict[str, float]:
    """Least-squares line and R^2: growth is linear when R^2 is ~1 and the per-step slope is flat."""
    n = len(xs)
    if n < 2:
        return {"slope": ys[0] / xs[0] if xs else 0.0, "intercept": 0.0, "r2": 1.0}
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sxx
    intercept = mean_y - slope * mean_x
    total = sum((y - mean_y) ** 2 for y in ys)
    residual = sum((y - (intercept + slope * x)) ** 2 for x, y in zip(xs, ys, strict=True))
    return {"slope": slope, "intercept": intercept, "r2": 1 - residual / total if total else 1.0}


# 3. Calls per step ------------------------------------------------------------------------


def malformed_run(plan: Plan) -> dict[str, Any]:
    log(f"calls per step with every 10th refine/evaluate reply malformed, N={plan.malformed_steps}")
    figures = run_workload(Workload(steps=plan.malformed_steps, concurrency=4, latency_ms=0, rollouts=ROLLOUTS, malformed_every=10))
    expected = DECOMPOSE_CALLS + plan.malformed_steps * calls_per_step(ROLLOUTS)
    return {
        **figures,
        "expected_calls": expected,
        "extra_calls": figures["calls"] - expected,
        "calls_per_step": (figures["calls"] - DECOMPOSE_CALLS) / plan.malformed_steps,
    }


# 4. Resume cost ---------------------------------------------------------------------------


def resume_cost(plan: Plan) -> dict[str, Any]:
    import deepstep
    from deepstep import step_tree
    from deepstep.configuration import Settings
    from deepstep.testing import FakeLLMServer, crash

    steps, concurrency = plan.resume_steps, plan.resume_concurrency
    shape = {"rollouts": ROLLOUTS, "max_concurrency": concurrency, "max_steps": steps, "max_retries": 0, "report_layout": "seed"}

    def cli(env: dict[str, str], *args: str) -> None:
        done = subprocess.run(crash.cli_command(*args), env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"deepstep {' '.join(args)} failed (exit {done.returncode}): {done.stderr[-2000:]}")

    kills: list[dict[str, Any]] = []
    with FakeLLMServer(latency_ms=plan.resume_latency_ms, steps=steps) as server, tempfile.TemporaryDirectory() as scratch:
        log(f"resume cost: uninterrupted baseline N={steps} C={concurrency}")
        baseline_home = Path(scratch) / "baseline"
        started = time.perf_counter()
        cli(crash.cli_env(server.base_url, baseline_home, **shape), "run", QUESTION, "--thread-id", "baseline")
        baseline_s = time.perf_counter() - started
        total_calls = len(server.log())
        expected = step_tree.signature(deepstep.load("baseline", settings=Settings.build(base_url=server.base_url, home=baseline_home)).tree)
        points = sorted(random.Random(plan.seed).sample(range(1, total_calls), min(plan.resume_kills, total_calls - 1)))
        for point in points:
            log(f"resume cost: SIGKILL after reply {point} of {total_calls}")
            home = Path(scratch) / f"kill{point}"
            env = crash.cli_env(server.base_url, home, **shape)
            server.reset_log()
            crash.run_and_kill(crash.cli_command("run", QUESTION, "--thread-id", f"kill{point}"), env, server, crash.KillPoint(calls=point))
            gone_at = time.time()
            time.sleep(plan.resume_latency_ms / 1000 + 0.2)  # let the server finish the calls the kill cut off
            at_kill = server.log()
            cli(env, "resume", f"kill{point}")
            log_after = server.log()
            tree = deepstep.load(f"kill{point}", settings=Settings.build(base_url=server.base_url, home=home)).tree
            kills.append(
                {
                    "kill_after_reply": point,
                    # Requests the server was still working on when the killed process was gone.
                    "open_at_kill": sum(1 for e in at_kill if e["status"] == 0 or e["finished"] >= gone_at),
                    "cut_off_by_kill": sum(1 for e in at_kill if e["status"] == 0),
                    "repeated": crash.repeated_calls(log_after),
                    "distinct_calls": len({e["hash"] for e in crash.answered(log_after)}),
                    "tree_identical": step_tree.signature(tree) == expected,
                }
            )
    return {
        "steps": steps,
        "concurrency": concurrency,
        "latency_ms": plan.resume_latency_ms,
        "uninterrupted_calls": total_calls,
        "uninterrupted_s": baseline_s,
        "kills": kills,
        "max_repeated": max((k["repeated"] for k in kills), default=0),
        "all_trees_identical": all(k["tree_identical"] for k in kills),
        "all_calls_made": all(k["distinct_calls"] == total_calls for k in kills),
    }


# 2b. Profile ------------------------------------------------------------------------------

SERVER_FRAMES = ("fake_llm.py", "socketserver.py", "http/server.py")
# A thread sampled here is waiting (for work, a lock or an event), not working.
WAITING_LEAVES = ("_worker (concurrent/futures/thread.py", "Condition.wait (", "Event.wait (", "Thread.join (", "_wait_for_tstate_lock (")
PLUMBING = ("threading.py", "concurrent/futures", "runpy", "<module>", "workload.py", "contextlib.py")


def _frame_key(frame: str) -> tuple[str, str]:
    """``function (path:line)`` -> (``function (file)``, package)."""
    name, _, where = frame.rpartition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    if "site-packages/" in path:
        path = path.split("site-packages/", 1)[1]
    top = path.split("/", 1)[0].removesuffix(".py")
    package = top if "/" in path and not path.startswith("<") else f"stdlib {Path(path).stem}"
    short = "/".join(path.split("/")[-2:])
    return f"{name or frame} ({short})", package


def _run_stacks(raw: Path) -> list[tuple[list[str], int]]:
    """The samples of the run itself: the main thread inside ``deepstep.run`` and the graph's worker
    threads; setup (imports, indexing), the fake server and idle threads are left out."""
    stacks = []
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if any(marker in frame for frame in frames for marker in SERVER_FRAMES):
            continue
        in_run = any(frame.startswith("_execute (deepstep/api.py") for frame in frames) or frames[0].startswith("Thread._bootstrap")
        waiting = frames[-1].startswith(WAITING_LEAVES)
        if in_run and not waiting and count.isdigit():
            stacks.append((frames, int(count)))
    return stacks


def profile(plan: Plan) -> dict[str, Any]:
    """Sample every thread of an L = 0 run with py-spy."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        return {"skipped": "py-spy is not installed (pip install py-spy)"}
    log(f"profile: py-spy on N={plan.profile_steps} C=1 L=0")
    with tempfile.TemporaryDirectory() as scratch:
        raw = Path(scratch) / "profile.txt"
        try:
            figures = run_workload(
                Workload(steps=plan.profile_steps, concurrency=1, latency_ms=0, rollouts=ROLLOUTS),
                profiler=[spy, "record", "--format", "raw", "--rate", "200", "--output", str(raw), "--"],
            )
        except RuntimeError as error:
            return {"skipped": f"py-spy could not sample the run: {str(error).strip().splitlines()[-1][:200]}"}
        stacks = _run_stacks(raw)
    own: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for frames, count in stacks:
        key, package = _frame_key(frames[-1])
        own[key] += count
        packages["(lazy imports)" if any("importlib._bootstrap" in f for f in frames) else package] += count
        for frame in {_frame_key(f)[0] for f in frames if not any(p in f for p in PLUMBING)}:
            inclusive[frame] += count
    total = sum(count for _, count in stacks) or 1
    share = lambda counter: [(name, 100 * count / total) for name, count in counter.most_common(12)]  # noqa: E731
    return {
        "steps": plan.profile_steps,
        "samples": total,
        "wall_s": figures["wall_s"],
        "by_package": share(packages),
        "self": share(own),
        "inclusive": share(inclusive),
    }


def construction_costs(repeats: int = 300) -> dict[str, float]:
    """Milliseconds per ``Settings.for_run`` from plain ``configurable`` values (how Studio and a hand-made
    ``graph.invoke`` pass settings; the Python API passes resolved ones) and per ``models.chat_model``."""
    from deepstep.configuration import Settings
    from deepstep.models import chat_model

    settings = Settings.build(base_url="http://127.0.0.1:9/v1", home=Path(tempfile.gettempdir()) / "deepstep-bench-micro")
    config = {"configurable": {"thread_id": "micro", **settings.run_settings()}}
    costs = {}
    for name, build in (("for_run_ms", lambda: Settings.for_run(config)), ("chat_model_ms", lambda: chat_model(settings, "evaluate"))):
        build()
        started = time.perf_counter()
        for _ in range(repeats):
            build()
        costs[name] = 1000 * (time.perf_counter() - started) / repeats
    return costs


# 7. Embedded model demo -------------------------------------------------------------------


def embedded_demo() -> dict[str, Any]:
    import deepstep
    from deepstep.configuration import Settings
    from deepstep.testing import crash

    log("embedded demo: deepstep run on the embedded SmolLM2 (no OPENAI_BASE_URL)")
    with tempfile.TemporaryDirectory() as home:
        env = clean_env(DEEPSTEP_HOME=home)
        started = time.perf_counter()
        done = subprocess.run(
            crash.cli_command("run", QUESTION, "--thread-id", "demo"), env=env, cwd=REPO, capture_output=True, text=True, timeout=1800
        )
        wall = time.perf_counter() - started
        if done.returncode not in (0, 1):
            return {"skipped": f"the demo failed (exit {done.returncode}): {done.stderr.strip()[-300:]}"}
        result = deepstep.load("demo", settings=Settings.build(home=Path(home)))
    usage = result.usage
    calls = sum(role.get("calls", 0) for role in usage.values())
    completion = sum(role.get("completion_tokens", 0) for role in usage.values())
    prompt = sum(role.get("prompt_tokens", 0) for role in usage.values())
    return {
        "wall_s": wall,
        "steps": len(result.tree) - 1,
        "failed_steps": len(result.failed_steps),
        "calls": calls,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "completion_tokens_per_s": completion / wall,
        "calls_per_minute": 60 * calls / wall,
        "repairs": sum(role.get("repairs", 0) for role in usage.values()),
        "fallbacks": sum(role.get("fallbacks", 0) for role in usage.values()),
    }


# Report -----------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
        platform.processor(),
    )
    memory = next((int(line.split()[1]) // 1024 for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")), 0)
    versions = {}
    for package in (
        "deepstep",
        "langgraph",
        "langgraph-checkpoint",
        "langgraph-checkpoint-sqlite",
        "langchain-core",
        "langchain-openai",
        "openai",
        "networkx",
    ):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_mib": memory,
        "python": platform.python_version(),
        "versions": versions,
    }


def table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + " --- |" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def overhead_row(label: str, r: dict[str, Any]) -> list[Any]:
    return [
        label or "normal",
        r["steps"],
        r["calls"],
        f"{r['wall_s']:.1f}",
        f"{r['client_ms_per_call']:.1f}",
        f"{r['checkpoint_ms_per_call']:.1f}",
        f"{r['cpu_ms_per_call']:.1f}" if "cpu_ms_per_call" in r else "-",
        f"{r['client_ms_per_step']:.0f}",
        f"{r['server_ms_per_call']:.2f}",
    ]


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**missed**"


def render(results: dict[str, Any]) -> str:
    m, plan = results["machine"], results["plan"]
    per_step = calls_per_step(ROLLOUTS)
    out = [
        "# deepstep benchmark results",
        "",
        f"Generated by `python -m benchmarks.run{' --quick' if results['quick'] else ''}{' --embedded' if results['embedded'] else ''}` "
        f"on {results['started']} UTC in {results['duration_s']:.0f} s.",
        "",
        table(
            ["machine", "value"],
            [
                ["platform", m["platform"]],
                ["CPU", f"{m['cpu']} ({m['cores']} cores), {m['memory_mib']:,} MiB RAM"],
                ["Python", m["python"]],
                *[[name, version] for name, version in m["versions"].items()],
                ["1-min load average at start / end", f"{results['load_start']:.2f} / {results['load_end']:.2f} (other processes share the cores)"],
            ],
        ),
        "",
        f"Settings: rollouts R = {ROLLOUTS}, reward samples 1, so 3 + 3R = {per_step} LLM calls per step and {DECOMPOSE_CALLS} "
        "planning calls (outline, steps); `max_retries=0`; bundled demo corpus; SQLite checkpointer. Every measured run is a fresh "
        "child process (`benchmarks.workload`) with the fake server `deepstep.testing.fake_llm` (deterministic replies) in a "
        "process of its own, as a real model server would be; its clock starts after the process's start-up (the corpus index "
        "and language, the model layer's imports: `benchmarks.call_cpu` measures it); the resume runs kill and resume the real "
        "`deepstep` CLI.",
        "",
        "## 1. Critical-path ratio",
        "",
        f"Every call answers after L = {plan['latency_ms']:g} ms. Ideal = ({DECOMPOSE_CALLS} + ceil(N / C) x {per_step}) x L. "
        f"Target: ratio <= {CRITICAL_PATH_TARGET} at the largest N and C.",
        "",
        table(
            ["N", "C", "ideal s", "wall s", "wall / ideal", "calls", "failed steps"],
            [
                [r["steps"], r["concurrency"], f"{r['ideal_s']:.1f}", f"{r['wall_s']:.1f}", f"{r['ratio']:.3f}", r["calls"], r["failed_steps"]]
                for r in results["critical_path"]
            ],
        ),
    ]
    largest = results["critical_path"][-1]
    out += [
        "",
        f"At N = {largest['steps']}, C = {largest['concurrency']}: {largest['ratio']:.3f} -> {verdict(largest['ratio'] <= CRITICAL_PATH_TARGET)}"
        + (
            ""
            if (largest["steps"], largest["concurrency"]) == (50, 8)
            else " (the target is set for N = 50, C = 8, L = 200 ms; this is the smoke version)"
        ),
        "",
        "The excess over the ideal is the client's work per call (section 2) on the critical path, plus waiting for a core: "
        "C steps' calls return together and their threads share one process (GIL) and two cores with the other load.",
    ]

    runs = results["overhead"]
    out += [
        "",
        "## 2. Framework overhead per call and per step (L = 0, C = 1)",
        "",
        "Client time = wall time minus the time the server spent on requests (exact, since C = 1 runs calls one at a time): "
        "orchestration, checkpointing, prompt building, parsing and the HTTP client. Checkpointing = time inside the "
        "SQLite saver's `put` and `put_writes`.",
        "",
        table(
            [
                "run",
                "N",
                "calls",
                "wall s",
                "client ms / call",
                "of which checkpointing",
                "client CPU ms / call",
                "client ms / step",
                "server ms / call",
            ],
            [overhead_row("", r) for r in runs]
            + ([overhead_row("before the fix: fsync per commit", results["before_fix"])] if results.get("before_fix") else []),
        ),
        "",
        "Client CPU = CPU time of all the client's threads during the run (the fake server runs in its own process), "
        "less sensitive to other load than wall time. Flat per-call figures across N mean the overhead per step does not grow with the run.",
    ]
    fixed = results.get("before_fix")
    if fixed:
        after = next((r for r in runs if r["steps"] == fixed["steps"]), runs[-1])
        out += [
            "",
            f"Fixed: SQLite's default `synchronous=FULL` made every commit an fsync (two or more commits per model call), "
            f"{fixed['checkpoint_ms_per_call']:.1f} ms of checkpointing per call; `deepstep.checkpoint` now sets `synchronous=NORMAL` "
            f"on the WAL database (still safe against a killed process, see section 4): {after['checkpoint_ms_per_call']:.1f} ms.",
        ]
    prof = results["profile"]
    out += ["", f"### Profile (py-spy, all client threads, N = {prof.get('steps', '-')}, L = 0)", ""]
    if "skipped" in prof:
        out.append(f"Skipped: {prof['skipped']}")
    else:
        out += [
            f"{prof['samples']} samples at 200 Hz of the run itself (main thread inside `deepstep.run` and graph worker threads); "
            f"setup, waiting threads and the fake server left out. Wall time under the profiler: {prof['wall_s']:.1f} s.",
            "",
            table(["package (self time)", "share"], [[name, f"{pct:.1f}%"] for name, pct in prof["by_package"][:8]]),
            "",
            table(["function (self time)", "share"], [[f"`{name}`", f"{pct:.1f}%"] for name, pct in prof["self"][:10]]),
            "",
            table(["function (inclusive)", "share"], [[f"`{name}`", f"{pct:.1f}%"] for name, pct in prof["inclusive"][:12]]),
        ]

    costs, largest_run = results.get("construction_costs"), runs[-1]
    if costs and "settings_builds" in largest_run:
        builds_per_call = largest_run["settings_builds"] / largest_run["calls"]
        avoidable = builds_per_call * costs["for_run_ms"] + costs["chat_model_ms"]
        out += [
            "",
            f"Fixed: each node rebuilt its `Settings` from the run config and each call a new `ChatOpenAI` and its schema's JSON "
            f"schema (about 3 ms of CPU per call, the largest share after checkpointing); the Python API now resolves a run's "
            f"settings once and passes them as LangGraph's runtime context, and `deepstep.models` builds a client once per distinct "
            f"input. Timed in isolation now: `Settings.for_run` from plain values (Studio's path) "
            f"{costs['for_run_ms']:.2f} ms x {builds_per_call:.2f} builds per call in this run, `models.chat_model` {costs['chat_model_ms']:.2f} ms: "
            f"together {avoidable:.2f} ms of the {largest_run['client_ms_per_call']:.1f} ms client time per call at N = {largest_run['steps']}.",
        ]
    malformed = results["malformed"]
    counts = [
        [r["steps"], r["concurrency"], r["latency_ms"], r["calls"], f"{(r['calls'] - DECOMPOSE_CALLS) / r['steps']:.2f}"]
        for r in results["critical_path"]
    ]
    counts += [[r["steps"], 1, 0, r["calls"], f"{(r['calls'] - DECOMPOSE_CALLS) / r['steps']:.2f}"] for r in runs]
    exact = all(r["calls"] == DECOMPOSE_CALLS + r["steps"] * per_step for r in [*results["critical_path"], *runs])
    out += [
        "",
        "## 3. Calls per step (from the server's request log)",
        "",
        f"Well-behaved server: every run made exactly {DECOMPOSE_CALLS} + {per_step} N calls -> {verdict(exact)}.",
        "",
        table(["N", "C", "L ms", "calls", "calls / step"], counts),
        "",
        f"Every 10th refine and every 10th evaluate reply malformed JSON (N = {malformed['steps']}, C = 4): "
        f"{malformed['faults_injected']} malformed replies, {malformed['calls']} calls against {malformed['expected_calls']} expected, "
        f"{malformed['extra_calls']} extra calls = {malformed['repairs']} repair requests (+ {malformed['retries']} retries); "
        f"{malformed['fallbacks']} fallbacks, {malformed['failed_steps']} failed steps; "
        f"{malformed['calls_per_step']:.2f} calls per step. Extra calls equal repairs + retries -> "
        f"{verdict(malformed['extra_calls'] == malformed['repairs'] + malformed['retries'])}.",
    ]

    resume = results["resume"]
    out += [
        "",
        "## 4. Resume cost (SIGKILL of a real `deepstep run`, then `deepstep resume`)",
        "",
        f"N = {resume['steps']}, C = {resume['concurrency']}, L = {resume['latency_ms']:g} ms; the uninterrupted run makes "
        f"{resume['uninterrupted_calls']} calls in {resume['uninterrupted_s']:.1f} s. Kill points drawn at random (seed {plan['seed']}). "
        "A call is in flight from its request until its node's checkpoint is written; each running step has at most one, "
        f"so at most C = {resume['concurrency']} calls are in flight at a kill. Server busy at kill = requests the server was still "
        "answering when the killed process was gone (a reply it had sent may also be lost, if its node had not checkpointed).",
        "",
        table(
            ["killed after reply", "server busy at kill", "cut off by kill", "calls repeated after resume", "all calls made", "tree identical"],
            [
                [
                    k["kill_after_reply"],
                    k["open_at_kill"],
                    k["cut_off_by_kill"],
                    k["repeated"],
                    k["distinct_calls"] == resume["uninterrupted_calls"],
                    k["tree_identical"],
                ]
                for k in resume["kills"]
            ],
        ),
        "",
        f"Most calls repeated: {resume['max_repeated']} (target: at most the calls in flight, <= C = {resume['concurrency']}) -> "
        f"{verdict(resume['max_repeated'] <= resume['concurrency'])}; final tree identical to the uninterrupted run in every case -> "
        f"{verdict(resume['all_trees_identical'] and resume['all_calls_made'])}.",
    ]

    fit = results["checkpoint_fit"]
    out += [
        "",
        "## 5. Checkpoint growth (same L = 0 runs)",
        "",
        "Bytes written = checkpoint + metadata blobs + pending writes, from the database after the run; a super-step is one "
        "checkpoint row (root graph or a step's subgraph).",
        "",
        table(
            [
                "N",
                "SQLite bytes",
                "bytes / step",
                "checkpoint rows",
                "write rows",
                "rows / step",
                "bytes / super-step (mean)",
                "step super-step max",
                "root checkpoints",
                "root super-step max",
            ],
            [
                [
                    r["steps"],
                    f"{r['db_bytes']:,}",
                    f"{r['db_bytes_per_step']:,.0f}",
                    r["checkpoint_rows"],
                    r["write_rows"],
                    f"{(r['checkpoint_rows'] + r['write_rows']) / r['steps']:.1f}",
                    f"{r['bytes_per_superstep_mean']:,.0f}",
                    f"{r['step_bytes_max']:,}",
                    r["root_checkpoints"],
                    f"{r['root_bytes_max']:,}",
                ]
                for r in runs
            ],
        ),
        "",
        f"Least-squares fit of SQLite bytes against N: {fit['slope']:,.0f} bytes per step + {fit['intercept']:,.0f}, R^2 = {fit['r2']:.4f}; "
        f"bytes per step range {fit['per_step_min']:,.0f} .. {fit['per_step_max']:,.0f} -> linear: {verdict(fit['linear'])}. "
        "A step's super-steps stay the same size whatever N; only the few root checkpoints (the tree and all step results) grow with N.",
    ]

    out += [
        "",
        "## 6. Memory",
        "",
        table(["N", "peak RSS MiB of the run's process (the fake server runs in its own)"], [[r["steps"], f"{r['peak_rss_mib']:.0f}"] for r in runs]),
    ]

    demo = results.get("embedded_demo")
    out += ["", "## 7. Embedded-model demo (`deepstep run` with no model server configured: SmolLM2-135M on llama.cpp)", ""]
    if demo is None:
        out.append("Not run (add `--embedded`).")
    elif "skipped" in demo:
        out.append(f"Skipped: {demo['skipped']}")
    else:
        out.append(
            table(
                [
                    "wall s",
                    "steps",
                    "failed steps",
                    "calls",
                    "prompt tokens",
                    "completion tokens",
                    "completion tokens / s",
                    "calls / min",
                    "repairs",
                    "fallbacks",
                ],
                [
                    [
                        f"{demo['wall_s']:.0f}",
                        demo["steps"],
                        demo["failed_steps"],
                        demo["calls"],
                        demo["prompt_tokens"],
                        demo["completion_tokens"],
                        f"{demo['completion_tokens_per_s']:.1f}",
                        f"{demo['calls_per_minute']:.1f}",
                        demo["repairs"],
                        demo["fallbacks"],
                    ]
                ],
            )
        )
        out.append("\nWall time includes starting the embedded server; tokens as counted by the server.")
    return "\n".join(out) + "\n"


# Sections below this line in results.md are measured by other benchmark scripts (CLI startup,
# llama.cpp builds); rewriting the suite's part keeps them.
SEPARATELY_MEASURED = "<!-- measured separately: benchmarks.run keeps everything below this line -->"


def write_results_markdown(path: Path, markdown: str) -> None:
    previous = path.read_text(encoding="utf-8") if path.exists() else ""
    kept = previous[previous.index(SEPARATELY_MEASURED) :] if SEPARATELY_MEASURED in previous else ""
    path.write_text(markdown + ("\n" + kept if kept else ""), encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the N = 5 smoke version")
    parser.add_argument("--embedded", action="store_true", help="also run the demo on the embedded SmolLM2 (minutes)")
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy profile")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent, help="folder for results.md and results.json")
    parser.add_argument("--render-only", action="store_true", help="rewrite results.md from the results.json in --out")
    args = parser.parse_args(argv)
    if args.render_only:
        write_results_markdown(args.out / "results.md", render(json.loads((args.out / "results.json").read_text())))
        return
    plan = QUICK if args.quick else FULL
    started = time.time()
    results: dict[str, Any] = {
        "quick": args.quick,
        "embedded": args.embedded,
        "started": time.strftime("%Y-%m-%d %H:%M", time.gmtime(started)),
        "load_start": os.getloadavg()[0],
        "machine": machine(),
        "plan": asdict(plan),
    }
    args.out.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after every section, so a failure late in the suite keeps the figures so far
        (args.out / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")

    results["critical_path"] = critical_path(plan)
    save()
    results["overhead"] = overhead_runs(plan)
    save()
    results["before_fix"] = before_fix(plan)
    save()
    sizes = [r["steps"] for r in results["overhead"]]
    per_step_bytes = [r["db_bytes_per_step"] for r in results["overhead"]]
    fit = linear_fit(sizes, [r["db_bytes"] for r in results["overhead"]])
    results["checkpoint_fit"] = {
        **fit,
        "per_step_min": min(per_step_bytes),
        "per_step_max": max(per_step_bytes),
        # Linear: a straight line explains the sizes, and a step costs about as much at the largest N as at the smallest.
        "linear": fit["r2"] >= 0.99 and per_step_bytes[-1] <= 1.5 * per_step_bytes[0],
    }
    results["malformed"] = malformed_run(plan)
    save()
    results["resume"] = resume_cost(plan)
    save()
    results["profile"] = {"skipped": "--no-profile"} if args.no_profile else profile(plan)
    results["construction_costs"] = construction_costs()
    save()
    results["embedded_demo"] = embedded_demo() if args.embedded else None
    results["load_end"] = os.getloadavg()[0]
    results["duration_s"] = time.time() - started
    save()
    markdown = render(results)
    write_results_markdown(args.out / "results.md", markdown)
    print(markdown)
    log(f"wrote {args.out / 'results.md'} and {args.out / 'results.json'} in {results['duration_s']:.0f} s")


if __name__ == "__main__":
    main()
