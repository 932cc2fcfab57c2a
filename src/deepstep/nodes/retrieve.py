"""retrieve: the top ``top_k`` passages for the step's research question."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import RunnableConfig

from deepstep import prompts
from deepstep.configuration import Settings
from deepstep.retrieval import BM25Retriever, contexts_from_documents, demo_corpus_dir
from deepstep.state import StepState


@functools.lru_cache(maxsize=8)
def _corpus_retriever(corpus: Path, cache_dir: Path) -> BM25Retriever:
    # Indexing is the slow part; one index per corpus per process serves every step.
    return BM25Retriever.from_directory(corpus, cache_dir=cache_dir)


def corpus_retriever(settings: Settings) -> BaseRetriever:
    """The BM25 retriever over the configured corpus (the bundled demo corpus by default)."""
    corpus = (settings.corpus or demo_corpus_dir()).resolve()
    return _corpus_retriever(corpus, settings.index_dir.resolve())


def make_retrieve(retriever: BaseRetriever | None) -> Callable[[StepState, RunnableConfig], dict[str, Any]]:
    """A retrieve node over ``retriever``, or over the configured corpus when it is ``None``."""

    def retrieve(state: StepState, config: RunnableConfig) -> dict[str, Any]:
        settings = Settings.from_config(config)
        source = retriever or corpus_retriever(settings)
        if isinstance(source, BM25Retriever):
            source = source.model_copy(update={"k": settings.top_k})
        query = f"{state['step']['name']} {state['research_question']}"
        documents = source.invoke(query, config={"callbacks": config.get("callbacks")})
        contexts, truncated = prompts.fit_contexts(contexts_from_documents(documents[: settings.top_k]), settings.context_tokens)
        return {"contexts": contexts, "truncated_contexts": truncated}

    return retrieve
