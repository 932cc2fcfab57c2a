"""LangChain retrieval over a corpus folder: ``BM25Retriever`` wraps a ``bm25_index.BM25Index``
(built once, cached on disk by content) and returns passages as Documents.

This is the one place that picks a step's retriever (the caller's own, else BM25 or Postgres over
the configured corpus: ``corpus_retriever``) and applies ``top_k`` to it (``top_contexts``)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, SecretStr

from deepstep.bm25_index import BM25Index, passage_context, tokenize
from deepstep.corpus import DEFAULT_CHUNK_OVERLAP, DEFAULT_CHUNK_TOKENS, Passage, demo_corpus_dir, load_passages
from deepstep.corpus_fetch import default_corpus_dir
from deepstep.languages import cross_language_search

if TYPE_CHECKING:
    from deepstep.configuration import Settings
    from deepstep.records import Context


class BM25Retriever(BaseRetriever):
    """Lexical retriever returning up to ``k`` passages as Documents with their score in the metadata."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    index: BM25Index
    k: int = 4

    @property
    def passages(self) -> Sequence[Passage]:
        return self.index.passages

    @property
    def skipped_files(self) -> int:
        return self.index.skipped_files

    @property
    def from_cache(self) -> bool:
        """True when the index was read from the on-disk cache rather than built."""
        return self.index.from_cache

    @classmethod
    def from_passages(cls, passages: list[Passage], *, k: int = 4, skipped_files: int = 0) -> BM25Retriever:
        return cls(index=BM25Index.from_passages(passages, skipped_files=skipped_files), k=k)

    @classmethod
    def from_directory(
        cls,
        corpus_dir: str | Path,
        *,
        k: int = 4,
        cache_dir: str | Path | None = None,
        chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
        chunk_overlap: int = DEFAULT_CHUNK_OVERLAP,
    ) -> BM25Retriever:
        """Index ``corpus_dir``, reusing an index saved under ``cache_dir`` for the same content and chunking
        (the cache key hashes every file, so any change to the corpus rebuilds)."""
        index = BM25Index.from_directory(corpus_dir, cache_dir=cache_dir, chunk_tokens=chunk_tokens, chunk_overlap=chunk_overlap)
        return cls(index=index, k=k)

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        return [passage_document(passage, score) for passage, score in self.index.search(query, self.k)]


def passage_document(passage: Passage, score: float) -> Document:
    """A retrieved passage as every deepstep retriever returns it: the text, with ref_id, chunk_id,
    title, source and score in the metadata."""
    metadata = {"ref_id": passage.ref_id, "chunk_id": passage.chunk_id, "title": passage.title, "source": passage.source, "score": score}
    located = {"page": passage.page, "page_end": passage.page_end, "sheet": passage.sheet}
    return Document(page_content=passage.text, metadata=metadata | {key: value for key, value in located.items() if value is not None})


def contexts_from_documents(docs: list[Document]) -> list[Context]:
    """Context records for the graph state, one per retrieved document (see ``bm25_index.passage_context``)."""
    return [
        passage_context(
            Passage(
                ref_id=doc.metadata.get("ref_id", ""),
                chunk_id=doc.metadata.get("chunk_id", ""),
                title=doc.metadata.get("title", ""),
                source=doc.metadata.get("source", ""),
                text=doc.page_content,
                page=doc.metadata.get("page"),
                page_end=doc.metadata.get("page_end"),
                sheet=doc.metadata.get("sheet"),
            ),
            doc.metadata.get("score", 0.0),
        )
        for doc in docs
    ]


@functools.lru_cache(maxsize=8)
def _corpus_retriever(corpus: Path, cache_dir: Path, chunk_tokens: int, chunk_overlap: int) -> BM25Retriever:
    # Indexing is the slow part; one index per corpus per process serves every step.
    return BM25Retriever.from_directory(corpus, cache_dir=cache_dir, chunk_tokens=chunk_tokens, chunk_overlap=chunk_overlap)


