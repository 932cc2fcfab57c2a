"""retrieve: the top ``top_k`` passages for the step's research question."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import RunnableConfig

from deepstep import prompts
from deepstep.configuration import Settings
from deepstep.state import StepState


def make_retrieve(retriever: BaseRetriever | None) -> Callable[[StepState, RunnableConfig], dict[str, Any]]:
    """A retrieve node over ``retriever``, or over the configured corpus when it is ``None``."""

    def retrieve(state: StepState, config: RunnableConfig) -> dict[str, Any]:
        # deepstep.retrieval (bm25s, numpy) is imported when a step first retrieves: building the graph
        # to draw it or to read a stored thread does not need it.
        from deepstep.retrieval import top_contexts

        settings = Settings.from_config(config)
        query = f"{state['step']['name']} {state['research_question']}"
        found = top_contexts(query, settings, retriever, callbacks=config.get("callbacks"))
        contexts, truncated = prompts.fit_contexts(found, settings.context_tokens)
        return {"contexts": contexts, "truncated_contexts": truncated}

    return retrieve
