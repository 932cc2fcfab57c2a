"""The Postgres retriever for scale-out: the passages table and its full-text (+ optional pgvector) search.

Many workers share one database: each corpus is loaded once (keyed by a hash of its passages, so
loading the same corpus again is a no-op; a worker finds it by its files' digests without chunking it).
The text is analyzed by deepstep's own tokenizer (stemmed English words, CJK characters and character
bigrams), so English and Chinese queries match the same terms as the BM25 retriever, and ranked by the
same BM25 (Lucene's variant, as bm25s: k1 = 1.5, b = 0.75): each term's row holds its posting list (the
passages holding it and their length-normalized term-frequency weights), so a query reads one row per
query term and sums weight x IDF per passage, instead of ranking every passage that shares any word with
it (what ``ts_rank`` over the ``tsvector`` column did: 270 ms at 10x the scikit-learn guide). The
``tsvector`` column stays for full-text tools. With an embedding model configured, the passages are also
embedded into a pgvector column and both rankings are fused.

Connections, their errors and the schema lock are in ``deepstep.postgres``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

import openai
from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import BaseModel, ConfigDict

from deepstep.configuration import Settings
from deepstep.corpus import (
    DEFAULT_CHUNK_OVERLAP,
    DEFAULT_CHUNK_TOKENS,
    Passage,
    corpus_key,
    corpus_root,
    file_digests,
    load_passages,
    saved_file_digests,
)
from deepstep.errors import ConfigError, ModelServerError
from deepstep.postgres import connect, connection_error, not_installed, schema_lock
from deepstep.redaction import redact_url
from deepstep.retrieval import passage_document, tokenize

try:
    import psycopg
    from psycopg_pool import ConnectionPool
except ImportError as error:
    raise not_installed(error) from None

PASSAGES_TABLE = "deepstep_passages"
CORPORA_TABLE = "deepstep_corpora"
EMBEDDINGS_TABLE = "deepstep_embeddings"  # pgvector, only when an embedding model is configured
TERMS_TABLE = "deepstep_terms"  # document frequency of each term, for the IDF weights of a query
FILES_TABLE = "deepstep_corpus_files"  # the loaded corpus of each folder content (file digests and chunking)
# Bump when the table layout or the analysis of the text changes, so old rows are not reused.
_LOAD_FORMAT = 3  # 2: passages keep their page; 3: posting lists for BM25
# BM25 as bm25s scores it (method "lucene"): the BM25 index and this retriever rank alike.
_K1, _B = 1.5, 0.75
_TERM = re.compile(r"^\w+$")

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {CORPORA_TABLE} (
    content_hash text PRIMARY KEY,
    passages integer NOT NULL,
    skipped_files integer NOT NULL,
    loaded_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS {PASSAGES_TABLE} (
    content_hash text NOT NULL REFERENCES {CORPORA_TABLE} (content_hash) ON DELETE CASCADE,
    position integer NOT NULL,
    ref_id text NOT NULL,
    chunk_id text NOT NULL,
    title text NOT NULL,
    source text NOT NULL,
    text text NOT NULL,
    terms tsvector NOT NULL,
    PRIMARY KEY (content_hash, position)
);
-- Where a passage of a paged document is (added after the first release: older tables gain the columns).
ALTER TABLE {PASSAGES_TABLE} ADD COLUMN IF NOT EXISTS page integer;
ALTER TABLE {PASSAGES_TABLE} ADD COLUMN IF NOT EXISTS page_end integer;
ALTER TABLE {PASSAGES_TABLE} ADD COLUMN IF NOT EXISTS sheet text;
CREATE INDEX IF NOT EXISTS {PASSAGES_TABLE}_terms ON {PASSAGES_TABLE} USING gin (terms);
CREATE TABLE IF NOT EXISTS {FILES_TABLE} (
    files_key text PRIMARY KEY,
    content_hash text NOT NULL REFERENCES {CORPORA_TABLE} (content_hash) ON DELETE CASCADE
);
CREATE TABLE IF NOT EXISTS {TERMS_TABLE} (
    content_hash text NOT NULL REFERENCES {CORPORA_TABLE} (content_hash) ON DELETE CASCADE,
    term text NOT NULL,
    passages integer NOT NULL,
    PRIMARY KEY (content_hash, term)
);
-- The term's posting list: the positions of the passages holding it and their BM25 term weights (load format 3).
ALTER TABLE {TERMS_TABLE} ADD COLUMN IF NOT EXISTS positions integer[];
ALTER TABLE {TERMS_TABLE} ADD COLUMN IF NOT EXISTS weights real[];
"""


