"""Follow-up search and cross-language search: the pure parts by hand, the graph over real HTTP with the
fake model server (exact call counts from its request log)."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest

import deepstep
from deepstep import step_tree
from deepstep.citations import merge_contexts
from deepstep.languages import CorpusLanguage, cross_language_search, detect_corpus_language, dominant_script
from deepstep.parsing import missing_information, research_question_and_query, search_query_text
from deepstep.records import Context
from deepstep.testing import Fault
from tests.conftest import calls_by_task, with_settings

QUESTION = "What is a loss function?"
TEST_CORPUS = Path(__file__).parent / "data" / "corpus"


def context(chunk_id: str, text: str = "") -> Context:
    return {"ref_id": "r", "chunk_id": chunk_id, "score": 1.0, "text": text or chunk_id, "title": chunk_id, "source": f"{chunk_id}.md"}


# --- pure parts ---------------------------------------------------------------------------------


def test_merging_appends_only_new_passages_so_citation_numbers_stay():
    held = [context("a"), context("b")]
    merged = merge_contexts(held, [context("c"), context("a", "a again"), context("d"), context("c")])
    assert [c["chunk_id"] for c in merged] == ["a", "b", "c", "d"]
    assert merged[0]["text"] == "a"  # the held passage, not the new copy
    assert merge_contexts(held, []) == held and merge_contexts([], [context("x")]) == [context("x")]


@pytest.mark.parametrize(
    ("critique", "missing"),
    [
        ("The answer is vague.\nMissing: the formula of the hinge loss", "the formula of the hinge loss"),
        ("Vague.\n**Missing:** a worked example.", "a worked example."),
        ("Vague.\nmissing: none", None),
        ("Vague.\nMissing: N/A", None),
        ("Nothing is missing from this answer.", None),  # no Missing: line
        ("Missing: units\nMissing: a source for the 1998 date", "a source for the 1998 date"),  # the last one counts
    ],
)
def test_a_critique_says_what_is_missing_on_its_missing_line(critique, missing):
    assert missing_information(critique) == missing


def test_the_research_question_and_its_query_in_the_corpus_language_are_read_from_one_reply():
    assert research_question_and_query("什么是损失函数？\nSearch query: loss function definition") == ("什么是损失函数？", "loss function definition")
    assert research_question_and_query('\n什么是损失函数？\n\n**Search query:** "loss function"') == ("什么是损失函数？", "loss function")
    assert research_question_and_query("什么是损失函数？\n它如何使用？") == ("什么是损失函数？", "")  # no query line: none
    assert search_query_text('Query: "hinge loss formula"\nThis query finds ...') == "hinge loss formula"
    # A preamble line (SmolLM2 in the demo wrote "This query would:") is not the query.
    assert search_query_text("This query would:\n  max_depth decision tree\n") == "max_depth decision tree"
    assert search_query_text("Query:") == ""


def test_the_script_of_a_question_decides_whether_search_is_cross_language():
    assert dominant_script("What is a loss function?") == "LATIN"
    assert dominant_script("什么是损失函数？") == "CJK" and dominant_script("損失関数とは") == "CJK"
    assert dominant_script("123 + 456") is None
    english = CorpusLanguage("English", "LATIN")
    assert cross_language_search("什么是损失函数？", english) == "English"
    assert cross_language_search("What is a loss function?", english) is None
    assert cross_language_search("Qu'est-ce qu'une fonction de perte ?", english) is None  # same script: set search_language
    assert cross_language_search("什么是损失函数？", None) is None


def test_the_corpus_language_is_detected_from_its_passages():
    english = ["A loss function measures how far a prediction is from its target; training minimises it."] * 20
    chinese = ["损失函数衡量模型预测值与真实值之间的差距，训练的目标是让它尽可能小。"] * 20
    assert detect_corpus_language(english) == CorpusLanguage("English", "LATIN")
    assert detect_corpus_language(chinese) == CorpusLanguage("Chinese", "CJK")
    assert detect_corpus_language(["1234 5678"]) is None


# --- over HTTP ------------------------------------------------------------------------------------


def corpus_of(folder: Path, documents: dict[str, str]) -> Path:
    folder.mkdir()
    for name, text in documents.items():
        (folder / name).write_text(text + "\n", encoding="utf-8")
    return folder


# With one passage per retrieval, the step's name ("Aspect 1 of ...") and research question rank the first
# document first; the fake model's follow-up query ("a loss function definition") ranks the second first.
DEFINITION = "A loss function definition: the loss function scores each prediction against its target."
ON_TOPIC_FIRST = {"first.md": "Aspect 1: a loss function is used in practice to train a model.", "loss.md": DEFINITION}
DECOY_FIRST = {"decoy.md": "Aspect 1: what it is and how it is used in practice, aspect by aspect.", "loss.md": DEFINITION}


def test_a_critique_that_finds_facts_missing_searches_once_before_refining(settings, fake_llm, tmp_path):
    fake_llm.set_faults([Fault("missing", task="critique")])
    corpus = corpus_of(tmp_path / "corpus", ON_TOPIC_FIRST)
    result = deepstep.run(QUESTION, corpus=corpus, settings=with_settings(settings, rollouts=2, max_steps=1, top_k=1, max_searches=1))
    (step,) = step_tree.steps(result.tree)
    # 3 + 3R calls and one follow-up query: the second critique is missing facts too, but no search is left.
    assert calls_by_task(fake_llm) == Counter(outline=1, steps=1, question=1, answer=1, evaluate=3, critique=2, refine=2, search=1)
    (search,) = step["searches"]
    assert (search["reason"], search["missing"]) == ("critique", "the formula and a worked example.")
    assert (search["query"], search["new_passages"]) == ("a loss function definition", 1)
    assert [c["source"] for c in step["contexts"]] == ["first.md", "loss.md"]  # appended: the draft's [1] still means first.md
    assert result.usage["search"]["calls"] == 1


def test_without_a_missing_line_no_follow_up_search_runs(settings, fake_llm):
    result = deepstep.run(QUESTION, settings=with_settings(settings, rollouts=2, max_steps=2))
    assert calls_by_task(fake_llm) == Counter(outline=1, steps=1, question=2, answer=2, evaluate=6, critique=4, refine=4)
    assert all(step["searches"] == [] for step in step_tree.steps(result.tree))


def test_a_follow_up_search_finds_the_passage_the_first_retrieval_missed(settings, fake_llm, tmp_path):
    """The first retrieval finds a decoy that shares only framing words ("used in practice") with the
    research question; the model's follow-up query finds the passage that covers it."""
    corpus = corpus_of(tmp_path / "corpus", DECOY_FIRST)
    result = deepstep.run(QUESTION, corpus=corpus, settings=with_settings(settings, rollouts=0, max_steps=1, top_k=1))
    (step,) = step_tree.steps(result.tree)
    assert step["status"] == "done"
    assert [c["source"] for c in step["contexts"]] == ["decoy.md", "loss.md"]  # appended: [1] still the decoy
    assert [(s["reason"], s["query"], s["new_passages"]) for s in step["searches"]] == [("gate", "a loss function definition", 1)]
    assert calls_by_task(fake_llm) == Counter(outline=1, steps=1, question=1, search=1, answer=1, evaluate=1)


