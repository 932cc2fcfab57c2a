"""Golden-file tests of the Markdown report and the storyboard table.

``tests/golden/seed_report.md`` is the seed notebook's printed Markdown, copied verbatim;
it is never regenerated. The other golden files are deepstep's own; after an intended
change of layout, rewrite them with ``DEEPSTEP_UPDATE_GOLDEN=1 pytest tests/test_render.py``
and review the diff. Under CI (``CI`` set) the variable fails those tests instead: CI checks, never rewrites.
"""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path
from typing import Any

import networkx as nx
import pandas as pd
import pytest

from deepstep import render, step_tree
from deepstep.claims import mark_unsupported
from deepstep.cli.outputs import write_parquet
from deepstep.errors import ConfigError

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("DEEPSTEP_UPDATE_GOLDEN") == "1"


def tree_from_steps(question: str, outline: str, steps: list[dict[str, Any]]) -> nx.DiGraph:
    tree = step_tree.new_tree(question, outline)
    for step in steps:
        tree.add_node(step["id"], **{**step_tree.STEP_DEFAULTS, **{k: v for k, v in step.items() if k != "id"}})
    by_level = {step["level"]: step["id"] for step in steps}
    for step in steps:
        parent = step_tree.parent_level(step["level"])
        tree.add_edge(by_level[parent] if parent else step_tree.ROOT_ID, step["id"])
    return tree


def seed_tree() -> nx.DiGraph:
    data = json.loads((GOLDEN / "seed_tree.json").read_text(encoding="utf-8"))
    return tree_from_steps(data["question"], data["outline"], data["steps"])


def _context(n: int, title: str) -> dict[str, Any]:
    return {"ref_id": f"ref{n}", "chunk_id": f"ref{n}:0", "title": title, "source": f"docs/{n}.md", "score": 1.5 + n, "text": f"passage {n}"}


def mixed_tree() -> nx.DiGraph:
    """Every case: answered level 0, Chinese, LaTeX and Markdown in answers, citations, a failed step,
    an unanswered step, raw HTML kept as text, and steps given out of tree order."""
    steps = [
        {
            "id": "00000000-0000-4000-8000-000000000003",
            "level": "0>1>1",
            "name": "均方误差（MSE）",
            "description": r"$\text{MSE} = \frac{1}{n}\sum_i (y_i - \hat{y}_i)^2$",
            "answer": "### 1. 计算\n\n\\[ \\text{MSE} = \\frac{1}{n} \\sum_{i=1}^{n} (y_i - \\hat{y}_i)^2 \\]\n\n- **$y_i$**：实际值 [1]\n",
            "status": "done",
            "contexts": [_context(3, "回归损失")],
        },
        {
            "id": "00000000-0000-4000-8000-000000000001",
            "level": "0",
            "name": "Definition",
            "description": "What a loss function measures.",
            "answer": "A loss function maps a prediction and a target to a number [2][1]. <b>bold</b> <script>alert(1)</script>",
            "status": "done",
            "contexts": [_context(1, "Loss functions"), _context(2, "Overview")],
        },
        {
            "id": "00000000-0000-4000-8000-000000000002",
            "level": "0>1",
            "name": "常见的损失函数",
            "description": "以下是常见的损失函数及其公式：",
            "answer": "",
            "status": "failed",
            "error": "HTTP 500 from the model server",
            "contexts": [_context(4, "unused")],
        },
        {
            "id": "00000000-0000-4000-8000-000000000004",
            "level": "0>2",
            "name": "Choosing one",
            "description": "How to pick.",
            "answer": "",
            "status": "pending",
        },
    ]
    return tree_from_steps("什么是损失函数？ What is a loss function?", "- outline", steps)


