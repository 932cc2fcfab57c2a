"""retrieve: the top ``top_k`` passages for the step's research question."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import RunnableConfig

from deepstep import prompts
from deepstep.checkpoint import postgres_module
from deepstep.configuration import Settings
from deepstep.corpus import default_corpus_dir
from deepstep.state import StepState

# deepstep.retrieval (bm25s, numpy) is imported when a step first retrieves: building the graph
# to draw it or to read a stored thread does not need it.
if TYPE_CHECKING:
    from deepstep.retrieval import BM25Retriever


@functools.lru_cache(maxsize=8)
def _corpus_retriever(corpus: Path, cache_dir: Path, chunk_tokens: int, chunk_overlap: int) -> BM25Retriever:
    from deepstep.retrieval import BM25Retriever

    # Indexing is the slow part; one index per corpus per process serves every step.
    return BM25Retriever.from_directory(corpus, cache_dir=cache_dir, chunk_tokens=chunk_tokens, chunk_overlap=chunk_overlap)


@functools.lru_cache(maxsize=8)
def _postgres_retriever(database_url: str, corpus: Path, chunk_tokens: int, chunk_overlap: int, embedding: Any) -> BaseRetriever:
    # Loads the corpus (and its embeddings) into the database once per content (a no-op when another worker did).
    return postgres_module().PostgresRetriever.from_directory(
        database_url, corpus, chunk_tokens=chunk_tokens, chunk_overlap=chunk_overlap, embedding=embedding
    )


def corpus_retriever(settings: Settings) -> BaseRetriever:
    """The retriever over the configured corpus (default: the fetched scikit-learn user guide, else the
    bundled demo corpus): BM25, or Postgres full-text search when ``settings.retriever`` resolves to postgres."""
    corpus = (settings.corpus or default_corpus_dir(settings.home)).resolve()
    if settings.uses_postgres_retriever and settings.database_url is not None:
        embedding = postgres_module().embedding_model_for(settings)
        retriever = _postgres_retriever(settings.database_url.get_secret_value(), corpus, settings.chunk_tokens, settings.chunk_overlap, embedding)
    else:
        retriever = _corpus_retriever(corpus, settings.index_dir.resolve(), settings.chunk_tokens, settings.chunk_overlap)
    # The cached retriever is shared; each caller gets a cheap copy with its own number of hits.
    return retriever.model_copy(update={"k": settings.top_k})


def make_retrieve(retriever: BaseRetriever | None) -> Callable[[StepState, RunnableConfig], dict[str, Any]]:
    """A retrieve node over ``retriever``, or over the configured corpus when it is ``None``."""

    def retrieve(state: StepState, config: RunnableConfig) -> dict[str, Any]:
        from deepstep.retrieval import BM25Retriever, contexts_from_documents

        settings = Settings.from_config(config)
        source = retriever or corpus_retriever(settings)
        if isinstance(retriever, BM25Retriever):  # a caller's own BM25 index: corpus_retriever already applies top_k
            source = retriever.model_copy(update={"k": settings.top_k})
        query = f"{state['step']['name']} {state['research_question']}"
        documents = source.invoke(query, config={"callbacks": config.get("callbacks")})
        contexts, truncated = prompts.fit_contexts(contexts_from_documents(documents[: settings.top_k]), settings.context_tokens)
        return {"contexts": contexts, "truncated_contexts": truncated}

    return retrieve
