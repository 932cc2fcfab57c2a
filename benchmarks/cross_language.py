"""Cross-language retrieval: recall@4 of Chinese questions over the English scikit-learn user guide,
without and with ``search_language`` (the question node also writing the question as an English query).

Run: .venv/bin/python -m benchmarks.cross_language [--corpus DIR] [--limit N] [--json]

The model is the server at OPENAI_BASE_URL when set, else the embedded SmolLM2 (started as ``deepstep run``
starts it), at temperature 0. Every question is one step whose name is the Chinese question itself:

- English: the English question as the query (benchmarks.retrieval's figure), the ceiling.
- Chinese without: what the retrieve node searched before ``search_language``: the step's name and its research
  question, both the Chinese question here (a model writing the research question in Chinese adds few English
  words); deepstep's BM25 counts a repeated word once.
- Chinese with: the real question node (its prompt with ``search_rule``, one model call, the reply parsed) on that
  step, then the retrieve node's query: the step name, the model's research question and its ``Search query:`` line.
- Chinese + exact English query: the same query with the English question as the search query, i.e. what a
  model that translates perfectly would reach.

Questions and labels are benchmarks/data/sklearn_questions.json (matched as benchmarks.retrieval matches them);
their hand translations are benchmarks/data/sklearn_questions_zh.json.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.retrieval import QUESTIONS_FILE, Question, _corpus, load_questions, run_benchmark
from deepstep.api import _model_server  # the embedded model, started and configured exactly as for `deepstep run`
from deepstep.configuration import Settings
from deepstep.errors import DeepstepError
from deepstep.nodes.question import make_question
from deepstep.nodes.retrieve import step_query
from deepstep.retrieval import BM25Retriever, corpus_retriever, search_language
from deepstep.state import StepState

TRANSLATIONS_FILE = Path(__file__).parent / "data" / "sklearn_questions_zh.json"
K = 4


@dataclass(frozen=True)
class Translated:
    english: Question
    chinese: str


@dataclass(frozen=True)
class Reply:
    """What the question node made of one Chinese question, and whether its retrieval found the answer."""

    chinese: str
    research_question: str
    search_query: str  # "" when the reply had no Search query line
    query: str  # what the retrieve node searches
    seconds: float
    error: str = ""  # the node's error when the reply was unusable (the step fails: a miss)


@dataclass(frozen=True)
class CrossLanguageResult:
    questions: int
    corpus_language: str
    detected_cross_language: int  # Chinese questions deepstep's default (search_language unset) would search in English for
    recall_english: float
    recall_chinese_without: float
    recall_chinese_with: float
    recall_chinese_exact_query: float
    query_line_share: float  # replies with a Search query line
    model: str
    model_seconds: float  # all question-node calls
    hits: dict[str, dict[str, bool]]  # English question -> variant -> expected passage in the top K
    replies: list[Reply]


def load_translations(questions: Sequence[Question], path: Path = TRANSLATIONS_FILE) -> list[Translated]:
    """The Chinese translation of each labelled question, in the translations file's order."""
    by_english = {question.question: question for question in questions}
    translated = []
    for item in json.loads(path.read_text(encoding="utf-8"))["questions"]:
        if item["english"] not in by_english:
            raise SystemExit(f"{path}: {item['english']!r} is not a labelled question")
        translated.append(Translated(by_english[item["english"]], item["chinese"]))
    return translated


def one_step(chinese: str) -> StepState:
    """A plan of one step that is the question itself, as the question node sees it."""
    return {"step": {"id": "1", "name": chinese, "description": "", "level": "0"}, "question": chinese, "outline": "", "ancestors": []}


def ask_question_node(settings: Settings, retriever: BM25Retriever, chinese: str) -> Reply:
    """One real question-node call on ``one_step(chinese)``, and the query the retrieve node would build from it."""
    started = time.perf_counter()
    try:
        update = make_question(retriever)(one_step(chinese), settings)
    except DeepstepError as error:
        return Reply(chinese, "", "", "", time.perf_counter() - started, error=str(error))
    research_question, query = update["research_question"], update["search_query"]
    return Reply(chinese, research_question, query, step_query(chinese, research_question, query), time.perf_counter() - started)


def hits_at_k(retriever: BM25Retriever, labelled: Sequence[Question], queries: Sequence[str]) -> list[bool]:
    """Whether each query's top K holds an expected passage of its question (an empty query: a miss)."""
    asked = [dataclasses.replace(question, question=query) for question, query in zip(labelled, queries, strict=True) if query]
    misses = set(run_benchmark(retriever, asked, ks=(K,), repeat=1).misses) if asked else set()
    return [bool(query) and query not in misses for query in queries]


