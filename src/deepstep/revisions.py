"""A reviewer's changes to a finished run's step tree (pure): rerun a step, rewrite its question or its answer,
approve it, add a step or remove a subtree.

``revise`` returns a new tree; the run graph then researches exactly the steps left ``pending`` (the fan-out
sends only those) and rebuilds the report, so every other step is kept without a model call:

- ``rerun`` / ``reject``: the step is researched again (question, retrieve, answer, refine) with the ``note``
  shown in its prompts; a research question a reviewer wrote earlier is dropped, so the model writes one again;
- ``refresh``: researched again as it stands, after its corpus changed (``deepstep refresh``): a reviewer's note
  and research question are kept, an approval is not (the answer will rest on other passages);
- ``edit_question``: researched again from the reviewer's research question (no question call);
- ``edit_answer``: the reviewer's answer is kept as the step's answer, its citations of passages the step does
  not have removed and its claims checked against the step's passages (no model call; with ``verify = model``
  the run's ``revise`` node asks the verifier once);
- ``approve``: marks the answer as approved (the report says so); a later rerun clears the mark;
- ``add``: a new step under ``step`` ("" for the top level) with the next free level, researched next;
- ``remove``: the step and every step under it leave the tree (levels of the others are not renumbered: the
  report's ``task_id`` links and exported stores stay valid).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from deepstep import step_tree
from deepstep.citations import cited_contexts, remove_invalid_citations
from deepstep.claims import check_answer, count_verdict
from deepstep.confidence import step_confidence
from deepstep.errors import InputError
from deepstep.records import Claim, StepAction
from deepstep.tree_encoding import StepTree

ACTIONS = ("rerun", "reject", "refresh", "edit_question", "edit_answer", "approve", "add", "remove")
MAX_TEXT_CHARS = 20_000  # a reviewer's answer or question; longer is a pasted document, not an answer


@dataclass
class Revision:
    """The revised tree, what was done (one line per action) and the steps whose answer a reviewer wrote."""

    tree: StepTree
    done: list[str] = field(default_factory=list)
    edited_answers: list[str] = field(default_factory=list)


def revise(tree: nx.DiGraph, actions: Sequence[Any], *, new_id: Callable[[], str] = lambda: str(uuid.uuid4())) -> Revision:
    """Apply ``actions`` in order to a copy of ``tree``; an unusable action is an ``InputError`` naming it."""
    if not isinstance(actions, (list, tuple)) or not actions:
        raise InputError('actions must be a non-empty list, e.g. [{"action": "rerun", "step": "0>1", "note": "..."}]')
    revision = Revision(tree=StepTree(tree))
    for number, raw in enumerate(actions, start=1):
        where = f"action {number}: " if len(actions) > 1 else ""  # a lone action needs no number
        action = _checked(raw, where)
        _apply(revision, action, where, new_id)
    return revision


def _checked(raw: Any, where: str) -> StepAction:
    if not isinstance(raw, dict):
        raise InputError(f"{where}an action is a {type(raw).__name__}: each must be an object with action and step")
    if raw.get("action") not in ACTIONS:
        raise InputError(f"{where}{raw.get('action')!r} is not one of {', '.join(ACTIONS)}")
    for key in ("step", "note", "text", "name", "description"):
        if key in raw and not isinstance(raw[key], str):
            raise InputError(f"{where}{key} must be text, not {type(raw[key]).__name__}")
        if len(raw.get(key) or "") > MAX_TEXT_CHARS:
            raise InputError(f"{where}{key} is {len(raw[key])} characters long; shorten it to at most {MAX_TEXT_CHARS}")
    if "step" not in raw:
        raise InputError(f"{where}say which step (its id or level, e.g. '0>1'; for add, the parent or '')")
    return raw  # type: ignore[return-value]  # checked field by field above


def _apply(revision: Revision, action: StepAction, where: str, new_id: Callable[[], str]) -> None:
    tree, kind, note = revision.tree, action["action"], (action.get("note") or "").strip()
    if kind == "add":
        _add(revision, action, where, new_id)
        return
    step_id = _step(tree, action["step"], where)
    node, level = tree.nodes[step_id], tree.nodes[step_id]["level"]
    if kind in ("rerun", "reject"):
        _set(node, status="pending", review_note=note, fixed_question="", approved=False)
        revision.done.append(f"{kind} {level}")
    elif kind == "refresh":
        _set(node, status="pending", approved=False)
        revision.done.append(f"refresh {level}")
    elif kind == "edit_question":
        question = _text(action, where, "the research question")
        _set(node, status="pending", review_note=note, fixed_question=question, approved=False)
        revision.done.append(f"edit question {level}")
    elif kind == "edit_answer":
        _set(node, **reviewed_answer(node, _text(action, where, "the answer"), step_tree.question_of(tree)))
        revision.done.append(f"edit answer {level}")
        revision.edited_answers.append(step_id)
    elif kind == "approve":
        if node["status"] != "done":
            raise InputError(f"{where}step {level} has no answer to approve ({node['status']}); rerun it or edit its answer")
        _set(node, approved=True)
        revision.done.append(f"approve {level}")
    else:  # remove
        doomed = [step_id, *nx.descendants(tree, step_id)]
        if len(doomed) == len(step_tree.step_ids(tree)):
            raise InputError(f"{where}removing step {level} would leave no step; rerun or edit it instead")
        tree.remove_nodes_from(doomed)
        revision.done.append(f"remove {level}" + (f" (+{len(doomed) - 1} under it)" if len(doomed) > 1 else ""))


def reviewed_answer(node: dict[str, Any], text: str, question: str) -> dict[str, Any]:
    """A step's fields once a reviewer wrote its answer: citations of passages the step lacks removed, the
    claims checked against its passages (as the model's answers are), and its confidence from what is known
    of a human answer (no critic's score; the retrieval strength of the step's last research)."""
    contexts = node.get("contexts") or []
    answer, removed = remove_invalid_citations(text, len(contexts))
    claims = check_answer(answer, contexts, f"{question}\n{node.get('question', '')}")
    return {
        "status": "done",
        "error": "",
        "answer": answer,
        "dropped_claims": 0,
        "removed_citations": removed,
        "answer_source": "reviewer",
        "approved": False,
        **judged_answer({**node, "answer": answer}, claims),
    }


def judged_answer(node: dict[str, Any], claims: list[Claim]) -> dict[str, Any]:
    """A reviewer's answer's ``claims`` and the confidence they give it (no critic's score; the retrieval strength
    of the step's last research): again once the model verifier judged them."""
    supported = count_verdict(claims, "supported") / len(claims) if claims else None
    strength = (node.get("confidence") or {}).get("retrieval_strength", 0.0)
    cited = len(cited_contexts(node.get("answer") or "", len(node.get("contexts") or [])))
    return {"claims": claims, "confidence": step_confidence(None, supported, cited, strength)}


def _add(revision: Revision, action: StepAction, where: str, new_id: Callable[[], str]) -> None:
    tree = revision.tree
    parent_id = step_tree.ROOT_ID if not action["step"].strip() else _step(tree, action["step"], where)
    name = (action.get("name") or "").strip()
    if not name:
        raise InputError(f"{where}the new step needs a name")
    parent_level = None if parent_id == step_tree.ROOT_ID else tree.nodes[parent_id]["level"]
    taken = [step_tree.level_parts(tree.nodes[child]["level"])[-1] for child in tree.successors(parent_id)]
    index = max(taken, default=-1 if parent_level is None else 0) + 1
    level = str(index) if parent_level is None else f"{parent_level}>{index}"
    step_id = new_id()
    fields = {**step_tree.STEP_DEFAULTS, "name": name[:200], "description": (action.get("description") or "").strip(), "level": level}
    tree.add_node(step_id, **fields)
    tree.add_edge(parent_id, step_id)
    revision.done.append(f"add {level}")


def _step(tree: nx.DiGraph, step: str, where: str) -> str:
    found = step_tree.find_step(tree, step)
    if found is None:
        levels = ", ".join(tree.nodes[n]["level"] for n in step_tree.step_ids(tree))
        raise InputError(f"{where}there is no step {step!r}: give a step id or one of the levels {levels}")
    return found


def _text(action: StepAction, where: str, what: str) -> str:
    text = (action.get("text") or "").strip()
    if not text:
        raise InputError(f"{where}{what} is empty; pass the text")
    return text


def _set(node: dict[str, Any], **fields: Any) -> None:
    # ``node`` belongs to the revision's own copy of the tree (StepTree(tree) copies each node's attributes).
    node.update(fields)