def ensure_schema(connection: psycopg.Connection[Any]) -> None:
    with schema_lock(connection):
        connection.execute(_SCHEMA)


def content_hash(passages: list[Passage]) -> str:
    """A hash of the passages (so of the files and the chunking), the identity of a loaded corpus."""
    digest = hashlib.sha256(str(_LOAD_FORMAT).encode())
    for passage in passages:
        digest.update(json.dumps(asdict(passage), ensure_ascii=False, sort_keys=True).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def _analyzed(passages: list[Passage]) -> tuple[list[tuple[str, str]], dict[str, tuple[list[int], list[float]]]]:
    """Per passage its title and body terms (space-joined, for the tsvector), and per term its posting list: the
    positions of the passages holding it with their BM25 term weights ``tf / (tf + k1 (1 - b + b dl / avgdl))``
    over the title and text together, as the BM25 index sees a passage."""
    analyzed = []
    counts: list[Counter[str]] = []
    for passage in passages:
        title, body = tokenize(passage.title), tokenize(passage.text)
        analyzed.append((" ".join(title), " ".join(body)))
        counts.append(Counter(title + body))
    average = sum(count.total() for count in counts) / max(len(counts), 1) or 1.0
    postings: dict[str, tuple[list[int], list[float]]] = {}
    for position, count in enumerate(counts):
        norm = _K1 * (1 - _B + _B * count.total() / average)
        for term, tf in count.items():
            positions, weights = postings.setdefault(term, ([], []))
            positions.append(position)
            weights.append(tf / (tf + norm))
    return analyzed, postings


def _loaded_for(url: str, files_key: str) -> str | None:
    """The content hash of the corpus loaded from files with this key, if one was."""
    with connect(url) as connection:
        try:
            ensure_schema(connection)
            row = connection.execute(f"SELECT content_hash FROM {FILES_TABLE} WHERE files_key = %s", (files_key,)).fetchone()
        except psycopg.Error as error:
            raise connection_error(url, error) from None
    return row[0] if row else None


def load_corpus(url: str, passages: list[Passage], *, skipped_files: int = 0, files_key: str | None = None) -> tuple[str, bool]:
    """Store ``passages`` in the passages table unless the same content is already there.

    Returns the corpus' content hash and whether rows were written. Safe to call from many
    workers at once: a transaction-level advisory lock on the hash lets one of them load.
    ``files_key`` (``corpus.corpus_key`` of the files the passages came from) lets a later start find it.
    """
    corpus_hash = content_hash(passages)
    with connect(url) as connection:
        try:
            ensure_schema(connection)
            if files_key is not None:
                connection.execute(
                    f"INSERT INTO {FILES_TABLE} (files_key, content_hash) SELECT %s, %s WHERE EXISTS "
                    f"(SELECT 1 FROM {CORPORA_TABLE} WHERE content_hash = %s) ON CONFLICT DO NOTHING",
                    (files_key, corpus_hash, corpus_hash),
                )
            if _is_loaded(connection, corpus_hash):
                return corpus_hash, False
            with connection.transaction():
                connection.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (corpus_hash,))
                if _is_loaded(connection, corpus_hash):
                    return corpus_hash, False
                connection.execute(
                    f"INSERT INTO {CORPORA_TABLE} (content_hash, passages, skipped_files) VALUES (%s, %s, %s)",
                    (corpus_hash, len(passages), skipped_files),
                )
                analyzed, postings = _analyzed(passages)
                with connection.cursor() as cursor:
                    # The title is indexed with every chunk (as for BM25), weighted above the body.
                    cursor.executemany(
                        f"INSERT INTO {PASSAGES_TABLE} (content_hash, position, ref_id, chunk_id, title, source, text, page, page_end, sheet, terms) "
                        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, "
                        "setweight(to_tsvector('simple', %s), 'A') || to_tsvector('simple', %s))",
                        [
                            (corpus_hash, i, p.ref_id, p.chunk_id, p.title, p.source, p.text, p.page, p.page_end, p.sheet, title, body)
                            for i, (p, (title, body)) in enumerate(zip(passages, analyzed, strict=True))
                        ],
                    )
                    cursor.executemany(
                        f"INSERT INTO {TERMS_TABLE} (content_hash, term, passages, positions, weights) VALUES (%s, %s, %s, %s, %s)",
                        [(corpus_hash, term, len(positions), positions, weights) for term, (positions, weights) in postings.items()],
                    )
                if files_key is not None:
                    connection.execute(
                        f"INSERT INTO {FILES_TABLE} (files_key, content_hash) VALUES (%s, %s) ON CONFLICT DO NOTHING", (files_key, corpus_hash)
                    )
        except psycopg.Error as error:
            raise connection_error(url, error) from None
    return corpus_hash, True


