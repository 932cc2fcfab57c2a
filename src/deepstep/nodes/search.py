"""Follow-up search: when the evidence gate finds no passage that covers the research question, or the
critique says the contexts lack something, the step looks again with a query the model writes.

``search_query`` writes the query (one model call) and ``search`` retrieves it (no model call): two nodes,
so each is its own checkpoint. New passages are appended, so citation numbers never change.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from langchain_core.retrievers import BaseRetriever

from deepstep import prompts
from deepstep.citations import merge_contexts
from deepstep.claims import evidence_gate
from deepstep.configuration import Settings
from deepstep.models import call_text
from deepstep.parsing import missing_information, require_usable_text, search_query_text
from deepstep.records import FollowUpSearch
from deepstep.state import StepState


def searches_left(state: StepState, settings: Settings) -> bool:
    return len(state.get("searches", [])) < settings.max_searches


def gate_query(state: StepState) -> str:
    """What the evidence gate compares passages with: the research question, in the corpus's language when it has one."""
    return state.get("search_query") or state["research_question"]


def search_query(state: StepState, settings: Settings) -> dict[str, Any]:
    """Write a new search query for what the step still lacks (one model call)."""
    pending = state.get("pending_expansion")
    reason: Literal["gate", "critique"] = "gate" if pending is None else "critique"  # critique: between critique and refine
    missing = _gate_gap(state) if pending is None else missing_information(pending["critique"]) or pending["critique"]
    searches = state.get("searches", [])
    tried = [state["research_question"], state.get("search_query", ""), *(s["query"] for s in searches)]
    text, usage = call_text(
        settings,
        "search",
        prompts.SEARCH_QUERY.format_messages(
            research_question=state["research_question"],
            missing=missing,
            tried="; ".join(query for query in tried if query),
            language_rule=prompts.language_rule(state.get("search_language") or settings.language),
        ),
    )
    query = search_query_text(require_usable_text("search", text)) or missing
    follow_up: FollowUpSearch = {"reason": reason, "missing": missing, "query": query}
    return {"searches": [*searches, follow_up], "usage": usage}


def _gate_gap(state: StepState) -> str:
    titles = list(dict.fromkeys(state["contexts"][i]["title"] for i in state["evidence"]["closest"][:3]))
    closest = f" The closest passages were: {'; '.join(titles)}." if titles else " No passage was found."
    return f"No retrieved passage covers the research question.{closest}"


def make_search(retriever: BaseRetriever | None) -> Callable[[StepState, Settings], dict[str, Any]]:
    """A search node over ``retriever``, or over the configured corpus when it is ``None``."""

    def search(state: StepState, settings: Settings) -> dict[str, Any]:
        """Retrieve the newest follow-up query's passages and append the new ones to the step's contexts,
        then ask the evidence gate again (no model call)."""
        from deepstep.retrieval import top_contexts  # bm25s and numpy load when a step first retrieves

        *earlier, current = state["searches"]
        merged = merge_contexts(state["contexts"], top_contexts(current["query"], settings, retriever))
        contexts, truncated = prompts.fit_contexts(merged, settings.context_tokens)
        added = len(merged) - len(state["contexts"])
        return {
            "contexts": contexts,
            "truncated_contexts": truncated,
            "evidence": evidence_gate(gate_query(state), contexts),
            "searches": [*earlier, {**current, "new_passages": added}],
        }

    return search
