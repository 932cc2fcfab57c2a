"""Retrieval quality and speed on the scikit-learn user guide: index build time, query latency, recall@k.

Run: .venv/bin/python -m benchmarks.retrieval [--backend bm25|postgres] [--corpus DIR] [--k 4 10] [--repeat 5] [--json]

The corpus defaults to DEEPSTEP_HOME/corpora/sklearn (fetched first if missing). Questions and their
hand-labelled answer passages are in benchmarks/data/sklearn_questions.json: a label is a page plus a
phrase from the answering sentence; a hit is a retrieved passage from that page containing the phrase.
``run_benchmark`` takes any LangChain ``BaseRetriever``, so other backends plug in as a ``--backend``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever

from deepstep.configuration import Settings
from deepstep.corpus import load_passages
from deepstep.corpus_fetch import fetch_sklearn, is_fetched, sklearn_corpus_dir
from deepstep.errors import DeepstepError
from deepstep.retrieval import BM25Retriever

QUESTIONS_FILE = Path(__file__).parent / "data" / "sklearn_questions.json"


@dataclass(frozen=True)
class Label:
    source: str
    phrase: str


@dataclass(frozen=True)
class Question:
    question: str
    expected: tuple[Label, ...]


@dataclass(frozen=True)
class BenchmarkResult:
    questions: int
    queries: int
    p50_ms: float
    p95_ms: float
    recall: dict[int, float]  # k -> share of questions with an expected passage in the top k
    document_recall: dict[int, float]  # k -> same, counting any passage of an expected page
    mrr: float  # mean reciprocal rank of the first expected passage within the largest k
    misses: list[str]  # questions without an expected passage in the largest k


def load_questions(path: Path = QUESTIONS_FILE) -> list[Question]:
    data = json.loads(path.read_text(encoding="utf-8"))
    return [Question(item["question"], tuple(Label(label["source"], label["phrase"]) for label in item["expected"])) for item in data["questions"]]


def _normalized(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def is_relevant(document: Document, question: Question) -> bool:
    text = _normalized(document.page_content)
    source = document.metadata.get("source")
    return any(source == label.source and _normalized(label.phrase) in text for label in question.expected)


def _percentile(values: Sequence[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def run_benchmark(retriever: BaseRetriever, questions: Sequence[Question], *, ks: Sequence[int] = (4, 10), repeat: int = 5) -> BenchmarkResult:
    """Query ``retriever`` (asked for the largest k when it has a ``k`` field) ``repeat`` times per question."""
    top = max(ks)
    if "k" in type(retriever).model_fields:
        retriever = retriever.model_copy(update={"k": top})
    latencies: list[float] = []
    first_hits: list[int | None] = []  # 1-based rank of the first relevant passage
    first_document_hits: list[int | None] = []
    misses = []
    for question in questions:
        documents: list[Document] = []
        for _ in range(repeat):
            started = time.perf_counter()
            documents = retriever.invoke(question.question)[:top]
            latencies.append((time.perf_counter() - started) * 1000)
        expected_sources = {label.source for label in question.expected}
        rank = next((i for i, doc in enumerate(documents, 1) if is_relevant(doc, question)), None)
        document_rank = next((i for i, doc in enumerate(documents, 1) if doc.metadata.get("source") in expected_sources), None)
        first_hits.append(rank)
        first_document_hits.append(document_rank)
        if rank is None:
            misses.append(question.question)

    def recall_at(ranks: list[int | None], k: int) -> float:
        return sum(1 for rank in ranks if rank is not None and rank <= k) / len(ranks)

    return BenchmarkResult(
        questions=len(questions),
        queries=len(latencies),
        p50_ms=statistics.median(latencies),
        p95_ms=_percentile(latencies, 0.95),
        recall={k: recall_at(first_hits, k) for k in ks},
        document_recall={k: recall_at(first_document_hits, k) for k in ks},
        mrr=sum(1 / rank for rank in first_hits if rank) / len(first_hits),
        misses=misses,
    )


def _timed(build: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    value = build()
    return value, time.perf_counter() - started


def bm25_backend(corpus: Path, settings: Settings) -> tuple[BaseRetriever, dict[str, float]]:
    (passages, _), read_seconds = _timed(lambda: load_passages(corpus, chunk_tokens=settings.chunk_tokens, chunk_overlap=settings.chunk_overlap))
    retriever, index_seconds = _timed(lambda: BM25Retriever.from_passages(passages))
    with tempfile.TemporaryDirectory() as cache:
        options = {"cache_dir": cache, "chunk_tokens": settings.chunk_tokens, "chunk_overlap": settings.chunk_overlap}
        _, cold_seconds = _timed(lambda: BM25Retriever.from_directory(corpus, **options))
        cached, warm_seconds = _timed(lambda: BM25Retriever.from_directory(corpus, **options))
        if not cached.from_cache:
            raise RuntimeError("the second start rebuilt the index instead of loading the cache")
    return retriever, {
        "passages": len(passages),
        "read_and_chunk_s": read_seconds,
        "bm25_index_s": index_seconds,
        "first_start_s (read, index, save)": cold_seconds,
        "later_start_s (hash files, load cache)": warm_seconds,
    }


def postgres_backend(corpus: Path, settings: Settings, url: str) -> tuple[BaseRetriever, dict[str, float]]:
    try:
        from deepstep import postgres_retrieval  # noqa: PLC0415  (optional dependency, only for this backend)
    except (ImportError, DeepstepError) as error:
        raise SystemExit(f"the postgres backend is not available ({error}): install deepstep[postgres]") from None
    passages, _ = load_passages(corpus, chunk_tokens=settings.chunk_tokens, chunk_overlap=settings.chunk_overlap)
    (corpus_hash, _), load_seconds = _timed(lambda: postgres_retrieval.load_corpus(url, passages))
    retriever = postgres_retrieval.PostgresRetriever(database_url=url, corpus_hash=corpus_hash)
    return retriever, {"passages": len(passages), "load_s (0 when already loaded)": load_seconds}


def _temporary_postgres(cleanup: contextlib.ExitStack) -> str:
    """A throwaway local server (the one the tests use) when no database URL is given."""
    try:
        from deepstep.testing.postgres_server import PostgresTestServer  # noqa: PLC0415
    except ImportError as error:
        raise SystemExit(f"no --database-url given and no local Postgres to start ({error}): install deepstep[postgres]") from None
    print("no --database-url or DEEPSTEP_DATABASE_URL: starting a temporary local Postgres", file=sys.stderr)
    return cleanup.enter_context(PostgresTestServer()).url


def _corpus(path: Path | None, settings: Settings) -> Path:
    if path is not None:
        return path
    folder = sklearn_corpus_dir(settings.home)
    if not is_fetched(folder):
        print(f"fetching the scikit-learn user guide into {folder} ...", file=sys.stderr)
        fetch_sklearn(settings.home)
    return folder


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("bm25", "postgres"), default="bm25")
    parser.add_argument("--corpus", type=Path, help="corpus folder (default: DEEPSTEP_HOME/corpora/sklearn, fetched if missing)")
    parser.add_argument("--questions", type=Path, default=QUESTIONS_FILE)
    parser.add_argument("--database-url", help="Postgres URL for --backend postgres (default: $DEEPSTEP_DATABASE_URL, else a temporary local server)")
    parser.add_argument("--k", type=int, nargs="+", default=[4, 10])
    parser.add_argument("--repeat", type=int, default=5, help="queries per question, for stable latency figures")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    settings = Settings.build()
    try:
        corpus = _corpus(args.corpus, settings)
        questions = load_questions(args.questions)
        with contextlib.ExitStack() as cleanup:
            if args.backend == "bm25":
                retriever, build = bm25_backend(corpus, settings)
            else:
                url = args.database_url or os.environ.get("DEEPSTEP_DATABASE_URL") or _temporary_postgres(cleanup)
                retriever, build = postgres_backend(corpus, settings, url)
            result = run_benchmark(retriever, questions, ks=args.k, repeat=args.repeat)
    except DeepstepError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"backend": args.backend, "corpus": str(corpus), "build": build, **asdict(result)}, indent=2))
        return 0
    print(f"backend {args.backend}, corpus {corpus}, chunk_tokens={settings.chunk_tokens} chunk_overlap={settings.chunk_overlap}")
    for name, value in build.items():
        print(f"  {name}: {value:.3f}" if isinstance(value, float) else f"  {name}: {value}")
    print(f"{result.questions} questions x {args.repeat} = {result.queries} queries: p50 {result.p50_ms:.2f} ms, p95 {result.p95_ms:.2f} ms")
    for k in args.k:
        print(f"  recall@{k}: {result.recall[k]:.2f} (passage)  {result.document_recall[k]:.2f} (page)")
    print(f"  MRR@{max(args.k)}: {result.mrr:.2f}")
    for miss in result.misses:
        print(f"  miss@{max(args.k)}: {miss}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
