"""BM25 search (``bm25s``) over a corpus folder's passages, with an on-disk index cache keyed by content.

No LangChain here: ``deepstep corpus index|search`` use this module alone and answer at once;
``retrieval.BM25Retriever`` wraps a ``BM25Index`` as a LangChain retriever for the graph.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import bm25s
import numpy as np

from deepstep.atomic_files import remove_stale, staging_folder
from deepstep.corpus import (
    DEFAULT_CHUNK_OVERLAP,
    DEFAULT_CHUNK_TOKENS,
    CorpusContent,
    Passage,
    corpus_root,
    passages_from,
    read_corpus,
)
from deepstep.errors import CorpusError
from deepstep.languages import CorpusLanguage, detect_corpus_language
from deepstep.records import Context
from deepstep.text_terms import tokenize

logger = logging.getLogger(__name__)

# Bump when tokenization (text_terms.tokenize), chunking or the cache layout changes so old caches are not reused.
_INDEX_FORMAT = 3
_PASSAGES_FILE = "passages.json"
_ORIGIN_FILE = "origin.json"  # [corpus folder, chunk_tokens, chunk_overlap] the index was built from
_STAGING = ".staging-"  # an index being written; renamed to its fingerprint when complete


def _build_index(passages: list[Passage]) -> bm25s.BM25:
    # The title is indexed with every chunk so later chunks of a file still match its topic.
    token_lists = [tokenize(f"{p.title}\n{p.text}") for p in passages]
    if not any(token_lists):
        # bm25s cannot build an index with an empty vocabulary.
        raise CorpusError("the corpus has no searchable words: add Markdown or text files with prose")
    index = bm25s.BM25()
    index.index(token_lists, show_progress=False)
    return index


def _fingerprint(content: CorpusContent, chunk_tokens: int, chunk_overlap: int) -> str:
    """The cache key: the very bytes the index is built from (not a second read that may differ)."""
    digest = hashlib.sha256(json.dumps([_INDEX_FORMAT, chunk_tokens, chunk_overlap, sorted(content.skipped.items())]).encode())
    for source, data in content.files:
        digest.update(f"{source}\0{hashlib.sha256(data).hexdigest()}\n".encode())
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True, eq=False)
class BM25Index:
    """A corpus' passages and their BM25 index."""

    passages: tuple[Passage, ...]
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
        content = read_corpus(root)
        target = None
        if cache_dir is not None:
            target = Path(cache_dir) / _fingerprint(content, chunk_tokens, chunk_overlap)
            remove_stale(target.parent, _STAGING)  # left by an index killed mid-write, even when this one is cached
            if target.is_dir():
                try:
                    return cls._load(target)
                except Exception as exc:  # any damage to the cache means "rebuild", never a failed run
                    logger.warning("rebuilding unreadable retrieval cache %s: %s", target, exc)
                    shutil.rmtree(target, ignore_errors=True)
        passages, skipped = passages_from(content, chunk_tokens=chunk_tokens, chunk_overlap=chunk_overlap)
        index = dataclasses.replace(cls.from_passages(passages, skipped_files=skipped.total()), skipped_reasons=dict(skipped))
        if target is not None:
            origin = json.dumps([str(root.resolve()), chunk_tokens, chunk_overlap])
            index._save(target, origin)
            _drop_superseded(target, origin)
        return index

    @classmethod
    def _load(cls, target: Path) -> BM25Index:
        saved = json.loads((target / _PASSAGES_FILE).read_text(encoding="utf-8"))
        if saved["format"] != _INDEX_FORMAT:
            raise ValueError(f"cache format {saved['format']} != {_INDEX_FORMAT}")
        passages = tuple(Passage(**item) for item in saved["passages"])
        index = bm25s.BM25.load(target)
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
            saved = {
                "format": _INDEX_FORMAT,
                "skipped_files": self.skipped_files,
                "skipped_reasons": self.skipped_reasons,
                "passages": [dataclasses.asdict(p) for p in self.passages],
            }
            (staging / _PASSAGES_FILE).write_text(json.dumps(saved, ensure_ascii=False), encoding="utf-8")
            (staging / _ORIGIN_FILE).write_text(origin, encoding="utf-8")
            os.replace(staging, target)
        except OSError as exc:
            # Also reached when a concurrent run published the same index first; that copy is as good.
            if not target.is_dir():
                logger.warning("cannot write retrieval cache %s: %s", target, exc)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    @functools.cached_property
    def language(self) -> CorpusLanguage | None:
        """The corpus's language, detected once from a sample of its passages."""
        return detect_corpus_language([passage.text for passage in self.passages])

    def search(self, query: str, k: int) -> list[tuple[Passage, float]]:
        """Up to ``k`` passages matching ``query`` with their scores, best first; passages scoring 0 are left out."""
        vocab = self.bm25.vocab_dict
        # Unknown tokens are dropped here: bm25s fails on an empty token list. Duplicates would count twice.
        tokens = [token for token in dict.fromkeys(tokenize(query)) if token in vocab]
        if not tokens or k <= 0:
            return []
        scores = np.asarray(self.bm25.get_scores(tokens), dtype=np.float64)
        hits = []
        for i in np.argsort(-scores, kind="stable")[:k]:  # stable: ties keep corpus order
            if scores[i] <= 0:
                break
            hits.append((self.passages[i], float(scores[i])))
        return hits


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