def check_golden(name: str, actual: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        # A rewritten file always matches: in CI that would let any change of layout through unchecked.
        if os.environ.get("CI"):
            pytest.fail(f"DEEPSTEP_UPDATE_GOLDEN=1 is set under CI: tests/golden/{name} would be rewritten instead of checked; unset it")
        path.write_bytes(actual.encode("utf-8"))
    assert actual == path.read_bytes().decode("utf-8")


def test_seed_report_matches_the_seed_byte_for_byte() -> None:
    expected = (GOLDEN / "seed_report.md").read_bytes()
    assert render.markdown_report(seed_tree()).encode("utf-8") == expected


def test_mixed_report_golden() -> None:
    check_golden("mixed_report.md", render.markdown_report(mixed_tree()))


def test_report_layout_per_level() -> None:
    report = render.markdown_report(mixed_tree())
    assert report.startswith(
        "\n# 什么是损失函数？ What is a loss function? \n\n\n### Definition [task_id:0](00000000-0000-4000-8000-000000000001)\n\n"
    )
    # tree order, although the steps were added out of order
    positions = [report.index(f"[task_id:{level}]") for level in ("0", "0>1", "0>1>1", "0>2")]
    assert positions == sorted(positions)
    failed_block = "常见的损失函数 [task_id:0>1](00000000-0000-4000-8000-000000000002)以下是常见的损失函数及其公式： (this step failed: HTTP 500"
    assert failed_block in report
    assert "- **- 均方误差（MSE） [task_id:0>1>1](00000000-0000-4000-8000-000000000003)**:### 1. 计算" in report
    assert "## Failed steps\n\n- 常见的损失函数 [task_id:0>1]" in report
    # references: the cited passages only, in citation order per step; the failed step's passages are not cited
    references = report.split("# References\n\n", 1)[1].splitlines()
    assert references == [
        "- [0] [2] Overview (docs/2.md), ref_id:ref2, chunk_id:ref2:0",
        "- [0] [1] Loss functions (docs/1.md), ref_id:ref1, chunk_id:ref1:0",
        "- [0>1>1] [1] 回归损失 (docs/3.md), ref_id:ref3, chunk_id:ref3:0",
    ]


def test_rendering_is_pure() -> None:
    tree = mixed_tree()
    before = nx.node_link_data(tree, edges="edges")
    render.markdown_report(tree)
    render.storyboard_table(tree)
    assert nx.node_link_data(tree, edges="edges") == before


def test_seed_table_golden() -> None:
    table = render.storyboard_table(seed_tree())
    assert list(table.columns) == render.TABLE_COLUMNS
    assert list(table["shot_number"]) == list(range(1, 12))
    assert list(table["scene_number"]) == [f"story_board{i}" for i in range(11)]
    assert list(table["task_step_level"]) == ["0", "0>1", "0>1>1", "0>1>2", "0>1>4", "0>1>5", "0>1>6", "0>2", "0>3", "0>4", "0>5"]
    assert table.loc[0, "task_step_id"] == "87469b6b-3ea2-4383-9965-aa3e54e1ff1a"
    assert set(table["start_task_context"]) == {"什么是损失函数？"}
    check_golden("seed_table.csv", render.storyboard_csv(seed_tree()))


def test_table_contexts_are_lists_of_dicts() -> None:
    table = render.storyboard_table(mixed_tree())
    contexts = table.loc[0, "task_step_question_context"]
    assert isinstance(contexts, list) and all(isinstance(c, dict) for c in contexts)
    assert [c["chunk_id"] for c in contexts] == ["ref1:0", "ref2:0"]
    assert table.loc[3, "task_step_question_context"] == []
    check_golden("mixed_table.csv", render.storyboard_csv(mixed_tree()))


def test_csv_writes_contexts_as_json() -> None:
    tree = mixed_tree()
    table = render.storyboard_table(tree)
    text = render.storyboard_csv(tree)
    back = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    assert list(back.columns) == render.TABLE_COLUMNS
    contexts = [json.loads(cell) for cell in back["task_step_question_context"]]
    assert contexts == list(table["task_step_question_context"])
    assert contexts[0][0]["chunk_id"] == "ref1:0" and contexts[3] == []
    assert "回归损失" in text  # JSON without \u escapes, like the rest of the table
    assert back["task_step_question_answer"].tolist() == list(table["task_step_question_answer"])


def test_parquet_round_trip(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow", reason="pyarrow is in the notebooks extra; install it to test Parquet")
    table = render.storyboard_table(mixed_tree())
    path = tmp_path / "table.parquet"
    write_parquet(table, path)
    back = pd.read_parquet(path)
    assert list(back.columns) == render.TABLE_COLUMNS
    assert list(back["task_step_level"]) == ["0", "0>1", "0>1>1", "0>2"]
    assert [dict(c)["chunk_id"] for c in back.loc[0, "task_step_question_context"]] == ["ref1:0", "ref2:0"]


def test_parquet_without_pyarrow_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # makes `import pyarrow` fail
    with pytest.raises(ConfigError, match="pip install pyarrow"):
        write_parquet(render.storyboard_table(mixed_tree()), tmp_path / "t.parquet")
    assert not (tmp_path / "t.parquet").exists()


def test_tree_layout_centres_parents_and_never_crosses() -> None:
    tree = mixed_tree()
    positions = render.tree_layout(tree, step_tree.ROOT_ID, order=lambda n: step_tree.level_parts(tree.nodes[n]["level"]))
    assert set(positions) == set(tree.nodes)
    for node in tree.nodes:
        children = sorted(tree.successors(node), key=lambda n: step_tree.level_parts(tree.nodes[n]["level"]))
        if children:
            xs = [positions[c][0] for c in children]
            assert xs == sorted(xs) and positions[node][0] == (xs[0] + xs[-1]) / 2
            assert all(positions[c][1] == positions[node][1] - 1 for c in children)
    leaves = [positions[n][0] for n in tree.nodes if tree.out_degree(n) == 0]
    assert len(set(leaves)) == len(leaves)


# The ``graph`` command (cli/outputs.py).


def test_graph_mermaid_and_ascii() -> None:
    from typer.testing import CliRunner

    from deepstep.cli import app

    mermaid = CliRunner().invoke(app, ["graph"])
    assert mermaid.exit_code == 0, mermaid.output
    assert "graph TD" in mermaid.output and "decompose --> review" in mermaid.output
    xray = CliRunner().invoke(app, ["graph", "--xray"])
    assert "critique" in xray.output and "refine" in xray.output
    ascii_art = CliRunner().invoke(app, ["graph", "--format", "ascii"])
    assert ascii_art.exit_code == 0 and "| outline |" in ascii_art.output


def test_graph_png_is_drawn_offline(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="matplotlib is in the notebooks extra")
    from typer.testing import CliRunner

    from deepstep.cli import app

    out = tmp_path / "graph.png"
    result = CliRunner().invoke(app, ["graph", "--format", "png", "--out", str(out), "--xray"])
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    missing_out = CliRunner().invoke(app, ["graph", "--format", "png"])
    assert missing_out.exit_code == 2 and "--out" in missing_out.output


def test_graph_bad_format_and_missing_grandalf(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from deepstep.cli import app

    bad = CliRunner().invoke(app, ["graph", "--format", "svg"])
    assert bad.exit_code == 2 and "use mermaid, ascii or png" in bad.output
    monkeypatch.setattr("langchain_core.runnables.graph_ascii._HAS_GRANDALF", False)  # as langchain sees a missing grandalf
    missing = CliRunner().invoke(app, ["graph", "--format", "ascii"])
    assert missing.exit_code == 2 and "grandalf" in missing.output


def trust_tree() -> nx.DiGraph:
    """The answer-first layout's cases: a synthesized answer in the report's numbering, a step with an
    unsupported claim and one citing a passage another step cites too, a step the corpus does not
    cover, a failed step, and confidence levels (one low)."""
    shared = _context(2, "Overview")
    answer = "A loss function maps a prediction and a target to a number [1]. It is always convex [2]."
    steps = [
        {
            "id": "00000000-0000-4000-8000-00000000000a",
            "level": "0",
            "name": "Definition",
            "description": "What a loss function measures.",
            "answer": answer,
            "status": "done",
            "contexts": [_context(1, "Loss functions"), shared],
            "claims": [
                {
                    "text": "A loss function maps a prediction and a target to a number.",
                    "citations": [1],
                    "verdict": "supported",
                    "support": 1.0,
                    "start": 0,
                    "end": 63,
                },
                {"text": "It is always convex.", "citations": [2], "verdict": "unsupported", "support": 0.0, "start": 64, "end": 88},
            ],  # fmt: skip
            "confidence": {"level": "low", "best_q": 20.0, "supported_share": 0.5, "cited_passages": 2, "retrieval_strength": 0.6},
        },
        {
            "id": "00000000-0000-4000-8000-00000000000b",
            "level": "0>1",
            "name": "Regression losses",
            "description": "",
            "answer": "Squared error penalizes large errors [2], as the overview says [1].",
            "status": "done",
            "contexts": [_context(3, "Regression"), shared],
            "claims": [
                {
                    "text": "Squared error penalizes large errors, as the overview says.",
                    "citations": [2, 1],
                    "verdict": "supported",
                    "support": 0.9,
                    "start": 0,
                    "end": 67,
                },
            ],  # fmt: skip
            "confidence": {"level": "high", "best_q": 70.0, "supported_share": 1.0, "cited_passages": 2, "retrieval_strength": 0.8},
            "searches": [{"reason": "critique", "missing": "the formula", "query": "squared error formula", "new_passages": 1}],
        },
        {
            "id": "00000000-0000-4000-8000-00000000000c",
            "level": "1",
            "name": "History of the term",
            "description": "Who named it.",
            "answer": "",
            "status": "insufficient_evidence",
            "contexts": [_context(5, "Unrelated page")],
            "searches": [
                {"reason": "gate", "missing": "No retrieved passage covers the research question.", "query": "loss term origin", "new_passages": 0},
                {"reason": "gate", "missing": "No retrieved passage covers the research question.", "query": "who coined loss", "new_passages": 0},
            ],
        },
        {
            "id": "00000000-0000-4000-8000-00000000000d",
            "level": "2",
            "name": "Choosing one",
            "description": "",
            "answer": "",
            "status": "failed",
            "error": "HTTP 500 from the model server",
        },
    ]
    tree = tree_from_steps("What is a loss function?", "- outline", steps)
    tree.nodes[step_tree.ROOT_ID]["answer"] = "It maps predictions to a number [1] and squared error is one [3]."
    tree.nodes[step_tree.ROOT_ID]["claims"] = []
    return tree


def test_the_claims_spans_are_their_sentences():
    for step in step_tree.steps(trust_tree())[:2]:
        sentences = [step["answer"][claim["start"] : claim["end"]] for claim in step["claims"]]
        assert " ".join(sentences) == step["answer"]


def test_answer_first_report_golden() -> None:
    check_golden("answer_first_report.md", render.answer_first_report(trust_tree()))


def test_one_reference_list_numbers_each_passage_once() -> None:
    references = render.report_references(trust_tree())
    assert [p["chunk_id"] for p in references.passages] == ["ref1:0", "ref2:0", "ref3:0"]
    assert references.numbers["00000000-0000-4000-8000-00000000000b"] == {2: 2, 1: 3}  # its [2] is the shared passage


def test_dropping_unsupported_claims_removes_their_sentences() -> None:
    step = step_tree.steps(trust_tree())[0]
    assert mark_unsupported(step["answer"], step["claims"], drop=True) == "A loss function maps a prediction and a target to a number [1]."


def test_the_summary_counts_the_claims_dropped_from_the_opening_answer_and_the_steps() -> None:
    """unsupported_claims = drop: the opening answer's dropped claims (on the root) count with the steps'."""
    tree = trust_tree()
    tree.nodes[step_tree.ROOT_ID]["dropped_claims"] = 2
    first = step_tree.steps(tree)[0]["id"]
    tree.nodes[first]["dropped_claims"] = 1
    summary = render.answer_first_report(tree).splitlines()[2]
    assert summary.endswith(" _3 claims dropped: their cited passages did not back them (unsupported_claims = drop)._")
    assert "dropped" not in render.answer_first_report(trust_tree())  # none dropped: no count


def test_a_report_diff_is_a_unified_diff_in_a_markdown_block() -> None:
    assert render.report_diff("# Q\nold answer\nrefs", "# Q\nnew answer\nrefs", "version 1", "version 2") == (
        "```diff\n--- version 1\n+++ version 2\n@@ -1,3 +1,3 @@\n # Q\n-old answer\n+new answer\n refs\n```\n"
    )
    assert render.report_diff("same", "same", "a", "b") == ""