def test_max_searches_0_abstains_after_one_retrieval(settings, fake_llm, tmp_path):
    corpus = corpus_of(tmp_path / "corpus", DECOY_FIRST)
    result = deepstep.run(QUESTION, corpus=corpus, settings=with_settings(settings, rollouts=0, max_steps=1, top_k=1, max_searches=0))
    assert [s["status"] for s in step_tree.steps(result.tree)] == ["insufficient_evidence"]
    assert calls_by_task(fake_llm) == Counter(outline=1, steps=1, question=1)


@pytest.fixture
def english_corpus(tmp_path) -> Path:
    corpus = tmp_path / "english"
    shutil.copytree(TEST_CORPUS, corpus)
    (corpus / "损失函数.md").unlink()
    return corpus


def test_a_chinese_question_over_an_english_corpus_also_searches_in_english(settings, fake_llm, english_corpus):
    result = deepstep.run("什么是损失函数？", corpus=english_corpus, settings=with_settings(settings, rollouts=0, max_steps=2))
    steps = step_tree.steps(result.tree)
    assert [s["status"] for s in steps] == ["done", "done"]
    assert all(s["search_query"] == "loss function definition" for s in steps)
    assert all(any("loss function" in c["text"].lower() for c in s["contexts"]) for s in steps)
    # The English query comes in the research question's reply: still 3 + 3R calls per step.
    assert calls_by_task(fake_llm) == Counter(outline=1, steps=1, question=2, answer=2, evaluate=2)


def test_search_language_off_keeps_one_language(settings, fake_llm, english_corpus):
    result = deepstep.run(
        "什么是损失函数？", corpus=english_corpus, settings=with_settings(settings, rollouts=0, max_steps=2, max_searches=0, search_language="off")
    )
    steps = step_tree.steps(result.tree)
    assert all("search_query" not in s for s in steps)
    assert [s["status"] for s in steps] == ["insufficient_evidence"] * 2  # Chinese words find no English passage


def test_an_english_question_over_an_english_corpus_writes_no_second_query(settings, fake_llm, english_corpus):
    result = deepstep.run(QUESTION, corpus=english_corpus, settings=with_settings(settings, rollouts=0, max_steps=1))
    assert all("search_query" not in s for s in step_tree.steps(result.tree))
