"""LangChain retrieval over a corpus folder: ``BM25Retriever`` wraps a ``bm25_index.BM25Index``
(built once, cached on disk by content) and returns passages as Documents."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict

from deepstep.bm25_index import BM25Index, passage_context, tokenize
from deepstep.corpus import DEFAULT_CHUNK_OVERLAP, DEFAULT_CHUNK_TOKENS, Passage, demo_corpus_dir, load_passages


class BM25Retriever(BaseRetriever):
    """Lexical retriever returning up to ``k`` passages as Documents with their score in the metadata."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    index: BM25Index
    k: int = 4

    @property
    def passages(self) -> tuple[Passage, ...]:
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
    return Document(page_content=passage.text, metadata=metadata)


def contexts_from_documents(docs: list[Document]) -> list[dict[str, Any]]:
    """Plain dicts for the graph state, one per retrieved document (see ``bm25_index.passage_context``)."""
    return [
        passage_context(
            Passage(
                ref_id=doc.metadata.get("ref_id", ""),
                chunk_id=doc.metadata.get("chunk_id", ""),
                title=doc.metadata.get("title", ""),
                source=doc.metadata.get("source", ""),
                text=doc.page_content,
            ),
            doc.metadata.get("score", 0.0),
        )
        for doc in docs
    ]


__all__ = ["BM25Retriever", "Passage", "contexts_from_documents", "passage_document", "demo_corpus_dir", "load_passages", "tokenize"]
