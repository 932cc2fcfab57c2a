"""BM25 retrieval over a folder of Markdown / text files, with an optional on-disk index cache."""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import itertools
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import unicodedata
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import bm25s
import numpy as np
import Stemmer
from bm25s.stopwords import STOPWORDS_EN
from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict

from deepstep.errors import CorpusError

logger = logging.getLogger(__name__)

TEXT_SUFFIXES = frozenset({".md", ".markdown", ".txt", ".rst"})
# Bump when tokenization, chunking or the cache layout changes so old caches are not reused.
_INDEX_FORMAT = 1
_PASSAGES_FILE = "passages.json"

# Scripts written without spaces between words; their characters count (and index) one by one.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
_CJK_RUN = re.compile(f"[{_CJK}]+")
_TOKEN = re.compile(rf"[{_CJK}]+|[^\W_{_CJK}]+")
_UNIT = re.compile(rf"[{_CJK}]|[^\s{_CJK}]+")
_MD_TITLE = re.compile(r"^#[ \t]+(.+?)[ \t#]*$", re.MULTILINE)
_RST_ADORNMENT = re.compile(r"^([=\-~^\"'`#*+:.])\1{2,}\s*$")

_STOPWORDS = frozenset(STOPWORDS_EN) | {
    "what", "which", "who", "whom", "why", "how", "when", "where", "does", "do", "did", "can",
    "should", "would", "could", "i", "you", "we", "me", "my", "your", "our", "its", "about",
}
_CJK_STOPWORDS = frozenset("的了是在和与及或也就都而之吗呢么")

_local = threading.local()


@dataclass(frozen=True)
class Passage:
    ref_id: str
    chunk_id: str
    title: str
    source: str
    text: str


def tokenize(text: str) -> list[str]:
    """Index terms: stemmed English words without stopwords, CJK character unigrams and bigrams."""
    words: list[str] = []
    cjk: list[str] = []
    for run in _TOKEN.findall(unicodedata.normalize("NFKC", text).lower()):
        if _CJK_RUN.match(run):
            cjk.extend(char for char in run if char not in _CJK_STOPWORDS)
            cjk.extend(run[i : i + 2] for i in range(len(run) - 1))
        elif len(run) > 1 and run not in _STOPWORDS:
            words.append(run)
    return _stemmer().stemWords(words) + cjk


def _stemmer() -> Stemmer.Stemmer:
    # PyStemmer objects are not thread-safe and graph nodes retrieve from worker threads.
    stemmer = getattr(_local, "stemmer", None)
    if stemmer is None:
        stemmer = _local.stemmer = Stemmer.Stemmer("english")
    return stemmer


def _title(text: str, fallback: str) -> str:
    if match := _MD_TITLE.search(text):
        return match.group(1).strip()
    lines = text.splitlines()
    for line, below in itertools.pairwise(lines):
        heading = line.strip()
        underlined = _RST_ADORNMENT.match(below) and len(below.strip()) >= len(heading)
        if heading and underlined and not _RST_ADORNMENT.match(heading):
            return heading
    return fallback


def _chunk(text: str, chunk_words: int, overlap_words: int) -> list[str]:
    """Split into chunks of at most ``chunk_words`` units, preferring paragraph, then line breaks."""
    units = list(_UNIT.finditer(text))
    # A chunk may end after units[:b] for b in these lists without cutting a paragraph (or a line).
    newlines = [text.count("\n", units[i - 1].end(), units[i].start()) for i in range(1, len(units))]
    paragraphs = [i for i, count in enumerate(newlines, 1) if count >= 2] + [len(units)]
    lines = [i for i, count in enumerate(newlines, 1) if count >= 1] + [len(units)]
    chunks: list[str] = []
    start = end = 0
    while end < len(units):
        limit = start + chunk_words
        following = paragraphs[bisect.bisect_right(paragraphs, end)]
        if best := _good_end(paragraphs, start, end, limit):
            new_end = best
        elif following > limit and following - end <= chunk_words:
            # The next paragraph fits whole if the overlap is shortened.
            new_end, start = following, following - chunk_words
        else:
            new_end = _good_end(lines, start, end, limit) or limit
        chunks.append(text[units[start].start() : units[new_end - 1].end()])
        end, start = new_end, max(new_end - overlap_words, 0)
    return chunks