def _is_loaded(connection: psycopg.Connection[Any], corpus_hash: str) -> bool:
    return connection.execute(f"SELECT 1 FROM {CORPORA_TABLE} WHERE content_hash = %s", (corpus_hash,)).fetchone() is not None


@functools.lru_cache(maxsize=4)
def _pool(url: str) -> ConnectionPool:
    # One small pool per database per process: graph nodes retrieve from several worker threads.
    # Connections are checked when lent, so a restarted server costs one reconnect, not a failed step.
    pool = ConnectionPool(
        url,
        min_size=1,
        max_size=4,
        kwargs={"autocommit": True, "application_name": "deepstep-retriever"},
        check=ConnectionPool.check_connection,
        open=False,
    )
    try:
        pool.open(wait=True, timeout=15)
    except psycopg.Error as error:
        pool.close()
        raise connection_error(url, error) from None
    return pool


def _query_terms(query: str) -> list[str]:
    # Plain word characters only, so a term can never be read as tsquery syntax.
    return [term for term in dict.fromkeys(tokenize(query)) if _TERM.match(term)]


# BM25: per passage, the sum over the query's terms of the term's weight there times its IDF, read from the
# query terms' posting lists alone; ties go by corpus order, as in the BM25 index.
_SEARCH = f"""
WITH scored AS (
    SELECT posting.position,
           sum(posting.weight * ln(1 + (c.passages - t.passages + 0.5) / (t.passages + 0.5))) AS score
    FROM {TERMS_TABLE} t
    JOIN {CORPORA_TABLE} c USING (content_hash)
    CROSS JOIN LATERAL unnest(t.positions, t.weights) AS posting(position, weight)
    WHERE t.content_hash = %(corpus)s AND t.term = ANY(%(terms)s)
    GROUP BY posting.position
    ORDER BY score DESC, posting.position
    LIMIT %(k)s
)
SELECT p.ref_id, p.chunk_id, p.title, p.source, p.text, p.page, p.page_end, p.sheet, scored.score
FROM scored JOIN {PASSAGES_TABLE} p ON p.content_hash = %(corpus)s AND p.position = scored.position
ORDER BY scored.score DESC, p.position
"""


class EmbeddingModel(BaseModel):
    """An embedding model on an OpenAI-compatible server; the key is read from ``api_key_env`` at call time."""

    model_config = ConfigDict(frozen=True)

    model: str
    base_url: str
    api_key_env: str = "OPENAI_API_KEY"
    timeout: float = 120.0

    def embed(self, texts: list[str]) -> list[list[float]]:
        from deepstep.model_http import model_http_client

        # A deadline per request, as for chat calls: a server that trickles its vectors cannot hold indexing up.
        api_key = os.environ.get(self.api_key_env) or "not-needed"
        vectors: list[list[float]] = []
        with (
            model_http_client(self.base_url, timeout=self.timeout, max_reply_chars=_EMBED_BATCH * _VECTOR_CHARS) as http_client,
            # openai annotates http_client as an httpx2.Client but takes an httpx.Client as well (is_legacy_httpx_sync_client).
            openai.OpenAI(base_url=self.base_url, api_key=api_key, timeout=self.timeout, http_client=http_client) as client,  # type: ignore[arg-type]
        ):
            for start in range(0, len(texts), _EMBED_BATCH):
                reply = client.embeddings.create(model=self.model, input=texts[start : start + _EMBED_BATCH], encoding_format="float")
                vectors.extend(item.embedding for item in sorted(reply.data, key=lambda item: item.index))
        if len(vectors) != len(texts):
            raise ModelServerError(f"the embedding model {self.model} returned {len(vectors)} vectors for {len(texts)} texts")
        return vectors


