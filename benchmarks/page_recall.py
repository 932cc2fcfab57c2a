"""Page recall on real PDFs: the R manuals (Debian's r-doc-pdf), questions labelled by hand with their answering page.

Run: .venv/bin/python -m benchmarks.page_recall [--corpus DIR] [--questions FILE] [--k 1 4] [--json]

The corpus defaults to DEEPSTEP_HOME/corpora/r-manuals (fetched first if missing). The corpus is
indexed as a run indexes it (deepstep's BM25 index, the settings' chunk_tokens and chunk_overlap, 180
and 30 by default), and each question's top passages are scored against its labels in
benchmarks/data/r_manuals_questions.json: a page hit is a passage of the labelled document whose
page..page_end range holds the labelled 1-based physical page; a phrase hit is a page hit whose text
also holds the label's phrase (as benchmarks/retrieval.py scores passages).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from deepstep.bm25_index import BM25Index
from deepstep.configuration import Settings
from deepstep.corpus import Passage
from deepstep.corpus_fetch import fetch_r_manuals, is_fetched, r_manuals_dir
from deepstep.errors import DeepstepError

QUESTIONS_FILE = Path(__file__).parent / "data" / "r_manuals_questions.json"


@dataclass(frozen=True)
class PageLabel:
    source: str
    page: int  # 1-based physical page of the PDF
    phrase: str


@dataclass(frozen=True)
class PageQuestion:
    question: str
    expected: tuple[PageLabel, ...]


@dataclass(frozen=True)
class Miss:
    question: str
    expected: list[str]  # "R-intro.pdf p. 23"
    retrieved: list[str]  # the top passages' documents and pages, best first


@dataclass(frozen=True)
class PageRecallResult:
    questions: int
    page_recall: dict[int, float]  # k -> share of questions with a passage on a labelled page in the top k
    phrase_recall: dict[int, float]  # k -> same, the passage also holding the label's phrase
    page_mrr: float  # mean reciprocal rank of the first page hit within the largest k
    misses: list[Miss]  # questions without a page hit in the largest k


def load_page_questions(path: Path = QUESTIONS_FILE) -> list[PageQuestion]:
    data = json.loads(path.read_text(encoding="utf-8"))
    return [
        PageQuestion(item["question"], tuple(PageLabel(label["source"], int(label["page"]), label["phrase"]) for label in item["expected"]))
        for item in data["questions"]
    ]


def _normalized(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def on_page(passage: Passage, label: PageLabel) -> bool:
    """Whether ``passage`` comes from the label's document and its pages include the label's page."""
    if passage.source != label.source or passage.page is None:
        return False
    return passage.page <= label.page <= (passage.page_end or passage.page)


def page_hit(passage: Passage, question: PageQuestion) -> bool:
    return any(on_page(passage, label) for label in question.expected)


def phrase_hit(passage: Passage, question: PageQuestion) -> bool:
    text = _normalized(passage.text)
    return any(on_page(passage, label) and _normalized(label.phrase) in text for label in question.expected)


def _where(passage: Passage) -> str:
    pages = f"p. {passage.page}" if passage.page_end is None else f"pp. {passage.page}-{passage.page_end}"
    return f"{passage.source} {pages}"


def score(questions: Sequence[PageQuestion], retrieved: Sequence[Sequence[Passage]], ks: Sequence[int] = (1, 4)) -> PageRecallResult:
    """Recall@k, phrase recall@k and MRR of ``retrieved`` (each question's passages, best first)."""
    if len(questions) != len(retrieved) or not questions:
        raise ValueError(f"need one ranked list per question, got {len(retrieved)} for {len(questions)} questions")
    top = max(ks)
    page_ranks: list[int | None] = []
    phrase_ranks: list[int | None] = []
    misses = []
    for question, passages in zip(questions, retrieved, strict=True):
        ranked = list(passages)[:top]
        page_rank = next((rank for rank, passage in enumerate(ranked, 1) if page_hit(passage, question)), None)
        page_ranks.append(page_rank)
        phrase_ranks.append(next((rank for rank, passage in enumerate(ranked, 1) if phrase_hit(passage, question)), None))
        if page_rank is None:
            expected = [f"{label.source} p. {label.page}" for label in question.expected]
            misses.append(Miss(question.question, expected, [_where(passage) for passage in ranked]))

    def recall_at(ranks: list[int | None], k: int) -> float:
        return sum(1 for rank in ranks if rank is not None and rank <= k) / len(ranks)

    return PageRecallResult(
        questions=len(questions),
        page_recall={k: recall_at(page_ranks, k) for k in ks},
        phrase_recall={k: recall_at(phrase_ranks, k) for k in ks},
        page_mrr=sum(1 / rank for rank in page_ranks if rank) / len(page_ranks),
        misses=misses,
    )


def measure(index: BM25Index, questions: Sequence[PageQuestion], ks: Sequence[int] = (1, 4)) -> PageRecallResult:
    top = max(ks)
    return score(questions, [[passage for passage, _ in index.search(question.question, top)] for question in questions], ks)


def _corpus(path: Path | None, settings: Settings) -> Path:
    if path is not None:
        return path
    folder = r_manuals_dir(settings.home)
    if not is_fetched(folder):
        print(f"fetching the R manuals into {folder} ...", file=sys.stderr)
        fetch_r_manuals(settings.home)
    return folder


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, help="corpus folder (default: DEEPSTEP_HOME/corpora/r-manuals, fetched if missing)")
    parser.add_argument("--questions", type=Path, default=QUESTIONS_FILE)
    parser.add_argument("--k", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    settings = Settings.build()
    try:
        corpus = _corpus(args.corpus, settings)
        questions = load_page_questions(args.questions)
        with tempfile.TemporaryDirectory() as cache:  # a fresh index: the build time is measured, not a cache load
            started = time.perf_counter()
            index = BM25Index.from_directory(corpus, cache_dir=Path(cache), chunk_tokens=settings.chunk_tokens, chunk_overlap=settings.chunk_overlap)
            index_seconds = time.perf_counter() - started
        result = measure(index, questions, args.k)
    except DeepstepError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    paged = sum(1 for passage in index.passages if passage.page is not None)
    build = {"passages": len(index.passages), "paged_passages": paged, "documents": len({p.source for p in index.passages}), "index_s": index_seconds}
    if args.json:
        settings_used = {"chunk_tokens": settings.chunk_tokens, "chunk_overlap": settings.chunk_overlap}
        print(json.dumps({"corpus": str(corpus), **settings_used, "build": build, **asdict(result)}, indent=2))
        return 0
    print(f"corpus {corpus}, chunk_tokens={settings.chunk_tokens} chunk_overlap={settings.chunk_overlap}")
    print(f"  {build['passages']} passages ({paged} with a page) from {build['documents']} documents, indexed in {index_seconds:.2f} s")
    print(f"{result.questions} questions")
    for k in args.k:
        print(f"  recall@{k}: {result.page_recall[k]:.2f} (page)  {result.phrase_recall[k]:.2f} (phrase)")
    print(f"  MRR@{max(args.k)} (page): {result.page_mrr:.2f}")
    for miss in result.misses:
        print(f"  miss@{max(args.k)}: {miss.question} (expected {', '.join(miss.expected)}; got {', '.join(miss.retrieved)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
