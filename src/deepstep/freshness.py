"""Which steps of a finished thread a corpus change made out of date (pure: the caller passes the lookups).

A step is out of date when a passage its answer cites changed or vanished, or when its first retrieval
(the step's own query, as ``nodes.retrieve.step_query`` builds it) now finds other passages. Passages
are matched by ``chunk_id``: the document's path hash and the chunk's position in it (``corpus.file_passages``),
not a hash of the text. So an edit shows as "changed" under the same id; a passage that moved (text put
before it in its file) shows as "changed" too, and one past the new end of its file (or in a deleted file)
as "vanished".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import networkx as nx

from deepstep import step_tree
from deepstep.citations import cited_contexts
from deepstep.nodes.retrieve import step_query
from deepstep.prompts import CUT_MARK
from deepstep.records import Context, StaleStep, Step


def checked_steps(tree: nx.DiGraph) -> list[Step]:
    """The finished steps (done, or "insufficient evidence"), in tree order: failed and pending ones are ``resume``'s to finish."""
    return [step for step in step_tree.steps(tree) if step["status"] in step_tree.FINISHED_STATUSES]


def stale_steps(tree: nx.DiGraph, passage_text: Callable[[str], str | None], search: Callable[[str], Sequence[str]]) -> list[StaleStep]:
    """The checked steps that are out of date, in tree order. ``passage_text(chunk_id)`` is the current
    corpus's text of that passage (None when there is none); ``search(query)`` the chunk ids the step's
    first retrieval would find now (its top_k)."""
    stale: list[StaleStep] = []
    for step in checked_steps(tree):
        reasons = changed_citations(step, passage_text) + retrieval_changes(step, search)
        if reasons:
            stale.append({"id": step.get("id", ""), "level": step["level"], "name": step["name"], "reasons": reasons})
    return stale


def changed_citations(step: Step, passage_text: Callable[[str], str | None]) -> list[str]:
    """Why the passages the step's answer cites are no longer what it read: changed or vanished, by citation number."""
    contexts = step["contexts"]
    reasons = []
    for number in cited_contexts(step["answer"], len(contexts)):
        current = passage_text(contexts[number - 1]["chunk_id"])
        if current is None:
            reasons.append(f"cited passage [{number}] vanished")
        elif not same_text(contexts[number - 1]["text"], current):
            reasons.append(f"cited passage [{number}] changed")
    return reasons


def retrieval_changes(step: Step, search: Callable[[str], Sequence[str]]) -> list[str]:
    """How the step's first retrieval differs now: passages it would find that it did not (or, with none new,
    passages it no longer finds). Order is ignored: BM25 scores shift with any corpus change."""
    before = {context["chunk_id"] for context in first_retrieved(step)}
    now = list(dict.fromkeys(search(step_query(step["name"], step["question"], step.get("search_query")))))
    new = sum(1 for chunk_id in now if chunk_id not in before)
    if new:
        return [f"retrieval now returns {new} new passage{'s' if new != 1 else ''}"]
    lost = len(before - set(now))
    return [f"retrieval no longer returns {lost} passage{'s' if lost != 1 else ''}"] if lost else []


def first_retrieved(step: Step) -> list[Context]:
    """The contexts of the step's first retrieval: follow-up searches only append theirs (``citations.merge_contexts``)."""
    appended = sum(search.get("new_passages", 0) for search in step.get("searches", []))
    return step["contexts"][: max(0, len(step["contexts"]) - appended)]


def same_text(stored: str, current: str) -> bool:
    """Whether a step's stored passage is ``current``'s text, or a cut of it: a passage cut to fit the prompt
    budget (``prompts.cap_text``) is stored as cut, and the step read no more of it than that."""
    if stored == current:
        return True
    return stored.endswith(CUT_MARK) and current.startswith(stored[: -len(CUT_MARK)])


__all__ = ["changed_citations", "checked_steps", "first_retrieved", "retrieval_changes", "same_text", "stale_steps"]
