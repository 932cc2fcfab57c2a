"""Rendering the step tree (pure functions): the seed's Markdown report and storyboard table.

The Markdown follows the text dreamsboard's ``TaskStepMD.format_md`` printed in the seed
notebook, byte for byte: a leading newline, ``# {question} `` (with its trailing space),
two blank lines, then one block per step in tree order, each stripped and followed by a
blank line. deepstep adds what the seed could not show: failed steps, and the passages
the answers cite.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Hashable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import networkx as nx

from deepstep import dreamsboard_fields as dreamsboard
from deepstep import json_text, step_tree
from deepstep.citations import cited_contexts, renumber_citations
from deepstep.claims import UNSUPPORTED_MARK, count_verdict, mark_unsupported
from deepstep.records import Claim, Context, Step

if TYPE_CHECKING:
    import pandas as pd

    from deepstep.configuration import ReportLayout

# The seed's columns, then how far each step can be trusted.
TABLE_COLUMNS = [*dreamsboard.TABLE_COLUMNS, "confidence", "unsupported_claims"]


def _answer_text(step: Step) -> str:
    if step.get("status") == "failed":
        return f"(this step failed: {step.get('error') or 'unknown error'})"
    return step.get("answer") or ""


def _step_block(step: Step) -> str:
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
        for number in cited_contexts(step.get("answer") or "", len(contexts)):
            cited.append({**contexts[number - 1], "level": step["level"], "number": number})
    return cited


def _reference_line(passage: dict[str, Any]) -> str:
    return (
        f"- [{passage['level']}] [{passage['number']}] {_passage_title(passage)}{_passage_source(passage)}, "
        f"ref_id:{passage.get('ref_id', '')}, chunk_id:{passage.get('chunk_id', '')}"
    )


def markdown_report(tree: nx.DiGraph) -> str:
    """The seed's layout: ``# question``, one block per step in tree order, failed steps, references."""
    steps = step_tree.steps(tree)
    text = f"\n# {step_tree.question_of(tree)} \n\n\n"
    text += "".join(_step_block(step).strip() + "\n\n" for step in steps)
    text += _failed_steps_section(steps)
    references = cited_passages(tree)
    if references:
        text += "# References\n\n" + "\n".join(_reference_line(p) for p in references) + "\n"
    return _inert_html(text)


LEGEND = f"{UNSUPPORTED_MARK} marks a sentence its cited passages do not back."
NOT_COVERED = "The corpus does not cover this."
DROPPED = "their cited passages did not back them (unsupported_claims = drop)."


class ReportReferences(NamedTuple):
    """The answer-first report's one reference list: each passage the answers cite, once, numbered
    in order of first citation; and per step, its own numbers ([1] = its first passage) mapped to the list's."""

    passages: list[Context]
    numbers: dict[str, dict[int, int]]


def _passage_key(passage: Context) -> tuple[str, ...]:
    return (passage["chunk_id"],) if passage.get("chunk_id") else (passage.get("ref_id", ""), passage.get("text", ""))


def report_references(tree: nx.DiGraph) -> ReportReferences:
    """The passages every answered step cites, de-duplicated by chunk id, in tree order."""
    passages: list[Context] = []
    numbered: dict[tuple[str, ...], int] = {}
    numbers: dict[str, dict[int, int]] = {}
    for step in step_tree.steps(tree):
        if step.get("status") != "done":
            continue
        contexts = step.get("contexts") or []
        own: dict[int, int] = {}
        for number in cited_contexts(step.get("answer") or "", len(contexts)):
            key = _passage_key(contexts[number - 1])
            if key not in numbered:
                passages.append(contexts[number - 1])
                numbered[key] = len(passages)
            own[number] = numbered[key]
        numbers[step["id"]] = own
    return ReportReferences(passages, numbers)


def _confidence_line(step: Step) -> str:
    confidence = step.get("confidence")
    if not confidence:
        return ""
    inputs = [f"Q {confidence['best_q']:g}" if confidence["best_q"] is not None else "no score"]
    claims = step.get("claims") or []
    if claims:
        supported = count_verdict(claims, "supported")
        inputs.append(f"{supported} of {len(claims)} claim{'s' * (len(claims) != 1)} supported")
    inputs.append(f"{confidence['cited_passages']} passage{'s' * (confidence['cited_passages'] != 1)} cited")
    return f"_Confidence: {confidence['level']} ({', '.join(inputs)})._" + _review_marks(step)


def _review_marks(step: Step) -> str:
    """What a reviewer did to the step's answer (``deepstep step``): wrote it, and/or approved it."""
    marks = ["answer written by the reviewer"] * (step.get("answer_source") == "reviewer") + ["approved by the reviewer"] * bool(step.get("approved"))
    return f" _{'; '.join(marks).capitalize()}._" if marks else ""


def _closest_line(step: Step) -> str:
    contexts = step.get("contexts") or []
    evidence = step.get("evidence")
    order = evidence["closest"] if evidence is not None else range(len(contexts))
    closest = [contexts[i] for i in order if i < len(contexts)][:3]
    if not closest:
        return NOT_COVERED
    listed = "; ".join(f"{c.get('title') or c.get('source') or 'untitled'}, chunk_id:{c.get('chunk_id', '')}" for c in closest)
    return f"{NOT_COVERED} Closest passages: {listed}."


def _searches_line(step: Step) -> str:
    """The step's follow-up searches: each query and how many passages it added."""
    searches = step.get("searches") or []
    if not searches:
        return ""
    listed = "; ".join(f'"{s["query"]}" (+{s.get("new_passages", 0)} passage{"s" * (s.get("new_passages", 0) != 1)})' for s in searches)
    return f"_Searched again: {listed}._"