def embedding_model_for(settings: Settings) -> EmbeddingModel | None:
    """The configured embedding model, served by the global model server; ``None`` when not configured."""
    if settings.embedding_model is None:
        return None
    if not settings.base_url:
        raise ConfigError("embedding_model needs an OpenAI-compatible server with /embeddings: set OPENAI_BASE_URL (or DEEPSTEP_BASE_URL)")
    return EmbeddingModel(model=settings.embedding_model, base_url=settings.base_url, api_key_env=settings.api_key_env, timeout=settings.timeout)


_EMBED_BATCH = 64
_VECTOR_CHARS = 100_000  # one vector in JSON: 3,072 floats at most about 25 characters each
# Reciprocal rank fusion constant: the usual 60 keeps one list's top hit from drowning the other list.
_RRF_K = 60

_VECTOR_SCHEMA = f"""
CREATE EXTENSION IF NOT EXISTS vector;
CREATE TABLE IF NOT EXISTS {EMBEDDINGS_TABLE} (
    content_hash text NOT NULL REFERENCES {CORPORA_TABLE} (content_hash) ON DELETE CASCADE,
    model text NOT NULL,
    position integer NOT NULL,
    embedding vector NOT NULL,
    PRIMARY KEY (content_hash, model, position)
);
"""

_NEAREST = f"""
SELECT p.ref_id, p.chunk_id, p.title, p.source, p.text, p.page, p.page_end, p.sheet, 1 - (e.embedding <=> %(vector)s::vector) AS score
FROM {EMBEDDINGS_TABLE} e JOIN {PASSAGES_TABLE} p USING (content_hash, position)
WHERE e.content_hash = %(corpus)s AND e.model = %(model)s
ORDER BY e.embedding <=> %(vector)s::vector, e.position
LIMIT %(k)s
"""


def _vector_literal(vector: list[float]) -> str:
    return "[" + ",".join(repr(float(value)) for value in vector) + "]"


def _embedded_count(connection: psycopg.Connection[Any], corpus_hash: str, model: str) -> int:
    row = connection.execute(f"SELECT count(*) FROM {EMBEDDINGS_TABLE} WHERE content_hash = %s AND model = %s", (corpus_hash, model)).fetchone()
    return row[0] if row else 0  # count(*) returns its one row even for no match


def load_embeddings(url: str, corpus_hash: str, passages: list[Passage], embedding: EmbeddingModel) -> bool:
    """Embed and store the passages of a loaded corpus unless ``embedding.model`` already did; True when written."""
    with connect(url) as connection:
        try:
            with schema_lock(connection):
                connection.execute(_VECTOR_SCHEMA)
        except (psycopg.errors.FeatureNotSupported, psycopg.errors.UndefinedFile) as error:
            raise ConfigError(
                f"the Postgres database {redact_url(url)} has no pgvector extension ({error}); install pgvector there "
                "or unset DEEPSTEP_EMBEDDING_MODEL"
            ) from None
        except psycopg.Error as error:
            raise connection_error(url, error) from None
        if _embedded_count(connection, corpus_hash, embedding.model) == len(passages):
            return False
        # Embed outside any transaction: model calls can be slow, and a failure leaves nothing half-written.
        vectors = embedding.embed([f"{p.title}\n{p.text}" for p in passages])
        try:
            with connection.transaction():
                connection.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 1))", (corpus_hash + embedding.model,))
                if _embedded_count(connection, corpus_hash, embedding.model) == len(passages):
                    return False
                connection.execute(f"DELETE FROM {EMBEDDINGS_TABLE} WHERE content_hash = %s AND model = %s", (corpus_hash, embedding.model))
                with connection.cursor() as cursor:
                    cursor.executemany(
                        f"INSERT INTO {EMBEDDINGS_TABLE} (content_hash, model, position, embedding) VALUES (%s, %s, %s, %s::vector)",
                        [(corpus_hash, embedding.model, i, _vector_literal(vector)) for i, vector in enumerate(vectors)],
                    )
        except psycopg.Error as error:
            raise connection_error(url, error) from None
    return True