def measure(settings: Settings, retriever: BM25Retriever, translated: Sequence[Translated]) -> CrossLanguageResult:
    labelled = [item.english for item in translated]
    language = retriever.index.language
    if language is None:
        raise SystemExit("the corpus has no detectable language")
    with_language = settings.model_copy(update={"search_language": language.name})
    auto = settings.model_copy(update={"search_language": None})
    replies = []
    for number, item in enumerate(translated, 1):
        reply = ask_question_node(with_language, retriever, item.chinese)
        progress = f"[{number}/{len(translated)}] {reply.seconds:.1f} s"
        print(f"{progress} {reply.research_question!r} | {reply.search_query!r} {reply.error}", file=sys.stderr)
        replies.append(reply)
    variants = {
        "english": hits_at_k(retriever, labelled, [item.english.question for item in translated]),
        "chinese_without": hits_at_k(retriever, labelled, [step_query(item.chinese, item.chinese, None) for item in translated]),
        "chinese_with": hits_at_k(retriever, labelled, [reply.query for reply in replies]),
        "chinese_exact_query": hits_at_k(retriever, labelled, [step_query(item.chinese, item.chinese, item.english.question) for item in translated]),
    }

    def recall(variant: str) -> float:
        return sum(variants[variant]) / len(translated)

    return CrossLanguageResult(
        questions=len(translated),
        corpus_language=language.name,
        detected_cross_language=sum(1 for item in translated if search_language(item.chinese, auto, retriever) == language.name),
        recall_english=recall("english"),
        recall_chinese_without=recall("chinese_without"),
        recall_chinese_with=recall("chinese_with"),
        recall_chinese_exact_query=recall("chinese_exact_query"),
        query_line_share=sum(1 for reply in replies if reply.search_query) / len(replies),
        model=with_language.model_for("question"),
        model_seconds=sum(reply.seconds for reply in replies),
        hits={item.english.question: {variant: found[i] for variant, found in variants.items()} for i, item in enumerate(translated)},
        replies=replies,
    )


def table(result: CrossLanguageResult) -> str:
    header = (
        f"| questions | recall@{K} English | Chinese without | Chinese with | Chinese + exact English query "
        "| replies with a query line | auto-detected as cross-language | question-node seconds |"
    )
    row = (
        f"| {result.questions} | {result.recall_english:.2f} | {result.recall_chinese_without:.2f} | {result.recall_chinese_with:.2f} "
        f"| {result.recall_chinese_exact_query:.2f} | {result.query_line_share:.2f} | {result.detected_cross_language}/{result.questions} "
        f"| {result.model_seconds:.0f} |"
    )
    return "\n".join([header, "| --- " * 8 + "|", row])


def details(result: CrossLanguageResult) -> str:
    """One line per question: hits as E/w/W/x (English, without, with, exact query; '-' a miss) and the model's query."""
    lines = []
    for (english, hits), reply in zip(result.hits.items(), result.replies, strict=True):
        marks = "".join(mark if hits[variant] else "-" for mark, variant in zip("EwWx", hits, strict=True))
        lines.append(f"  {marks}  {reply.chinese}  ->  {reply.search_query or reply.error or '(no query line)'}  [{english}]")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, help="corpus folder (default: DEEPSTEP_HOME/corpora/sklearn, fetched if missing)")
    parser.add_argument("--questions", type=Path, default=QUESTIONS_FILE)
    parser.add_argument("--translations", type=Path, default=TRANSLATIONS_FILE)
    parser.add_argument("--limit", type=int, help="only the first N questions")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    try:
        settings = Settings.build(temperature=0)  # the greedy reply: the same figures on every run
        corpus = _corpus(args.corpus, settings)
        translated = load_translations(load_questions(args.questions), args.translations)[: args.limit]
        settings = settings.model_copy(update={"corpus": corpus})
        retriever = corpus_retriever(settings)
        if not isinstance(retriever, BM25Retriever):
            raise SystemExit("this benchmark measures the BM25 retriever: unset DEEPSTEP_DATABASE_URL / DEEPSTEP_RETRIEVER")
        started = time.perf_counter()
        with contextlib.ExitStack() as cleanup:
            served = cleanup.enter_context(_model_server(settings))
            ready = time.perf_counter() - started
            result = measure(served, retriever, translated)
    except DeepstepError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json:
        figures: dict[str, Any] = {"corpus": str(corpus), "model_server_ready_s": ready, **asdict(result)}
        print(json.dumps(figures, indent=2, ensure_ascii=False))
        return 0
    print(f"corpus {corpus} ({result.corpus_language}), model {result.model}, temperature 0, server ready after {ready:.1f} s")
    print(table(result))
    print("per question (E English, w Chinese without, W Chinese with, x Chinese + exact English query; - a miss):")
    print(details(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
