"""SIGKILL a real `deepstep run` at 20 seeded-random points, resume, and compare with an uninterrupted run.

After every kill the checkpoint database passes ``PRAGMA integrity_check`` and report.md /
table.csv are either absent or complete; every resume ends with the baseline's tree.
A second test kills the CLI in the middle of writing each output file.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import textwrap

import pytest

import deepstep
from deepstep import step_tree
from deepstep.testing import FakeLLMServer
from deepstep.testing.crash import (
    KillPoint,
    answered,
    cli_command,
    cli_env,
    integrity_check,
    repeated_calls,
    run_and_kill,
)

from .conftest import CORPUS, QUESTION, settings_for

pytestmark = pytest.mark.slow

SEED = 20261129
# The run stopped here; conftest's server and baseline fixtures read these five constants.
STEPS, ROLLOUTS, CONCURRENCY = 4, 1, 3
PLAN_CALLS = 2
TOTAL_CALLS = PLAN_CALLS + STEPS * (3 + 3 * ROLLOUTS)  # 26
LATENCY_MS = 25


def kill_points(seed: int = SEED) -> list[KillPoint]:
    """20 points: 3 in decompose, 13 among the steps' calls, 4 after the last call (report and export)."""
    rng = random.Random(seed)
    # After the outline: the step-list call is in flight or just answered.
    points = [KillPoint(calls=1, delay=rng.uniform(0.0, 0.04)) for _ in range(3)]
    points += [KillPoint(calls=c, delay=rng.uniform(0.0, 0.03)) for c in sorted(rng.sample(range(PLAN_CALLS, TOTAL_CALLS), 13))]
    points += [KillPoint(calls=TOTAL_CALLS, delay=rng.uniform(0.01, 0.12)) for _ in range(4)]
    return points


POINTS = kill_points()


def env_for(server: FakeLLMServer, home, **extra: object) -> dict[str, str]:
    return cli_env(server.base_url, home, corpus=CORPUS, rollouts=ROLLOUTS, max_concurrency=CONCURRENCY, max_retries=0, report_layout="seed", **extra)


def test_the_kill_points_cover_every_phase():
    phases = [p.phase(PLAN_CALLS, TOTAL_CALLS) for p in POINTS]
    assert len(POINTS) == 20
    assert {phase: phases.count(phase) for phase in set(phases)} == {
        "decompose": 3,
        "steps (fan-out / MCTSr)": 13,
        "collect/report/export": 4,
    }


@pytest.mark.parametrize("point", POINTS, ids=[f"{i:02d}-after{p.calls}+{p.delay * 1000:.0f}ms" for i, p in enumerate(POINTS)])
def test_killed_run_resumes_to_the_uninterrupted_tree(server, baseline, tmp_path, point):
    home, out = tmp_path / "home", tmp_path / "out"
    env = env_for(server, home)
    thread = "killed"
    server.reset_log()

    killed = run_and_kill(cli_command("run", QUESTION, "--thread-id", thread, "--out", str(out)), env, server, point)
    database = home / "checkpoints.sqlite"
    if database.exists():
        assert integrity_check(database) == "ok"
    written = {name: (out / name).read_text(encoding="utf-8") for name in ("report.md", "table.csv") if (out / name).exists()}

    resumed = subprocess.run(cli_command("resume", thread, "--out", str(out)), env=env, capture_output=True, text=True, timeout=120)
    log = server.log()
    record = {
        "phase": point.phase(PLAN_CALLS, TOTAL_CALLS),
        "kill_after": point.calls,
        "delay_ms": round(point.delay * 1000),
        "calls_before_kill": killed.calls_before_kill,
        "exited_before_kill": killed.finished_before_kill,
        "outputs_present_at_kill": sorted(written),
        "answered_total": len(answered(log)),
        "repeated": repeated_calls(log),
        "resume_exit": resumed.returncode,
    }
    print("kill-resume:", json.dumps(record))
    assert resumed.returncode == 0, resumed.stderr
    assert integrity_check(database) == "ok"
    assert repeated_calls(log) <= CONCURRENCY, record  # only calls in flight at the kill are made twice
    assert len({entry["hash"] for entry in answered(log)}) == TOTAL_CALLS, record

    final = deepstep.load(thread, settings=settings_for(server.base_url, home))
    assert step_tree.signature(final.tree) == baseline
    # Whatever was on disk at the kill was complete: the final outputs, never a prefix of them.
    if "report.md" in written:
        assert written["report.md"] == final.markdown
    if "table.csv" in written:
        assert written["table.csv"] == (out / "table.csv").read_text(encoding="utf-8")
    assert (out / "report.md").read_text(encoding="utf-8") == final.markdown


