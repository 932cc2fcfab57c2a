"""Rendering the step tree (pure functions): the seed's Markdown report and storyboard table."""

from __future__ import annotations

from typing import Any

import networkx as nx
import pandas as pd

from deepstep import tree as step_tree
from deepstep.citations import cited_numbers

TABLE_COLUMNS = [
    "task_step_id",
    "shot_number",
    "scene_number",
    "start_task_context",
    "aemo_representation_context",
    "task_step_name",
    "task_step_description",
    "task_step_level",
    "task_step_question",
    "task_step_question_context",
    "task_step_question_answer",
    "ref_task_step_id",
]


def _answer_text(step: dict[str, Any]) -> str:
    if step["status"] == "failed":
        return f"(this step failed: {step['error']})"
    return step["answer"]


def _step_block(step: dict[str, Any]) -> str:
    anchor = f"{step['name']} [task_id:{step['level']}]({step['id']})"
    depth = step_tree.level_depth(step["level"])
    if depth == 0:
        parts = [f"### {anchor}", step["description"], _answer_text(step)]
        return "\n\n".join(part for part in parts if part)
    if depth == 1:
        return f"{anchor}{step['description']} {_answer_text(step)}"
    return f"- **- {anchor}**:{_answer_text(step)}"


def cited_passages(tree: nx.DiGraph) -> list[dict[str, Any]]:
    """The passages the final answers cite, once each, in tree order."""
    seen: dict[str, dict[str, Any]] = {}
    for step in step_tree.steps(tree):
        contexts = step.get("contexts") or []
        for number in cited_numbers(step.get("answer", "")):
            if 1 <= number <= len(contexts):
                context = contexts[number - 1]
                seen.setdefault(context["chunk_id"], context)
    return list(seen.values())


def markdown_report(tree: nx.DiGraph) -> str:
    """The seed's layout: ``# question``, one block per step in tree order, then references."""
    blocks = [f"# {step_tree.question_of(tree)} \n"]
    blocks += [_step_block(step) for step in step_tree.steps(tree)]
    failed = [s for s in step_tree.steps(tree) if s["status"] == "failed"]
    if failed:
        blocks.append("**Failed steps:** " + ", ".join(f"{s['name']} [task_id:{s['level']}] ({s['error']})" for s in failed))
    references = cited_passages(tree)
    if references:
        lines = [f"- `{c['chunk_id']}` {c['title']} ({c['source']})" for c in references]
        blocks.append("## References\n\n" + "\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def storyboard_table(tree: nx.DiGraph) -> pd.DataFrame:
    """The seed's storyboard table: one row per step in tree order."""
    question, outline = step_tree.question_of(tree), step_tree.outline_of(tree)
    rows = [
        {
            "task_step_id": step["id"],
            "shot_number": index + 1,
            "scene_number": f"story_board{index}",
            "start_task_context": question,
            "aemo_representation_context": outline,
            "task_step_name": step["name"],
            "task_step_description": step["description"],
            "task_step_level": step["level"],
            "task_step_question": step.get("question", ""),
            "task_step_question_context": list(step.get("contexts") or []),
            "task_step_question_answer": step.get("answer", ""),
            "ref_task_step_id": "",
        }
        for index, step in enumerate(step_tree.steps(tree))
    ]
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)
