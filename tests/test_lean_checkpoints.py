"""Lean checkpoints: each channel value stored once per version, only the newest checkpoint's pending writes
kept, compact versions; a thread written before (values inline, long versions) still loads and goes on."""

from __future__ import annotations

import sqlite3
from collections import Counter
from contextlib import closing

import pytest
from langgraph.checkpoint.sqlite import SqliteSaver

import deepstep
from deepstep import step_tree
from deepstep.checkpoint import compact_version, sqlite_checkpointer
from deepstep.tree_encoding import TreeSerializer
from tests.conftest import calls_by_task, with_settings

QUESTION = "What is a loss function?"


def test_compact_versions_keep_the_order_of_the_numbers_and_sort_after_langgraphs_long_ones():
    long_form = "00000000000000000000000000000011.0.5353021684398113"  # what SqliteSaver / PostgresSaver write
    after = compact_version(long_form)
    assert after.startswith("0000000012.") and len(after) == 19 and after > long_form
    assert compact_version(None).startswith("0000000001.") and compact_version(9).startswith("0000000010.")
    assert compact_version("0000000009.00000000") < compact_version("0000000010.ffffffff")
    assert compact_version("0000000009.0") != compact_version("0000000009.0")  # two forks never share a version


def _bytes(settings) -> int:
    with closing(sqlite3.connect(settings.checkpoint_file)) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return settings.checkpoint_file.stat().st_size


def test_a_step_costs_far_less_storage_than_before(settings, fake_llm, tmp_path):
    """A regression guard, loose on purpose (page fill varies): a step at R = 2 took about 180 KB on the test
    corpus when every checkpoint held every channel; now well under 80 KB."""
    sizes = {}
    for steps in (2, 6):
        run_settings = with_settings(settings, home=tmp_path / f"home{steps}", rollouts=2, max_steps=steps)
        fake_llm.steps = steps
        deepstep.run(QUESTION, thread_id="lean", settings=run_settings)
        sizes[steps] = _bytes(run_settings)
    assert (sizes[6] - sizes[2]) / 4 < 80_000, sizes


def test_values_are_stored_once_per_version_and_only_the_newest_writes_stay(settings, fake_llm):
    run_settings = with_settings(settings, rollouts=1, max_steps=2)
    result = deepstep.run(QUESTION, thread_id="once", settings=run_settings)
    with closing(sqlite3.connect(run_settings.checkpoint_file)) as connection:
        checkpoints = connection.execute("SELECT type, checkpoint FROM checkpoints").fetchall()
        blobs = Counter(channel for (channel,) in connection.execute("SELECT channel FROM channel_blobs WHERE checkpoint_ns != ''"))
        writes = connection.execute("SELECT count(*) FROM writes").fetchone()[0]
    serde = TreeSerializer()
    assert all(serde.loads_typed(row)["channel_values"] == {} for row in checkpoints)  # values live in channel_blobs
    assert blobs["contexts"] == 2  # one per step, though each step has about ten checkpoints
    assert writes <= 4  # only what the newest checkpoint of a namespace had pending (none once a run ended)
    assert deepstep.load("once", settings=run_settings).markdown == result.markdown


def test_a_thread_written_by_langgraphs_sqlite_saver_loads_and_resumes(settings, fake_llm):
    """Threads from before: every value inline in its checkpoint, long versions. The plan is written by the
    stock saver and paused for review; deepstep's saver resumes it, and the thread finishes with the same calls."""
    run_settings = with_settings(settings, rollouts=0, max_steps=2, review=True)
    run_settings.checkpoint_file.parent.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(run_settings.checkpoint_file, check_same_thread=False)) as connection:
        stock = SqliteSaver(connection, serde=TreeSerializer())
        graph = deepstep.build_graph(stock)
        graph.invoke({"question": QUESTION}, {"configurable": {"thread_id": "old"}}, context=run_settings)
    fake_llm.reset_log()
    result = deepstep.resume("old", review=True, settings=run_settings)
    assert result.status == "done" and len(step_tree.steps(result.tree)) == 2
    assert calls_by_task(fake_llm) == Counter(question=2, answer=2, evaluate=2)
    with sqlite_checkpointer(run_settings.checkpoint_file) as saver:
        assert saver.get_tuple({"configurable": {"thread_id": "old", "checkpoint_ns": ""}}).checkpoint["channel_values"]["report"]


@pytest.mark.parametrize("checkpoint_ns", ["", "step:x"])
def test_deleting_a_thread_deletes_its_stored_values(tmp_path, checkpoint_ns):
    with sqlite_checkpointer(tmp_path / "c.sqlite") as saver:
        config = {"configurable": {"thread_id": "t", "checkpoint_ns": checkpoint_ns}}
        checkpoint = {"v": 1, "id": "1", "ts": "", "channel_values": {"a": "x" * 300}, "channel_versions": {"a": "0000000001.0"}, "versions_seen": {}}
        saver.put(config, checkpoint, {}, {"a": "0000000001.0"})
        assert saver.get_tuple({"configurable": {"thread_id": "t", "checkpoint_ns": checkpoint_ns}}).checkpoint["channel_values"] == {"a": "x" * 300}
        saver.delete_thread("t")
        assert saver.conn.execute("SELECT count(*) FROM channel_blobs").fetchone()[0] == 0