def _good_end(bounds: list[int], start: int, end: int, limit: int) -> int | None:
    """The last bound in (end, limit], unless it would leave a tiny chunk (e.g. a lone heading) mid-text."""
    index = bisect.bisect_right(bounds, limit) - 1
    if index < 0 or bounds[index] <= end:
        return None
    best = bounds[index]
    return best if best - start >= (limit - start) // 2 or best == bounds[-1] else None


def _corpus_root(corpus_dir: str | Path) -> Path:
    root = Path(corpus_dir).expanduser()
    if not root.is_dir():
        raise CorpusError(f"corpus folder {root} does not exist: pass --corpus DIR with Markdown or text files")
    return root


def _corpus_files(root: Path) -> list[tuple[str, Path]]:
    """Candidate files as (relative posix path, path), sorted; hidden files and folders are ignored."""
    found = []
    for path in root.rglob("*"):
        relative = path.relative_to(root)
        hidden = any(part.startswith(".") for part in relative.parts)
        if path.suffix.lower() in TEXT_SUFFIXES and not hidden and path.is_file():
            found.append((relative.as_posix(), path))
    return sorted(found)


def _read_text(path: Path) -> str | None:
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if b"\x00" in data:
        return None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None
    return text if text.strip() else None


def load_passages(
    corpus_dir: str | Path, *, chunk_words: int = 180, overlap_words: int = 30
) -> tuple[list[Passage], int]:
    """Read and chunk every text file under ``corpus_dir``; return the passages and the count of skipped files."""
    if not 0 <= overlap_words < chunk_words:
        raise ValueError(f"need 0 <= overlap_words < chunk_words, got {overlap_words} and {chunk_words}")
    root = _corpus_root(corpus_dir)
    passages: list[Passage] = []
    skipped = 0
    for source, path in _corpus_files(root):
        text = _read_text(path)
        if text is None:
            skipped += 1
            continue
        ref_id = hashlib.sha1(source.encode("utf-8")).hexdigest()[:16]
        title = _title(text, path.stem)
        for index, chunk in enumerate(_chunk(text, chunk_words, overlap_words)):
            passages.append(Passage(ref_id, f"{ref_id}:{index}", title, source, chunk))
    if not passages:
        raise CorpusError(
            f"corpus folder {root} has no readable .md/.txt/.rst files (skipped {skipped} empty, binary or "
            "non-UTF-8 files): add UTF-8 Markdown or text files, or pass --corpus DIR pointing at another folder"
        )
    return passages, skipped


def _build_index(passages: list[Passage]) -> bm25s.BM25:
    # The title is indexed with every chunk so later chunks of a file still match its topic.
    token_lists = [tokenize(f"{p.title}\n{p.text}") for p in passages]
    if not any(token_lists):
        # bm25s cannot build an index with an empty vocabulary.
        raise CorpusError("the corpus has no searchable words: add Markdown or text files with prose")
    index = bm25s.BM25()
    index.index(token_lists, show_progress=False)
    return index


def _fingerprint(files: list[tuple[str, Path]], chunk_words: int, overlap_words: int) -> str:
    digest = hashlib.sha256(json.dumps([_INDEX_FORMAT, chunk_words, overlap_words]).encode())
    for source, path in files:
        try:
            content = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError:
            content = "unreadable"
        digest.update(f"{source}\0{content}\n".encode())
    return digest.hexdigest()


