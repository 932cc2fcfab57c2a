"""Smoke test of the benchmark suite: its N = 5 version runs end to end and produces every figure.

It checks that figures exist and are sane numbers, not that targets are met: ratios depend on
the machine's load.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parent.parent


def positive(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def why_py_spy_cannot_sample(folder: Path) -> str | None:
    """Why py-spy cannot sample a Python child on this machine (it needs ptrace, which some
    containers forbid), or ``None`` when it can: found as the benchmark runs it."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    busy = "import time\nend = time.monotonic() + 0.5\nwhile time.monotonic() < end: pass"
    probe = subprocess.run(
        [spy, "record", "--format", "raw", "--rate", "200", "--output", str(folder / "probe.txt"), "--", sys.executable, "-c", busy],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if probe.returncode == 0 and (folder / "probe.txt").read_text().strip():
        return None
    return (probe.stderr.strip() or f"exit {probe.returncode}, no samples")[-300:]


def test_quick_benchmark_writes_every_figure(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=800
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    markdown = (tmp_path / "results.md").read_text()

    assert results["critical_path"], "no critical-path runs"
    for row in results["critical_path"]:
        assert positive(row["ratio"]) and positive(row["ideal_s"]) and positive(row["calls"])
    for row in results["overhead"]:
        assert positive(row["client_ms_per_call"]) and positive(row["client_ms_per_step"])
        assert positive(row["db_bytes"]) and positive(row["checkpoint_rows"]) and positive(row["bytes_per_superstep_mean"])
        assert positive(row["peak_rss_mib"])
    assert positive(results["malformed"]["calls"]) and results["malformed"]["faults_injected"] > 0
    assert results["resume"]["kills"], "no kill/resume figures"
    for kill in results["resume"]["kills"]:
        assert isinstance(kill["repeated"], int) and isinstance(kill["tree_identical"], bool)
    profile = results["profile"]
    cannot_sample = why_py_spy_cannot_sample(tmp_path)
    if cannot_sample is None:
        assert "skipped" not in profile, f"py-spy samples on this machine, yet the benchmark skipped its profile: {profile['skipped']}"
        assert positive(profile["samples"]) and profile["by_package"] and profile["self"] and profile["inclusive"], profile
        assert f"{profile['samples']} samples at 200 Hz" in markdown
    else:
        # The one skip benchmarks.run documents for an installed py-spy (it is a test dependency).
        assert profile.get("skipped", "").startswith("py-spy could not sample the run: "), (cannot_sample, profile)
    for heading in (
        "Critical-path ratio",
        "Framework overhead",
        "Calls per step",
        "Resume cost",
        "Checkpoint growth",
        "Memory",
        "Embedded-model demo",
    ):
        assert heading in markdown


def test_rewriting_the_suite_keeps_separately_measured_sections(tmp_path):
    sys.path.insert(0, str(REPO))
    from benchmarks.run import SEPARATELY_MEASURED, write_results_markdown

    results = tmp_path / "results.md"
    write_results_markdown(results, "# suite, first run\n")
    assert results.read_text() == "# suite, first run\n"
    results.write_text(f"# suite, first run\n\n{SEPARATELY_MEASURED}\n\n## CLI startup\n| a | b |\n")
    write_results_markdown(results, "# suite, second run\n")
    assert results.read_text() == f"# suite, second run\n\n{SEPARATELY_MEASURED}\n\n## CLI startup\n| a | b |\n"


def test_the_rerun_benchmark_counts_one_steps_calls_against_a_full_run():
    from benchmarks.rerun_step import measure

    figures = measure(steps=3, rollouts=1, latency_ms=0, concurrency=2)
    # One step: 3 + 3R = 6 calls; the whole question: planning (2) and 3 steps of 6.
    assert (figures["rerun_calls"], figures["full_calls"], figures["full_again_calls"]) == (6, 2 + 3 * 6, 2 + 3 * 6)


def test_the_call_cpu_benchmark_replays_every_call_and_accounts_for_its_cpu():
    from benchmarks.call_cpu import langgraph_floor, per_call, wall

    figures = per_call(steps=2)
    assert figures["calls"] == 2 + 2 * 9  # planning, then 3 + 3R calls per step at R = 2: each replayed once
    parts = [value for key, value in figures.items() if key.endswith(" ms_per_call") and key != "rest ms_per_call"]
    assert len(parts) == 3 and all(part > 0 for part in parts) and sum(parts) < figures["deepstep_ms_per_call"]
    floor = langgraph_floor(steps=2)
    assert floor["with_checkpointer_ms_per_node"] > 0 and floor["without_checkpointer_ms_per_node"] > 0
    row = wall(steps=2, concurrency=2, latency_ms=20, plain_calls=2)
    assert row["critical_path_s"] == pytest.approx((2 + 1 * 9) * 0.02) and row["wall_s"] > row["critical_path_s"]
    assert row["plain_loop_cpu_ms_per_call"] > 0
