"""The pure tree revisions a reviewer asks for (``deepstep.revisions``), on a hand-built tree."""

from __future__ import annotations

import pytest

from deepstep import step_tree
from deepstep.errors import InputError
from deepstep.revisions import revise
from deepstep.step_tree import StepSpec, build_tree

PASSAGE = {"chunk_id": "c1", "ref_id": "r1", "text": "The squared error loss averages the squared differences between predictions and targets."}


def finished_tree():
    specs = [StepSpec("Definition", "", "0"), StepSpec("Squared error", "", "0>1"), StepSpec("Its gradient", "", "0>1>1"), StepSpec("Uses", "", "1")]
    tree = build_tree("What is a loss function?", "", specs, max_steps=10, max_depth=3, ids={"0": "a", "0>1": "b", "0>1>1": "c", "1": "d"}).tree
    answered = {"status": "done", "answer": "An answer. [1]", "question": "What is squared error?", "contexts": [PASSAGE]}
    return step_tree.with_step_updates(tree, [{"id": i, **answered, "review_note": "old"} for i in "abcd"])


def test_rerun_leaves_only_that_step_pending_and_clears_an_earlier_reviewer_question():
    tree = step_tree.with_step_updates(finished_tree(), [{"id": "b", "fixed_question": "Mine?", "approved": True}])
    revision = revise(tree, [{"action": "rerun", "step": "0>1", "note": " Shorter. "}])
    b = revision.tree.nodes["b"]
    assert (b["status"], b["review_note"], b["fixed_question"], b["approved"]) == ("pending", "Shorter.", "", False)
    assert [n for n in step_tree.step_ids(revision.tree) if revision.tree.nodes[n]["status"] == "pending"] == ["b"]
    assert revision.done == ["rerun 0>1"]
    assert tree.nodes["b"]["status"] == "done"  # the input tree is never changed


def test_edit_question_keeps_the_reviewers_question_for_the_rerun():
    revision = revise(finished_tree(), [{"action": "edit_question", "step": "b", "text": " What is the L2 loss? "}])
    assert revision.tree.nodes["b"]["fixed_question"] == "What is the L2 loss?" and revision.tree.nodes["b"]["status"] == "pending"
    assert revision.done == ["edit question 0>1"]


def test_an_edited_answer_loses_citations_of_missing_passages_and_its_claims_are_checked():
    text = "The squared error loss averages the squared differences between predictions and targets [1]. The moon is made of cheese [1]. See [7]."
    revision = revise(finished_tree(), [{"action": "edit_answer", "step": "0>1", "text": text}])
    b = revision.tree.nodes["b"]
    assert b["answer"].endswith("See.") and b["removed_citations"] == 1  # [7]: the step has one passage
    assert [claim["verdict"] for claim in b["claims"]][:2] == ["supported", "unsupported"]
    assert b["answer_source"] == "reviewer" and b["status"] == "done" and b["approved"] is False
    # No critic's score for a human answer; one passage cited; the retrieval strength is unknown here (0).
    assert b["confidence"]["best_q"] is None and b["confidence"]["cited_passages"] == 1 and b["confidence"]["level"] == "low"
    assert revision.edited_answers == ["b"]


def test_approve_needs_an_answer():
    tree = step_tree.with_step_updates(finished_tree(), [{"id": "d", "status": "failed"}])
    assert revise(tree, [{"action": "approve", "step": "a"}]).tree.nodes["a"]["approved"] is True
    with pytest.raises(InputError, match=r"^step 1 has no answer to approve \(failed\)"):
        revise(tree, [{"action": "approve", "step": "1"}])


def test_add_takes_the_next_free_level_under_its_parent_or_at_the_top():
    ids = iter(["new1", "new2"])
    revision = revise(
        finished_tree(),
        [{"action": "add", "step": "0>1", "name": "Robustness"}, {"action": "add", "step": "", "name": "History", "description": "Who named it"}],
        new_id=lambda: next(ids),
    )
    tree = revision.tree
    assert (tree.nodes["new1"]["level"], tree.nodes["new2"]["level"], tree.nodes["new2"]["description"]) == ("0>1>2", "2", "Who named it")
    assert list(tree.predecessors("new1")) == ["b"] and list(tree.predecessors("new2")) == [step_tree.ROOT_ID]
    assert tree.nodes["new1"]["status"] == "pending" and revision.done == ["add 0>1>2", "add 2"]


def test_remove_takes_the_subtree_and_keeps_the_other_levels():
    revision = revise(finished_tree(), [{"action": "remove", "step": "0>1"}])
    assert [revision.tree.nodes[n]["level"] for n in step_tree.step_ids(revision.tree)] == ["0", "1"]
    assert revision.done == ["remove 0>1 (+1 under it)"]
    with pytest.raises(InputError, match="would leave no step"):
        revise(revision.tree, [{"action": "remove", "step": "0"}, {"action": "remove", "step": "1"}])


@pytest.mark.parametrize(
    ("actions", "message"),
    [
        ([], "non-empty list"),
        ([{"action": "explode", "step": "0"}], "'explode' is not one of rerun, reject, refresh"),
        ([{"action": "rerun"}], "say which step"),
        ([{"action": "rerun", "step": "9"}], r"no step '9': give a step id or one of the levels 0, 0>1, 0>1>1, 1"),
        ([{"action": "edit_answer", "step": "0", "text": "  "}], "the answer is empty"),
        ([{"action": "rerun", "step": "0"}, {"action": "rerun", "step": "0", "note": 3}], "^action 2: note must be text, not int"),
        ([{"action": "add", "step": "0"}], "the new step needs a name"),
        (["rerun 0"], "an action is a str"),
    ],
)
def test_an_unusable_action_is_one_clear_input_error(actions, message):
    with pytest.raises(InputError, match=message):
        revise(finished_tree(), actions)