OUTPUTS_IN_WRITING_ORDER = ("report.md", "table.csv")

# Runs the CLI with an audit hook: when it starts writing the Nth output file (opens it, or a
# temporary file named after it, for writing inside the output folder), a file-size limit of
# 64 bytes is set, so the kernel kills the process (SIGXFSZ) in the middle of writing that file:
# the worst moment for a non-atomic writer. Outputs are counted, not opens: an atomic writer
# opens each file several times.
KILL_MID_WRITE = textwrap.dedent(
    """
    import os, resource, signal, sys
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # Python ignores it by default; the kernel's kill is the point
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    out, outputs, nth = os.path.realpath(sys.argv[1]), sys.argv[2].split(","), int(sys.argv[3])
    started = []
    def hook(event, args):
        if event != "open" or not isinstance(args[0], (str, bytes, os.PathLike)):
            return
        mode, flags = args[1] or "", args[2] or 0
        writing = any(c in mode for c in "wax+") or flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
        path = os.path.realpath(os.fsdecode(args[0]))
        if writing and os.path.dirname(path) == out:
            name = os.path.basename(path)
            output = next((o for o in outputs if name == o or name.startswith(f".{o}.")), name)
            if output not in started:
                started.append(output)
            if len(started) == nth:
                resource.setrlimit(resource.RLIMIT_FSIZE, (64, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    sys.addaudithook(hook)
    sys.argv = ["deepstep", *sys.argv[4:]]
    from deepstep.cli import main
    main()
    """
)


@pytest.mark.parametrize("nth_output", [1, 2])
def test_outputs_are_never_half_written_when_killed_while_writing(tmp_path, nth_output):
    with FakeLLMServer(steps=2) as fake:
        home, out = tmp_path / "home", tmp_path / "out"
        env = {**cli_env(fake.base_url, home, corpus=CORPUS, rollouts=1, max_retries=0, report_layout="seed"), "PYTHONDONTWRITEBYTECODE": "1"}
        first = subprocess.run(
            cli_command("run", QUESTION, "--thread-id", "w", "--out", str(out)), env=env, capture_output=True, text=True, timeout=120
        )
        assert first.returncode == 0, first.stderr
        before = {name: (out / name).read_bytes() for name in OUTPUTS_IN_WRITING_ORDER}
        # Make the stored report differ from the files on disk, so a rewrite is visible.
        for name in before:
            (out / name).write_bytes(before[name] + b"\n")
        previous = {name: (out / name).read_bytes() for name in before}

        killed = subprocess.run(
            [sys.executable, "-c", KILL_MID_WRITE, str(out), ",".join(OUTPUTS_IN_WRITING_ORDER), str(nth_output), "resume", "w", "--out", str(out)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert killed.returncode == -signal.SIGXFSZ, killed.stderr
        # The files written before the killed one are the complete new ones; the killed one and those
        # after it are the complete old ones, never a prefix of either.
        expected = {name: before[name] if index < nth_output - 1 else previous[name] for index, name in enumerate(OUTPUTS_IN_WRITING_ORDER)}
        assert {name: (out / name).read_bytes() for name in OUTPUTS_IN_WRITING_ORDER} == expected