@functools.lru_cache(maxsize=8)
def _postgres_retriever(
    database_url: SecretStr, corpus: Path, chunk_tokens: int, chunk_overlap: int, embedding: Any, cache_dir: Path
) -> BaseRetriever:
    from deepstep.postgres_retrieval import PostgresRetriever  # psycopg is optional: only a Postgres retriever needs it

    # Loads the corpus (and its embeddings) into the database once per content (a no-op when another worker did).
    # The cache is keyed by the SecretStr, which compares by the URL but never shows its password.
    url = database_url.get_secret_value()
    return PostgresRetriever.from_directory(
        url, corpus, chunk_tokens=chunk_tokens, chunk_overlap=chunk_overlap, embedding=embedding, cache_dir=cache_dir
    )


def corpus_retriever(settings: Settings) -> BaseRetriever:
    """The retriever over the configured corpus (default: the fetched scikit-learn user guide, else the
    bundled demo corpus): BM25, or Postgres full-text search when ``settings.retriever`` resolves to postgres.
    It returns ``settings.top_k`` passages."""
    corpus = (settings.corpus or default_corpus_dir(settings.home)).resolve()
    if settings.uses_postgres_retriever and settings.database_url is not None:
        from deepstep.postgres_retrieval import embedding_model_for

        embedding = embedding_model_for(settings)
        retriever = _postgres_retriever(
            settings.database_url, corpus, settings.chunk_tokens, settings.chunk_overlap, embedding, settings.index_dir.resolve()
        )
    else:
        retriever = _corpus_retriever(corpus, settings.index_dir.resolve(), settings.chunk_tokens, settings.chunk_overlap)
    # The cached retriever is shared; each caller gets a cheap copy with its own number of hits.
    return retriever.model_copy(update={"k": settings.top_k})


def reread_corpus_retriever(settings: Settings) -> BaseRetriever:
    """``corpus_retriever`` over the corpus as its files are now. This process's indexes are cached by folder,
    not content, so they are dropped first; the on-disk cache (keyed by content) still spares a rebuild
    when nothing changed. The steps a run starts afterwards search the same fresh index."""
    if settings.uses_postgres_retriever and settings.database_url is not None:
        _postgres_retriever.cache_clear()
    else:
        _corpus_retriever.cache_clear()
    return corpus_retriever(settings)


def passage_texts(settings: Settings, retriever: BaseRetriever) -> dict[str, str]:
    """Every passage's text by chunk id: of ``retriever`` when it is a BM25 index, else of the configured
    corpus folder read with the same chunking (what a Postgres retriever loaded)."""
    if isinstance(retriever, BM25Retriever):
        passages: Sequence[Passage] = retriever.passages
    else:
        corpus = settings.corpus or default_corpus_dir(settings.home)
        passages, _ = load_passages(corpus, chunk_tokens=settings.chunk_tokens, chunk_overlap=settings.chunk_overlap)
    return {passage.chunk_id: passage.text for passage in passages}


def search_language(question: str, settings: Settings, retriever: BaseRetriever | None = None) -> str | None:
    """The language to also write a step's queries in: ``settings.search_language`` when set ("off": none);
    else the corpus index's detected language when ``question`` is written in another script; else None
    (one language). Only a BM25 index is detected; with another retriever, set ``search_language``."""
    if settings.search_language:
        return None if settings.search_language.lower() == "off" else settings.search_language
    source = corpus_retriever(settings) if retriever is None else retriever
    if not isinstance(source, BM25Retriever):
        return None
    return cross_language_search(question, source.index.language)


def top_contexts(query: str, settings: Settings, retriever: BaseRetriever | None = None) -> list[Context]:
    """The ``settings.top_k`` best passages for ``query`` from ``retriever`` (a caller's own), or from
    the configured corpus when it is ``None``, as context records for the graph state."""
    if retriever is None:
        source = corpus_retriever(settings)
    elif isinstance(retriever, BM25Retriever):
        source = retriever.model_copy(update={"k": settings.top_k})  # a caller's own BM25 index searches for top_k hits
    else:
        source = retriever  # any other retriever returns its own number of hits, cut to top_k below
    documents = source.invoke(query)  # inside a graph node, LangGraph hands the run's callbacks on to it
    return contexts_from_documents(documents[: settings.top_k])


__all__ = [
    "BM25Retriever",
    "Passage",
    "contexts_from_documents",
    "corpus_retriever",
    "passage_texts",
    "reread_corpus_retriever",
    "search_language",
    "top_contexts",
    "passage_document",
    "demo_corpus_dir",
    "load_passages",
    "tokenize",
]
