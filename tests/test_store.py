"""dreamsboard store export/import (STORE_FORMAT.md).

``tests/data/seed_store`` was written by dreamsboard 0.4.0 itself (``tests/dreamsboard_check.py make``)
from the seed notebook's steps, in the seed table's state: five steps answered, six not yet.
The round-trip tests run the real dreamsboard package in its own venv (``.venv-dreamsboard``,
made by scripts/setup_dreamsboard.sh; its langchain 0.1 pins cannot share deepstep's venv).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from typer.testing import CliRunner

import deepstep
from deepstep import step_tree, store
from deepstep.cli import app
from deepstep.errors import InputError

DATA = Path(__file__).parent / "data"
SEED_STORE = DATA / "seed_store"
REPO = Path(__file__).parent.parent
DREAMSBOARD_PYTHON = REPO / ".venv-dreamsboard" / "bin" / "python"
SEED_ANSWERED = {"0", "0>1", "0>1>1", "0>1>2", "0>1>4"}


def run_dreamsboard(*args: str) -> dict[str, Any] | None:
    """Run tests/dreamsboard_check.py in the dreamsboard venv."""
    if not DREAMSBOARD_PYTHON.exists():
        if os.environ.get("CI"):
            pytest.fail("the dreamsboard venv is missing: .ci/run must run scripts/setup_dreamsboard.sh")
        pytest.skip("no .venv-dreamsboard: run `bash scripts/setup_dreamsboard.sh` to test against the real dreamsboard")
    completed = subprocess.run(
        [str(DREAMSBOARD_PYTHON), str(Path(__file__).parent / "dreamsboard_check.py"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout) if completed.stdout.strip() else None


def test_read_store_written_by_dreamsboard() -> None:
    tree = store.read_store(SEED_STORE)
    steps = step_tree.steps(tree)
    assert step_tree.question_of(tree) == "什么是损失函数？"
    assert [s["level"] for s in steps] == ["0", "0>1", "0>1>1", "0>1>2", "0>1>4", "0>1>5", "0>1>6", "0>2", "0>3", "0>4", "0>5"]
    assert {s["level"] for s in steps if s["status"] == "done"} == SEED_ANSWERED
    assert all(s["answer"] == "" for s in steps if s["status"] == "pending")
    mse = next(s for s in steps if s["level"] == "0>1>1")
    assert mse["id"] == "507bb38a-af91-499a-a724-50023500f96f"
    assert mse["contexts"][0]["title"] == "Loss functions survey" and isinstance(mse["contexts"][0]["score"], float)
    # the parent comes from the level; 0>1>4 has no 0>1>3 sibling but its parent 0>1 exists
    by_level = {s["level"]: s["id"] for s in steps}
    assert list(tree.predecessors(by_level["0>1>4"])) == [by_level["0>1"]]
    assert list(tree.predecessors(by_level["0"])) == [step_tree.ROOT_ID]


def test_document_follows_the_store_format() -> None:
    tree = store.read_store(SEED_STORE)
    document = store.store_document(tree)
    assert set(document) == {"task_step_store/data", "task_step_store/metadata", "task_step_store/ref_task_step_info"}
    entries = document["task_step_store/data"]
    for key, entry in entries.items():
        assert entry["__type__"] == "task_step_node"
        assert entry["__data__"]["id_"] == key and "task_step_id" not in entry["__data__"]
        for context in entry["__data__"]["task_step_question_context"]:
            assert {"ref_id", "paper_title", "chunk_id", "score", "text"} <= set(context)
    assert [e["__data__"]["task_step_level"] for e in entries.values()] == [s["level"] for s in step_tree.steps(tree)]


def test_export_trace_and_failed_steps() -> None:
    tree = store.read_store(SEED_STORE)
    ids = {s["level"]: s["id"] for s in step_tree.steps(tree)}
    search = {
        "nodes": [
            {"id": 0, "parent": None, "children": [1], "answer": "draft", "thought": "", "critique": "", "rewards": [40.0], "q": 50.0, "visits": 1},
            {
                "id": 1,
                "parent": 0,
                "children": [],
                "answer": "better",
                "thought": "fixed",
                "critique": "too short",
                "rewards": [60.0],
                "q": 60.0,
                "visits": 0,
            },
        ],
        "rollouts_done": 1,
        "selections": [0],
        "best": 1,
    }
    tree = step_tree.with_step_updates(
        tree,
        [
            {
                "id": ids["0>2"],
                "status": "done",
                "answer": "better",
                "question": "q?",
                "mcts": search,
                "contexts": [{"ref_id": "r", "chunk_id": "r:0", "title": "T", "source": "a.md", "score": 2, "text": "x"}],
            },
            {"id": ids["0>3"], "status": "failed", "error": "HTTP 500", "answer": "", "question": "half done"},
        ],
    )
    data = store.store_document(tree)["task_step_store/data"]
    chosen = data[ids["0>2"]]["__data__"]
    assert chosen["task_step_critiques"] == ["too short"]
    assert chosen["task_step_refinements"] == [{"thought": "fixed", "answer": "better", "answer_score": 60.0}]
    assert chosen["task_step_rewards"] == [40.0, 60.0]
    assert chosen["task_step_question_context"] == [
        {"ref_id": "r", "paper_title": "T", "chunk_id": "r:0", "score": 2.0, "text": "x", "source": "a.md"}
    ]
    failed = data[ids["0>3"]]["__data__"]
    assert (failed["task_step_question"], failed["task_step_question_answer"], failed["task_step_question_context"]) == ("", "", [])


def test_round_trip_keeps_unknown_fields(tmp_path: Path) -> None:
    document = json.loads((SEED_STORE / store.STORE_FILE).read_text(encoding="utf-8"))
    first = next(iter(document["task_step_store/data"].values()))["__data__"]
    first["custom_field"] = {"kept": [1, 2]}
    first["metadata"] = {"origin": "dreamsboard"}
    source = tmp_path / "in"
    source.mkdir()
    (source / store.STORE_FILE).write_text(json.dumps(document, ensure_ascii=False), encoding="utf-8")

    tree = store.read_store(source)
    path = store.export_store(tree, tmp_path / "out")
    again = json.loads(path.read_text(encoding="utf-8"))
    exported = again["task_step_store/data"][first["id_"]]["__data__"]
    assert exported["custom_field"] == {"kept": [1, 2]} and exported["metadata"] == {"origin": "dreamsboard"}
    assert step_tree.signature(store.read_store(tmp_path / "out")) == step_tree.signature(tree)
    assert list(again["task_step_store/data"]) == list(document["task_step_store/data"])


def test_export_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tree = store.read_store(SEED_STORE)
    path = store.export_store(tree, tmp_path)
    before = path.read_bytes()

    def crash(*_args: Any, **_kwargs: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        store.export_store(store.read_store(SEED_STORE), tmp_path)
    assert path.read_bytes() == before  # the old store is intact
    assert [p.name for p in tmp_path.iterdir()] == [store.STORE_FILE]  # and no temp file is left behind


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no task_step_store.json"),
        ("{not json", "not valid JSON"),
        ('{"other": {}}', "not a dreamsboard task-step store"),
        ('{"task_step_store/data": {}}', "has no steps"),
        (
            '{"task_step_store/data": {"a": {"__type__": "task_step_node",'
            ' "__data__": {"id_": "a", "start_task_context": "Q", "task_step_level": "x"}}}}',
            "is not like 0, 0>1",
        ),
        (
            '{"task_step_store/data": {"a": {"__type__": "task_step_node",'
            ' "__data__": {"id_": "a", "start_task_context": "Q", "task_step_level": "0"}},'
            ' "b": {"__type__": "task_step_node", "__data__": {"id_": "b", "start_task_context": "Q", "task_step_level": "0"}}}}',
            "used twice",
        ),
        (
            '{"task_step_store/data": {"a": {"__type__": "task_step_node", "__data__": {"id_": "a", "task_step_level": "0"}}}}',
            "no start_task_context",
        ),
    ],
)
def test_bad_stores_are_input_errors(tmp_path: Path, content: str | None, message: str) -> None:
    if content is not None:
        (tmp_path / store.STORE_FILE).write_text(content, encoding="utf-8")
    with pytest.raises(InputError, match=message):
        store.read_store(tmp_path)


def test_cli_import_of_a_bad_store_exits_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["import", str(tmp_path)])
    assert result.exit_code == 2
    assert "no task_step_store.json" in result.output


@pytest.mark.slow
def test_import_completes_only_unanswered_steps(settings: deepstep.Settings, fake_llm) -> None:
    original = {s["id"]: s for s in step_tree.steps(store.read_store(SEED_STORE))}
    result = deepstep.import_store(SEED_STORE, thread_id="imported", settings=settings)

    assert result.status == "done" and result.failed_steps == []
    steps = step_tree.steps(result.tree)
    assert all(s["status"] == "done" and s["answer"] for s in steps)
    for step in steps:
        if step["level"] in SEED_ANSWERED:  # kept exactly as imported
            assert step["answer"] == original[step["id"]]["answer"]
            assert step["contexts"] == original[step["id"]]["contexts"]
    # model calls only for the six unanswered steps: no outline/plan, one research question and one draft each
    tasks = Counter(entry["task"] for entry in fake_llm.log())
    assert tasks["outline"] == 0 and tasks["steps"] == 0
    assert tasks["question"] == 6 and tasks["answer"] == 6
    assert "507bb38a-af91-499a-a724-50023500f96f:「在回归任务中" in result.markdown  # the seed's answer, in the report

    # the thread is an ordinary one: it loads, and a resume makes no further calls
    calls = len(fake_llm.log())
    assert step_tree.signature(deepstep.load("imported", settings=settings).tree) == step_tree.signature(result.tree)
    deepstep.resume("imported", settings=settings)
    assert len(fake_llm.log()) == calls


@pytest.mark.slow
def test_import_of_a_fully_answered_store_makes_no_calls(settings: deepstep.Settings, fake_llm, tmp_path: Path) -> None:
    first = deepstep.import_store(SEED_STORE, settings=settings)
    store.export_store(first.tree, tmp_path / "done")
    fake_llm.reset_log()
    second = deepstep.import_store(tmp_path / "done", settings=settings)
    assert fake_llm.log() == []
    assert step_tree.signature(second.tree) == step_tree.signature(first.tree)
    with pytest.raises(InputError, match="already exists"):
        deepstep.import_store(tmp_path / "done", thread_id=second.thread_id, settings=settings)


@pytest.mark.slow
def test_export_loads_in_real_dreamsboard(settings: deepstep.Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = deepstep.run("What is a loss function?", thread_id="t-export", settings=settings)
    assert result.failed_steps == []
    monkeypatch.setenv("DEEPSTEP_HOME", str(settings.home))
    cli = CliRunner().invoke(
        app,
        [
            "export",
            "t-export",
            "--dreamsboard",
            str(tmp_path / "store"),
            "--csv",
            str(tmp_path / "t.csv"),
            "--md",
            str(tmp_path / "r.md"),
            "--parquet",
            str(tmp_path / "t.parquet"),
        ],
    )
    assert cli.exit_code == 0, cli.output
    assert (tmp_path / "r.md").read_text(encoding="utf-8") == result.markdown
    assert pd.read_csv(tmp_path / "t.csv")["task_step_id"].tolist() == result.table()["task_step_id"].tolist()
    assert pd.read_parquet(tmp_path / "t.parquet")["task_step_level"].tolist() == result.table()["task_step_level"].tolist()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp files left
    unwritable = CliRunner().invoke(app, ["export", "t-export", "--md", str(tmp_path / "t.csv" / "r.md")])
    assert unwritable.exit_code == 2 and "cannot write" in unwritable.output

    loaded = run_dreamsboard("load", str(tmp_path / "store"))
    steps = step_tree.steps(result.tree)
    assert loaded["ids"] == [s["id"] for s in steps]
    assert loaded["levels"] == [s["level"] for s in steps]
    assert loaded["answers"] == [s["answer"] for s in steps]
    # dreamsboard's table has the seed's columns; deepstep's adds confidence and unsupported_claims after them.
    assert loaded["table_ids"] == loaded["ids"] and loaded["table_columns"] + ["confidence", "unsupported_claims"] == list(result.table().columns)
    assert [[c["chunk_id"] for c in contexts] for contexts in loaded["contexts"]] == [[c["chunk_id"] for c in s["contexts"]] for s in steps]
    assert all(c["paper_title"] for contexts in loaded["contexts"] for c in contexts)
    assert all(len(critiques) == 2 for critiques in loaded["critiques"])  # rollouts=2: the MCTSr trace came along
    assert "None" not in loaded["markdown"].split("# References", 1)[1]

    # dreamsboard re-persists it; deepstep reads that back unchanged
    resaved = tmp_path / "resaved"
    run_dreamsboard("resave", str(tmp_path / "store"), str(resaved))
    assert step_tree.signature(store.read_store(resaved), fields=("name", "level", "question", "answer", "status", "contexts")) == (
        step_tree.signature(store.read_store(tmp_path / "store"), fields=("name", "level", "question", "answer", "status", "contexts"))
    )


@pytest.mark.slow
def test_store_made_by_dreamsboard_imports(settings: deepstep.Settings, fake_llm, tmp_path: Path) -> None:
    spec = [
        {
            "id": "11111111-1111-4111-8111-111111111111",
            "start_task_context": "什么是损失函数？",
            "aemo_representation_context": "outline",
            "task_step_name": "定义",
            "task_step_description": "d",
            "task_step_level": "0",
            "task_step_question": "q",
            "task_step_question_context": [{"ref_id": "r1", "paper_title": "P", "chunk_id": "c1", "score": 0.5, "text": "t"}],
            "task_step_question_answer": "已经回答。",
            "ref_task_step_id": "",
        },
        {
            "id": "22222222-2222-4222-8222-222222222222",
            "start_task_context": "什么是损失函数？",
            "aemo_representation_context": "outline",
            "task_step_name": "常见形式",
            "task_step_description": "d2",
            "task_step_level": "0>1",
            "task_step_question": "",
            "task_step_question_context": [],
            "task_step_question_answer": "",
            "ref_task_step_id": "",
        },
    ]
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    run_dreamsboard("make", str(tmp_path / "made"), str(spec_path))
    result = deepstep.import_store(tmp_path / "made", settings=settings)
    answers = {s["level"]: s["answer"] for s in step_tree.steps(result.tree)}
    assert answers["0"] == "已经回答。" and answers["0>1"]
    assert Counter(e["task"] for e in fake_llm.log())["question"] == 1


@pytest.mark.slow
def test_cli_import(fake_llm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", fake_llm.base_url)
    monkeypatch.setenv("DEEPSTEP_CORPUS", str(DATA / "corpus"))
    monkeypatch.setenv("DEEPSTEP_REPORT_LAYOUT", "seed")  # the seed's store in the seed's layout
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["import", str(SEED_STORE), "--thread-id", "cli-import", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = (out / "report.md").read_text(encoding="utf-8")
    assert report.startswith("\n# 什么是损失函数？ \n\n\n### 定义与作用 [task_id:0](87469b6b-3ea2-4383-9965-aa3e54e1ff1a)")
    assert Counter(e["task"] for e in fake_llm.log())["question"] == 6
    again = CliRunner().invoke(app, ["import", str(SEED_STORE), "--thread-id", "cli-import"])
    assert again.exit_code == 2 and "already exists" in again.output