class PostgresRetriever(BaseRetriever):
    """Full-text retriever over one loaded corpus, fused with pgvector similarity when ``embedding`` is set.

    Documents carry the same metadata as ``BM25Retriever``'s; with an embedding model the score is
    the reciprocal-rank-fusion score of the full-text and the vector ranking.
    """

    database_url: str
    corpus_hash: str
    k: int = 4
    embedding: EmbeddingModel | None = None

    def __repr_args__(self) -> Any:
        # The URL may hold a password: never show it in reprs, tracebacks or traces.
        return [(name, redact_url(value) if name == "database_url" else value) for name, value in super().__repr_args__()]

    @classmethod
    def from_directory(
        cls,
        database_url: str,
        corpus_dir: str | Path,
        *,
        k: int = 4,
        chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
        chunk_overlap: int = DEFAULT_CHUNK_OVERLAP,
        embedding: EmbeddingModel | None = None,
        cache_dir: str | Path | None = None,
    ) -> PostgresRetriever:
        """Load ``corpus_dir`` (and its embeddings) into the database if new there, and search it. A worker that
        finds the folder's content loaded (by its files' digests, kept under ``cache_dir`` with their stat as for
        the BM25 index) neither reads nor chunks the corpus."""
        skipped_found: Counter[str] = Counter()
        root = corpus_root(corpus_dir)
        digests = saved_file_digests(root, Path(cache_dir), skipped_found) if cache_dir is not None else file_digests(root, skipped_found)
        files_key = corpus_key(
            ((source, str(found[-1])) for source, found in digests.items()), skipped_found, _LOAD_FORMAT, chunk_tokens, chunk_overlap
        )
        if embedding is None and (known := _loaded_for(database_url, files_key)) is not None:
            return cls(database_url=database_url, corpus_hash=known, k=k)
        passages, skipped = load_passages(corpus_dir, chunk_tokens=chunk_tokens, chunk_overlap=chunk_overlap)
        corpus_hash, _ = load_corpus(database_url, passages, skipped_files=skipped, files_key=files_key)
        if embedding is not None:
            load_embeddings(database_url, corpus_hash, passages, embedding)
        return cls(database_url=database_url, corpus_hash=corpus_hash, k=k, embedding=embedding)

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        if self.k <= 0 or not query.strip():
            return []
        if self.embedding is None:
            return self._full_text(query, self.k)
        # Each list contributes its top 2k; a passage found by both ranks above one found by either.
        lexical = self._full_text(query, 2 * self.k)
        semantic = self._nearest(self.embedding.embed([query])[0], 2 * self.k)
        fused: dict[str, tuple[Document, float]] = {}
        for ranking in (lexical, semantic):
            for rank, document in enumerate(ranking):
                key = document.metadata["chunk_id"]
                previous = fused.get(key, (document, 0.0))
                fused[key] = (previous[0], previous[1] + 1 / (_RRF_K + rank + 1))
        best = sorted(fused.values(), key=lambda item: -item[1])[: self.k]
        return [Document(page_content=d.page_content, metadata={**d.metadata, "score": score}) for d, score in best]

    def _full_text(self, query: str, limit: int) -> list[Document]:
        terms = _query_terms(query)
        if not terms:
            return []
        parameters = {"corpus": self.corpus_hash, "terms": terms, "k": limit}
        return self._documents(_SEARCH, parameters)

    def _nearest(self, vector: list[float], limit: int) -> list[Document]:
        assert self.embedding is not None
        return self._documents(_NEAREST, {"corpus": self.corpus_hash, "model": self.embedding.model, "vector": _vector_literal(vector), "k": limit})

    def _documents(self, sql: str, parameters: dict[str, Any]) -> list[Document]:
        try:
            with _pool(self.database_url).connection() as connection:
                rows = connection.execute(sql, parameters).fetchall()
        except psycopg.Error as error:
            raise connection_error(self.database_url, error) from None
        # The queries select Passage's fields in order (ref_id, chunk_id, title, source, text, page, page_end, sheet), then the score.
        return [passage_document(Passage(*fields), float(score)) for *fields, score in rows]


__all__ = [
    "EmbeddingModel",
    "PostgresRetriever",
    "content_hash",
    "embedding_model_for",
    "ensure_schema",
    "load_corpus",
    "load_embeddings",
]