def _answer_first_step(step: Step, numbers: dict[int, int]) -> str:
    heading = "#" * min(2 + step_tree.level_depth(step["level"]), 6)
    parts = [f"{heading} {step['name']} [task_id:{step['level']}]({step['id']})", _confidence_line(step), step.get("description") or ""]
    if step.get("status") == "failed":
        parts.append(f"(this step failed: {step.get('error') or 'unknown error'})")
    elif step.get("status") == "insufficient_evidence":
        parts.append(_closest_line(step))
    else:
        parts.append(renumber_citations(mark_unsupported(step.get("answer") or "", step.get("claims") or []), numbers)[0])
    parts.append(_searches_line(step))
    return "\n\n".join(part for part in parts if part)


def _summary_line(steps: list[Step], unsupported: int, dropped: int) -> str:
    counts = Counter(step.get("status") for step in steps)
    parts = [f"{counts['done']} answered"]
    if counts["insufficient_evidence"]:
        parts.append(f"{counts['insufficient_evidence']} not covered by the corpus")
    if counts["failed"]:
        parts.append(f"{counts['failed']} failed")
    line = f"_{len(steps)} step{'s' * (len(steps) != 1)}: {', '.join(parts)}._"
    if unsupported:
        line += f" _{unsupported} claim{'s' * (unsupported != 1)} marked: {LEGEND}_"
    if dropped:
        line += f" _{dropped} claim{'s' * (dropped != 1)} dropped: {DROPPED}_"
    return line


def report(tree: nx.DiGraph, layout: ReportLayout) -> str:
    """The Markdown report in ``layout``: ``answer_first_report`` or the seed's ``markdown_report``."""
    return answer_first_report(tree) if layout == "answer_first" else markdown_report(tree)


def answer_first_report(tree: nx.DiGraph) -> str:
    """The report opening with an answer to the question: a summary line (with the claims marked or dropped), the low-confidence steps,
    the synthesized answer (the root's ``answer``, already in the report's numbering), every step
    with its confidence, its answer renumbered into one reference list, and that list."""
    steps = step_tree.steps(tree)
    references = report_references(tree)
    root = tree.nodes[step_tree.ROOT_ID]
    root_claims: list[Claim] = root.get("claims") or []
    answered_claims = [root_claims, *(s.get("claims") or [] for s in steps if s.get("status") == "done")]
    unsupported = sum(count_verdict(claims, "unsupported") for claims in answered_claims)
    dropped = root.get("dropped_claims", 0) + sum(s.get("dropped_claims", 0) for s in steps if s.get("status") == "done")
    text = f"# {step_tree.question_of(tree)}\n\n{_summary_line(steps, unsupported, dropped)}\n\n"
    low = [s for s in steps if (confidence := s.get("confidence")) and confidence["level"] == "low"]
    if low:
        text += "**Low confidence:** " + "; ".join(f"{s['name']} [task_id:{s['level']}]({s['id']})" for s in low) + "\n\n"
    if root.get("answer"):
        text += f"## Answer\n\n{mark_unsupported(root['answer'], root_claims).strip()}\n\n"
    text += "".join(_answer_first_step(step, references.numbers.get(step["id"], {})).strip() + "\n\n" for step in steps)
    text += _failed_steps_section(steps)
    if references.passages:
        lines = [f"- [{number}] {_passage_title(p)}{_passage_source(p)}, ref_id:{p.get('ref_id', '')}, chunk_id:{p.get('chunk_id', '')}"
                 for number, p in enumerate(references.passages, start=1)]  # fmt: skip
        text += "# References\n\n" + "\n".join(lines) + "\n"
    return _inert_html(text)


def _passage_title(passage: Mapping[str, Any]) -> str:
    return passage.get("title") or passage.get(dreamsboard.CONTEXT_TITLE) or passage.get("source") or "untitled"


def _passage_source(passage: Mapping[str, Any]) -> str:
    """`` (R-intro.pdf, p. 23)``: the document, and where in it for a paged one (pages, or a workbook's sheet)."""
    if not passage.get("source"):
        return ""
    return f" ({passage['source']}{passage_location(passage)})"


def passage_location(passage: Mapping[str, Any]) -> str:
    """``, p. 23``, ``, pp. 23-24`` or ``, sheet Prices``; "" for a passage of a document without pages."""
    if passage.get("page") is not None:
        end = passage.get("page_end")
        return f", pp. {passage['page']}-{end}" if end is not None and end != passage["page"] else f", p. {passage['page']}"
    return f", sheet {passage['sheet']}" if passage.get("sheet") else ""


def _failed_steps_section(steps: list[Step]) -> str:
    """Both layouts end with the failed steps and why (``deepstep resume`` retries them)."""
    failed = [s for s in steps if s.get("status") == "failed"]
    if not failed:
        return ""
    lines = [f"- {s['name']} [task_id:{s['level']}]({s['id']}): {s.get('error') or 'unknown error'}" for s in failed]
    return "## Failed steps\n\n" + "\n".join(lines) + "\n\n"


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


def _table_row(step: Step, index: int, run_fields: dict[str, str]) -> dict[str, Any]:
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
        "confidence": confidence["level"] if (confidence := step.get("confidence")) else "",
        "unsupported_claims": count_verdict(step.get("claims") or [], "unsupported"),
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


def report_diff(before: str, after: str, before_name: str, after_name: str) -> str:
    """A unified diff of two reports, line by line, as a Markdown ``diff`` block ("" when they are equal)."""
    import difflib

    lines = list(difflib.unified_diff(before.splitlines(), after.splitlines(), before_name, after_name, lineterm=""))
    return "```diff\n" + "\n".join(lines) + "\n```\n" if lines else ""