class BM25Retriever(BaseRetriever):
    """Lexical retriever returning up to ``k`` passages as Documents with their score in the metadata."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    passages: tuple[Passage, ...]
    bm25: bm25s.BM25
    k: int = 4
    skipped_files: int = 0

    @classmethod
    def from_passages(cls, passages: list[Passage], *, k: int = 4, skipped_files: int = 0) -> BM25Retriever:
        if not passages:
            raise CorpusError("no passages to index: pass a corpus folder with Markdown or text files")
        return cls(passages=tuple(passages), bm25=_build_index(passages), k=k, skipped_files=skipped_files)

    @classmethod
    def from_directory(
        cls,
        corpus_dir: str | Path,
        *,
        k: int = 4,
        cache_dir: str | Path | None = None,
        chunk_words: int = 180,
        overlap_words: int = 30,
    ) -> BM25Retriever:
        """Index ``corpus_dir``, reusing an index saved under ``cache_dir`` for identical content."""
        root = _corpus_root(corpus_dir)
        target = None
        if cache_dir is not None:
            target = Path(cache_dir) / _fingerprint(_corpus_files(root), chunk_words, overlap_words)
            if target.is_dir():
                try:
                    return cls._load(target, k)
                except Exception as exc:  # any damage to the cache means "rebuild", never a failed run
                    logger.warning("rebuilding unreadable retrieval cache %s: %s", target, exc)
                    shutil.rmtree(target, ignore_errors=True)
        passages, skipped = load_passages(root, chunk_words=chunk_words, overlap_words=overlap_words)
        retriever = cls.from_passages(passages, k=k, skipped_files=skipped)
        if target is not None:
            retriever._save(target)
        return retriever

    @classmethod
    def _load(cls, target: Path, k: int) -> BM25Retriever:
        saved = json.loads((target / _PASSAGES_FILE).read_text(encoding="utf-8"))
        if saved["format"] != _INDEX_FORMAT:
            raise ValueError(f"cache format {saved['format']} != {_INDEX_FORMAT}")
        passages = tuple(Passage(**item) for item in saved["passages"])
        index = bm25s.BM25.load(target)
        scores = index.scores
        # bm25s appends the empty token past the end of the score matrix; every real token must fit in it.
        top_token = max((i for token, i in index.vocab_dict.items() if token), default=-1)
        if (
            scores["num_docs"] != len(passages)
            or len(scores["data"]) != len(scores["indices"])
            or top_token >= len(scores["indptr"]) - 1
        ):
            raise ValueError("index does not match the saved passages")
        return cls(passages=passages, bm25=index, k=k, skipped_files=saved["skipped_files"])

    def _save(self, target: Path) -> None:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{target.name[:16]}-", dir=target.parent))
        except OSError as exc:
            logger.warning("cannot write retrieval cache under %s: %s", target.parent, exc)
            return
        try:
            self.bm25.save(staging, show_progress=False)
            saved = {
                "format": _INDEX_FORMAT,
                "skipped_files": self.skipped_files,
                "passages": [dataclasses.asdict(p) for p in self.passages],
            }
            (staging / _PASSAGES_FILE).write_text(json.dumps(saved, ensure_ascii=False), encoding="utf-8")
            os.replace(staging, target)
        except OSError as exc:
            # Also reached when a concurrent run published the same index first; that copy is as good.
            if not target.is_dir():
                logger.warning("cannot write retrieval cache %s: %s", target, exc)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        vocab = self.bm25.vocab_dict
        # Unknown tokens are dropped here: bm25s fails on an empty token list. Duplicates would count twice.
        tokens = [token for token in dict.fromkeys(tokenize(query)) if token in vocab]
        if not tokens or self.k <= 0:
            return []
        scores = np.asarray(self.bm25.get_scores(tokens), dtype=np.float64)
        documents = []
        for i in np.argsort(-scores, kind="stable")[: self.k]:  # stable: ties keep corpus order
            if scores[i] <= 0:
                break
            passage = self.passages[i]
            metadata: dict[str, Any] = {
                "ref_id": passage.ref_id,
                "chunk_id": passage.chunk_id,
                "title": passage.title,
                "source": passage.source,
                "score": float(scores[i]),
            }
            documents.append(Document(page_content=passage.text, metadata=metadata))
        return documents


def contexts_from_documents(docs: list[Document]) -> list[dict[str, Any]]:
    """Plain dicts for the graph state, one per retrieved document."""
    return [
        {
            "ref_id": doc.metadata.get("ref_id", ""),
            "chunk_id": doc.metadata.get("chunk_id", ""),
            "score": round(float(doc.metadata.get("score", 0.0)), 4),
            "text": doc.page_content,
            "title": doc.metadata.get("title", ""),
            "source": doc.metadata.get("source", ""),
        }
        for doc in docs
    ]


def demo_corpus_dir() -> Path:
    """The small machine-learning corpus bundled with the package."""
    return Path(str(resources.files("deepstep") / "demo_corpus"))
