"""BM25 search (``bm25s``) over a corpus folder's passages, with an on-disk index cache keyed by content.

No LangChain here: ``deepstep corpus index|search`` use this module alone and answer at once;
``retrieval.BM25Retriever`` wraps a ``BM25Index`` as a LangChain retriever for the graph.

A cached index costs a run little whatever the corpus size: the files are hashed one at a time, the
BM25 matrix is memory-mapped (a query reads only its terms' columns), and the passages stay in a
read-only SQLite file of the cache (``PassageTable``), read when a search returns them.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import shutil
import sqlite3
import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import overload

import bm25s
import numpy as np

from deepstep.atomic_files import remove_stale, staging_folder
from deepstep.corpus import (
    DEFAULT_CHUNK_OVERLAP,
    DEFAULT_CHUNK_TOKENS,
    Passage,
    corpus_key,
    corpus_root,
    passages_from,
    read_corpus,
    saved_file_digests,
)
from deepstep.errors import CorpusError
from deepstep.languages import CorpusLanguage, detect_corpus_language
from deepstep.records import Context
from deepstep.text_terms import tokenize

logger = logging.getLogger(__name__)

# Bump when tokenization (text_terms.tokenize), chunking or the cache layout changes so old caches are not reused.
_INDEX_FORMAT = 4
_INDEX_FILE = "index.json"  # the format, the passage count and the skipped files
_PASSAGES_FILE = "passages.sqlite3"
_ORIGIN_FILE = "origin.json"  # [corpus folder, chunk_tokens, chunk_overlap] the index was built from
_STAGING = ".staging-"  # an index being written; renamed to its fingerprint when complete
_LANGUAGE_SAMPLE = 2000  # passages read to detect the corpus's language (languages.SAMPLE_CHARS takes fewer)


def _build_index(passages: list[Passage]) -> bm25s.BM25:
    # The title is indexed with every chunk so later chunks of a file still match its topic.
    token_lists = [tokenize(f"{p.title}\n{p.text}") for p in passages]
    if not any(token_lists):
        # bm25s cannot build an index with an empty vocabulary.
        raise CorpusError("the corpus has no searchable words: add Markdown or text files with prose")
    index = bm25s.BM25()
    index.index(token_lists, show_progress=False)
    return index


_COLUMNS = tuple(field.name for field in dataclasses.fields(Passage))


class PassageTable(Sequence[Passage]):
    """A cached index's passages in its read-only SQLite file, read by position on demand: a run over a large
    corpus holds only the passages its searches return (row ``i + 1`` is passage ``i``)."""

    def __init__(self, path: Path) -> None:
        # immutable: a published cache folder never changes, so SQLite takes no locks and reads no journal.
        self._connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro&immutable=1", uri=True, check_same_thread=False)
        self._lock = threading.Lock()  # one connection for every step's thread
        self._count = self._rows("SELECT count(*) FROM passages", ())[0][0]

    @staticmethod
    def write(path: Path, passages: Iterable[Passage]) -> None:
        with sqlite3.connect(path) as connection:
            connection.execute(f"CREATE TABLE passages (row INTEGER PRIMARY KEY, {', '.join(_COLUMNS)})")
            slots = ", ".join("?" * len(_COLUMNS))
            rows = (dataclasses.astuple(passage) for passage in passages)
            connection.executemany(f"INSERT INTO passages ({', '.join(_COLUMNS)}) VALUES ({slots})", rows)  # noqa: S608  (column names are ours)
        connection.close()

    def _rows(self, query: str, parameters: tuple[int, ...]) -> list[tuple]:
        with self._lock:
            return self._connection.execute(query, parameters).fetchall()

    def __len__(self) -> int:
        return self._count

    @overload
    def __getitem__(self, index: int) -> Passage: ...
    @overload
    def __getitem__(self, index: slice) -> list[Passage]: ...
    def __getitem__(self, index: int | slice) -> Passage | list[Passage]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._count))]
        position = index + self._count if index < 0 else index
        if not 0 <= position < self._count:
            raise IndexError(index)
        row = self._rows(f"SELECT {', '.join(_COLUMNS)} FROM passages WHERE row = ?", (position + 1,))  # noqa: S608
        return Passage(*row[0])

    def __iter__(self) -> Iterator[Passage]:
        batch = 4096
        for start in range(0, self._count, batch):
            query = f"SELECT {', '.join(_COLUMNS)} FROM passages WHERE row > ? AND row <= ? ORDER BY row"  # noqa: S608
            yield from (Passage(*row) for row in self._rows(query, (start, start + batch)))


@dataclasses.dataclass(frozen=True, eq=False)
class BM25Index:
    """A corpus' passages and their BM25 index."""

    passages: Sequence[Passage]  # a tuple when built in this process; a PassageTable when read from the cache
    bm25: bm25s.BM25
    skipped_files: int = 0
    # Why files were skipped: reason -> count (corpus.EMPTY, PERMISSION_DENIED, LINK_OUTSIDE, ...).
    skipped_reasons: dict[str, int] = dataclasses.field(default_factory=dict)
    # True when the index was read from the on-disk cache rather than built.
    from_cache: bool = False

    @classmethod
    def from_passages(cls, passages: list[Passage], *, skipped_files: int = 0) -> BM25Index:
        if not passages:
            raise CorpusError("no passages to index: pass a corpus folder with Markdown or text files")
        return cls(passages=tuple(passages), bm25=_build_index(passages), skipped_files=skipped_files)

    @classmethod
    def from_directory(
        cls,
        corpus_dir: str | Path,
        *,
        cache_dir: str | Path | None = None,
        chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
        chunk_overlap: int = DEFAULT_CHUNK_OVERLAP,
    ) -> BM25Index:
        """Index ``corpus_dir``, reusing an index saved under ``cache_dir`` for the same content and chunking
        (the cache key hashes every file, so any change to the corpus rebuilds)."""
        root = corpus_root(corpus_dir)
        if cache_dir is not None:
            skipped: Counter[str] = Counter()
            digests = saved_file_digests(root, Path(cache_dir), skipped)
            cached = Path(cache_dir) / corpus_key(
                ((source, str(d[-1])) for source, d in digests.items()), skipped, _INDEX_FORMAT, chunk_tokens, chunk_overlap
            )
            remove_stale(cached.parent, _STAGING)  # left by an index killed mid-write, even when this one is cached
            if cached.is_dir():
                try:
                    return cls._load(cached)
                except Exception as exc:  # any damage to the cache means "rebuild", never a failed run
                    logger.warning("rebuilding unreadable retrieval cache %s: %s", cached, exc)
                    shutil.rmtree(cached, ignore_errors=True)
        content = read_corpus(root)
        passages, skipped = passages_from(content, chunk_tokens=chunk_tokens, chunk_overlap=chunk_overlap)
        index = dataclasses.replace(cls.from_passages(passages, skipped_files=skipped.total()), skipped_reasons=dict(skipped))
        if cache_dir is not None:
            # Keyed by the very bytes it was built from: a file changed since the hashing above is not mislabelled.
            built_from = [(source, hashlib.sha256(data).hexdigest()) for source, data in content.files]
            target = Path(cache_dir) / corpus_key(built_from, content.skipped, _INDEX_FORMAT, chunk_tokens, chunk_overlap)
            origin = json.dumps([str(root.resolve()), chunk_tokens, chunk_overlap])
            index._save(target, origin)
            _drop_superseded(target, origin)
        return index

    @classmethod
    def _load(cls, target: Path) -> BM25Index:
        saved = json.loads((target / _INDEX_FILE).read_text(encoding="utf-8"))
        if saved["format"] != _INDEX_FORMAT:
            raise ValueError(f"cache format {saved['format']} != {_INDEX_FORMAT}")
        passages = PassageTable(target / _PASSAGES_FILE)
        if len(passages) != saved["passages"]:
            raise ValueError("the passage table is incomplete")
        index = bm25s.BM25.load(target, mmap=True)
        scores = index.scores
        # bm25s appends the empty token past the end of the score matrix; every real token must fit in it.
        top_token = max((i for token, i in index.vocab_dict.items() if token), default=-1)
        if scores["num_docs"] != len(passages) or len(scores["data"]) != len(scores["indices"]) or top_token >= len(scores["indptr"]) - 1:
            raise ValueError("index does not match the saved passages")
        reasons = saved["skipped_reasons"]
        return cls(passages=passages, bm25=index, skipped_files=saved["skipped_files"], skipped_reasons=reasons, from_cache=True)

    def _save(self, target: Path, origin: str) -> None:
        try:
            staging = staging_folder(target.parent, _STAGING)
        except OSError as exc:
            logger.warning("cannot write retrieval cache under %s: %s", target.parent, exc)
            return
        try:
            self.bm25.save(staging, show_progress=False)
            PassageTable.write(staging / _PASSAGES_FILE, self.passages)
            saved = {
                "format": _INDEX_FORMAT,
                "passages": len(self.passages),
                "skipped_files": self.skipped_files,
                "skipped_reasons": self.skipped_reasons,
            }
            (staging / _INDEX_FILE).write_text(json.dumps(saved), encoding="utf-8")
            (staging / _ORIGIN_FILE).write_text(origin, encoding="utf-8")
            os.replace(staging, target)
        except (OSError, sqlite3.Error) as exc:
            # Also reached when a concurrent run published the same index first; that copy is as good.
            if not target.is_dir():
                logger.warning("cannot write retrieval cache %s: %s", target, exc)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    @functools.cached_property
    def language(self) -> CorpusLanguage | None:
        """The corpus's language, detected once from a sample of its passages."""
        stride = max(1, len(self.passages) // _LANGUAGE_SAMPLE)  # evenly across the corpus, without reading it all
        return detect_corpus_language([passage.text for passage in self.passages[::stride]])

    def search(self, query: str, k: int) -> list[tuple[Passage, float]]:
        """Up to ``k`` passages matching ``query`` with their scores, best first; passages scoring 0 are left out."""
        vocab = self.bm25.vocab_dict
        # Unknown tokens are dropped here: bm25s fails on an empty token list. Duplicates would count twice.
        tokens = [token for token in dict.fromkeys(tokenize(query)) if token in vocab]
        if not tokens or k <= 0:
            return []
        scores = np.asarray(self.bm25.get_scores(tokens))  # float32, as bm25s stores them
        return [(self.passages[int(i)], float(scores[i])) for i in best_k(scores, k)]


def best_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` highest positive scores, best first, ties in corpus order: the same as a stable
    sort of every score, but partial (a full sort of a large corpus's scores was most of a query's time)."""
    candidates = np.flatnonzero(scores > 0)
    if len(candidates) > k:
        values = scores[candidates]
        kth = np.partition(values, len(values) - k)[len(values) - k]
        candidates = candidates[values >= kth]  # every tie at the cut: corpus order decides among them below
    return candidates[np.lexsort((candidates, -scores[candidates]))][:k]


def _drop_superseded(target: Path, origin: str) -> None:
    """Delete cached indexes of earlier contents of the same folder (same chunking): they cannot match again
    until the files change back, and a corpus edited often would otherwise fill the cache folder."""
    try:
        entries = list(target.parent.iterdir())
    except OSError:
        return  # no cache folder (it could not be written)
    for entry in entries:
        if entry == target or entry.name.startswith(".") or not entry.is_dir():
            continue
        try:
            superseded = (entry / _ORIGIN_FILE).read_text(encoding="utf-8") == origin
        except OSError:
            continue
        if superseded:
            shutil.rmtree(entry, ignore_errors=True)


def passage_context(passage: Passage, score: float) -> Context:
    """A retrieved passage as the graph state (and ``deepstep corpus search --json``) holds it: a plain dict."""
    context: Context = {
        "ref_id": passage.ref_id,
        "chunk_id": passage.chunk_id,
        "score": round(float(score), 4),
        "text": passage.text,
        "title": passage.title,
        "source": passage.source,
    }
    if passage.page is not None:
        context["page"] = passage.page
    if passage.page_end is not None:
        context["page_end"] = passage.page_end
    if passage.sheet is not None:
        context["sheet"] = passage.sheet
    return context


__all__ = ["BM25Index", "passage_context", "tokenize"]
