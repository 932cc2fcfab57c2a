"""retrieve: the top ``top_k`` passages for the step's research question, and whether they cover it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from langchain_core.retrievers import BaseRetriever
from langgraph.runtime import Runtime

from deepstep import prompts
from deepstep.claims import evidence_gate
from deepstep.configuration import Settings
from deepstep.nodes.run_settings import settings_of
from deepstep.nodes.search import gate_query, searches_left
from deepstep.state import StepState


def make_retrieve(retriever: BaseRetriever | None) -> Callable[[StepState, Settings], dict[str, Any]]:
    """A retrieve node over ``retriever``, or over the configured corpus when it is ``None``."""

    def retrieve(state: StepState, settings: Settings) -> dict[str, Any]:
        """Retrieve the top ``top_k`` passages for the step's research question, cut to the prompt budget, and
        ask the evidence gate whether any of them covers the question (no model call)."""
        # deepstep.retrieval (bm25s, numpy) is imported when a step first retrieves: building the graph
        # to draw it or to read a stored thread does not need it.
        from deepstep.retrieval import top_contexts

        found = top_contexts(step_query(state["step"]["name"], state["research_question"], state.get("search_query")), settings, retriever)
        contexts, truncated = prompts.fit_contexts(found, settings.context_tokens)
        return {"contexts": contexts, "truncated_contexts": truncated, "evidence": evidence_gate(gate_query(state), contexts)}

    return retrieve


def step_query(step_name: str, research_question: str, search_query: str | None) -> str:
    """What a step's first retrieval searches for: its name, its research question and, when the corpus is in
    another language, the same question as a query in that language (benchmarks.cross_language scores this)."""
    return " ".join(part for part in (step_name, research_question, search_query) if part)


def after_retrieve(state: StepState, runtime: Runtime[Any]) -> Literal["answer", "search_query", "finish"]:
    """Answer only when the evidence gate found a passage that covers the research question; else search
    again while ``max_searches`` allows. A step the corpus is silent on ends as ``insufficient_evidence``
    without an answer, refine or evaluate call."""
    if state.get("error"):
        return "finish"
    if state["evidence"]["answerable"]:
        return "answer"
    return "search_query" if searches_left(state, settings_of(runtime)) else "finish"


def after_search(state: StepState, runtime: Runtime[Any]) -> Literal["answer", "refine", "search_query", "finish"]:
    """After a follow-up search: back to the refinement the critique asked it for, or on as after the first retrieval."""
    if not state.get("error") and state.get("pending_expansion") is not None:
        return "refine"
    return after_retrieve(state, runtime)
