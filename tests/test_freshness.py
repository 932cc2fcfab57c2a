"""Which steps a corpus change made out of date (freshness.stale_steps, pure): hand-built trees and lookups."""

from __future__ import annotations

from deepstep import freshness, step_tree
from deepstep.step_tree import StepSpec


def context(chunk_id: str, text: str) -> dict:
    return {"ref_id": chunk_id.split(":")[0], "chunk_id": chunk_id, "score": 1.0, "text": text, "title": "t", "source": "s.md"}


def tree_of(*steps: dict):
    """A tree of top-level steps 0, 1, ... with the given fields (status done unless given)."""
    specs = [StepSpec(name=step.get("name", f"step {i}"), description="", level=str(i)) for i, step in enumerate(steps)]
    tree = step_tree.build_tree("Q?", "", specs, max_steps=10, max_depth=3).tree
    updates = [{"id": step_id, "status": "done", "question": "", **fields} for step_id, fields in zip(step_tree.step_ids(tree), steps, strict=True)]
    return step_tree.with_step_updates(tree, updates)


CORPUS = {"a:0": "Lava is molten rock.", "a:1": "Ash falls far.", "b:0": "Leaves are green."}


def lookup(passages: dict[str, str]):
    return passages.get


def searching(results: dict[str, list[str]]):
    """A search that answers each query from ``results`` and records the queries it was asked."""
    asked: list[str] = []

    def search(query: str) -> list[str]:
        asked.append(query)
        return results.get(query, [])

    search.asked = asked  # type: ignore[attr-defined]
    return search


def test_a_changed_and_a_vanished_cited_passage_are_named_by_their_citation_number():
    step = {
        "name": "Lava",
        "question": "What is lava?",
        "contexts": [context("a:0", "Lava is molten rock."), context("a:1", "Ash falls near."), context("a:2", "Gone.")],
        "answer": "Lava is molten [1]. Ash falls [2][3].",
    }
    search = searching({"Lava What is lava?": ["a:0", "a:1", "a:2"]})
    stale = freshness.stale_steps(tree_of(step), lookup(CORPUS), search)
    assert [(s["level"], s["name"], s["reasons"]) for s in stale] == [("0", "Lava", ["cited passage [2] changed", "cited passage [3] vanished"])]
    assert search.asked == ["Lava What is lava?"]  # the step's own query: name, then research question


def test_an_uncited_changed_passage_and_an_unchanged_corpus_leave_a_step_current():
    step = {"name": "Lava", "contexts": [context("a:0", "Lava is molten rock."), context("a:1", "Ash was here.")], "answer": "Molten [1]."}
    assert freshness.stale_steps(tree_of(step), lookup(CORPUS), searching({"Lava": ["a:1", "a:0"]})) == []  # order ignored


def test_a_passage_cut_to_the_prompt_budget_is_current_while_its_read_part_is_unchanged():
    assert freshness.same_text("Lava is ...", "Lava is molten rock.")
    assert not freshness.same_text("Lava was ...", "Lava is molten rock.")
    assert not freshness.same_text("Lava is", "Lava is molten rock.")  # not cut: the whole text must match
    step = {"name": "Lava", "contexts": [context("a:0", "Lava is ...")], "answer": "Molten [1]."}
    assert freshness.stale_steps(tree_of(step), lookup(CORPUS), searching({"Lava": ["a:0"]})) == []


def test_retrieval_that_finds_other_passages_counts_the_new_ones_or_else_the_lost_ones():
    steps = [
        {"name": "One", "contexts": [context("a:0", "Lava is molten rock.")], "answer": ""},
        {"name": "Two", "contexts": [context("a:0", "Lava is molten rock."), context("a:1", "Ash falls far.")], "answer": ""},
        {"name": "Three", "contexts": [context("b:0", "Leaves are green.")], "answer": ""},
    ]
    search = searching({"One": ["a:0", "a:1", "b:0"], "Two": ["a:0"], "Three": ["b:0"]})
    stale = freshness.stale_steps(tree_of(*steps), lookup(CORPUS), search)
    assert [(s["name"], s["reasons"]) for s in stale] == [
        ("One", ["retrieval now returns 2 new passages"]),
        ("Two", ["retrieval no longer returns 1 passage"]),
    ]


def test_passages_a_follow_up_search_appended_are_not_part_of_the_first_retrieval():
    step = {
        "name": "Lava",
        "contexts": [context("a:0", "Lava is molten rock."), context("a:1", "Ash falls far."), context("b:0", "Leaves are green.")],
        "answer": "Molten [1].",
        "searches": [{"reason": "gate", "missing": "x", "query": "ash", "new_passages": 2}],
    }
    assert [c["chunk_id"] for c in freshness.first_retrieved(step)] == ["a:0"]
    assert freshness.stale_steps(tree_of(step), lookup(CORPUS), searching({"Lava": ["a:0"]})) == []


def test_the_cross_language_query_is_searched_and_failed_or_pending_steps_are_not_checked():
    steps = [
        {"name": "Loss", "question": "What is a loss?", "search_query": "损失", "contexts": [context("a:0", "x")], "answer": "[1]"},
        {"name": "Failed", "status": "failed", "contexts": [], "answer": ""},
        {"name": "Gap", "status": "insufficient_evidence", "contexts": [], "answer": ""},
    ]
    search = searching({"Loss What is a loss? 损失": ["a:0"]})
    stale = freshness.stale_steps(tree_of(*steps), lookup(CORPUS), search)
    assert [(s["name"], s["reasons"]) for s in stale] == [("Loss", ["cited passage [1] changed"])]
    assert search.asked == ["Loss What is a loss? 损失", "Gap"]
    assert len(freshness.checked_steps(tree_of(*steps))) == 2
