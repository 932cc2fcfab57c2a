"""Rendering the step tree (pure functions): the seed's Markdown report and storyboard table.

The Markdown follows the text dreamsboard's ``TaskStepMD.format_md`` printed in the seed
notebook, byte for byte: a leading newline, ``# {question} `` (with its trailing space),
two blank lines, then one block per step in tree order, each stripped and followed by a
blank line. deepstep adds what the seed could not show: failed steps, and the passages
the answers cite.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any

import networkx as nx

from deepstep import json_text, step_tree
from deepstep.citations import cited_numbers

if TYPE_CHECKING:
    import pandas as pd

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
    if step.get("status") == "failed":
        return f"(this step failed: {step.get('error') or 'unknown error'})"
    return step.get("answer") or ""


def _step_block(step: dict[str, Any]) -> str:
    anchor = f"{step['name']} [task_id:{step['level']}]({step['id']})"
    depth = step_tree.level_depth(step["level"])
    answer = _answer_text(step)
    if depth == 0:
        parts = [f"### {anchor}", step.get("description") or "", answer]
        return "\n\n".join(part for part in parts if part)
    if depth == 1:
        return f"{anchor}{step.get('description') or ''} {answer}"
    return f"- **- {anchor}**:{answer}"


def cited_passages(tree: nx.DiGraph) -> list[dict[str, Any]]:
    """The passages the final answers cite, in tree order, each with the step's level and the
    number the answer cites it by (answers number their own step's passages ``[1]``, ``[2]``...)."""
    cited = []
    for step in step_tree.steps(tree):
        if step.get("status") == "failed":
            continue
        contexts = step.get("contexts") or []
        for number in cited_numbers(step.get("answer") or ""):
            if 1 <= number <= len(contexts):
                cited.append({**contexts[number - 1], "level": step["level"], "number": number})
    return cited


def _reference_line(passage: dict[str, Any]) -> str:
    title = passage.get("title") or passage.get("paper_title") or passage.get("source") or "untitled"
    source = f" ({passage['source']})" if passage.get("source") else ""
    return f"- [{passage['level']}] [{passage['number']}] {title}{source}, ref_id:{passage.get('ref_id', '')}, chunk_id:{passage.get('chunk_id', '')}"


def markdown_report(tree: nx.DiGraph) -> str:
    """The seed's layout: ``# question``, one block per step in tree order, failed steps, references."""
    steps = step_tree.steps(tree)
    text = f"\n# {step_tree.question_of(tree)} \n\n\n"
    text += "".join(_step_block(step).strip() + "\n\n" for step in steps)
    failed = [s for s in steps if s.get("status") == "failed"]
    if failed:
        lines = [f"- {s['name']} [task_id:{s['level']}]({s['id']}): {s.get('error') or 'unknown error'}" for s in failed]
        text += "## Failed steps\n\n" + "\n".join(lines) + "\n\n"
    references = cited_passages(tree)
    if references:
        text += "# References\n\n" + "\n".join(_reference_line(p) for p in references) + "\n"
    return _inert_html(text)


def _inert_html(markdown: str) -> str:
    """Answers, titles and questions are data: ``<`` that could open an HTML tag or comment becomes
    ``&lt;``, so ``<script>`` from a corpus or a model shows as text in a Markdown viewer and never
    runs. ``a < b`` is left as it is; the layout itself has no HTML."""
    return _TAG_START.sub("&lt;", markdown)


_TAG_START = re.compile(r"<(?=[A-Za-z/!?])")


def storyboard_table(tree: nx.DiGraph) -> pd.DataFrame:
    """The seed's storyboard table: one row per step in tree order."""
    import pandas as pd  # only the table needs pandas (a third of a second of imports); the report does not

    question, outline = step_tree.question_of(tree), step_tree.outline_of(tree)
    rows = [
        {
            "task_step_id": step["id"],
            "shot_number": index + 1,
            "scene_number": f"story_board{index}",
            "start_task_context": question,
            "aemo_representation_context": outline,
            "task_step_name": step["name"],
            "task_step_description": step.get("description") or "",
            "task_step_level": step["level"],
            "task_step_question": step.get("question") or "",
            "task_step_question_context": [dict(context) for context in step.get("contexts") or []],
            "task_step_question_answer": step.get("answer") or "",
            "ref_task_step_id": (step.get("dreamsboard_fields") or {}).get("ref_task_step_id") or "",
        }
        for index, step in enumerate(step_tree.steps(tree))
    ]
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def storyboard_csv(tree: nx.DiGraph) -> str:
    """The storyboard table as CSV text. List and dict cells (each step's passages) are written as JSON,
    so any CSV reader gets them back with ``json.loads`` (the DataFrame keeps real lists and dicts)."""
    table = storyboard_table(tree)
    as_json = table.map(lambda value: json_text.dumps(value, ensure_ascii=False, default=str) if isinstance(value, list | dict) else value)
    return as_json.to_csv(index=False)


def tree_layout(graph: nx.DiGraph, root: Hashable, *, order: Callable[[Hashable], Any] | None = None) -> dict[Hashable, tuple[float, float]]:
    """Positions for drawing a tree top-down without crossing edges: leaves side by side in
    depth-first order (children sorted by ``order``), each parent centred over its children,
    one row per depth. Nodes not reachable from ``root`` are left out."""
    positions: dict[Hashable, tuple[float, float]] = {}
    next_leaf = 0.0

    def place(node: Hashable, depth: int) -> float:
        nonlocal next_leaf
        children = sorted(graph.successors(node), key=order) if order else list(graph.successors(node))
        children = [child for child in children if child not in positions]
        if not children:
            x = next_leaf
            next_leaf += 1.0
        else:
            xs = [place(child, depth + 1) for child in children]
            x = (xs[0] + xs[-1]) / 2
        positions[node] = (x, -float(depth))
        return x

    place(root, 0)
    return positions
