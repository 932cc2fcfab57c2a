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

from deepstep import dreamsboard_fields as dreamsboard
from deepstep import json_text, step_tree
from deepstep.citations import cited_numbers

if TYPE_CHECKING:
    import pandas as pd

TABLE_COLUMNS = dreamsboard.TABLE_COLUMNS


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
    title = passage.get("title") or passage.get(dreamsboard.CONTEXT_TITLE) or passage.get("source") or "untitled"
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

    run_fields = dreamsboard.renamed({"question": step_tree.question_of(tree), "outline": step_tree.outline_of(tree)}, dreamsboard.RUN_FIELDS)
    rows = [_table_row(step, index, run_fields) for index, step in enumerate(step_tree.steps(tree))]
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def _table_row(step: dict[str, Any], index: int, run_fields: dict[str, str]) -> dict[str, Any]:
    # Unlike the store, the table shows every step's question, passages and answer, whatever its status.
    step_fields = {
        "name": step["name"],
        "description": step.get("description") or "",
        "level": step["level"],
        "question": step.get("question") or "",
        "contexts": [dict(context) for context in step.get("contexts") or []],
        "answer": step.get("answer") or "",
    }
    return {
        dreamsboard.TABLE_ID: step["id"],
        dreamsboard.SHOT_NUMBER: index + 1,
        dreamsboard.SCENE_NUMBER: f"story_board{index}",
        **run_fields,
        **dreamsboard.renamed(step_fields, dreamsboard.STEP_FIELDS),
        dreamsboard.REF_STEP_ID: (step.get(dreamsboard.EXTRA_FIELDS) or {}).get(dreamsboard.REF_STEP_ID) or "",
    }


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
