"""The pure logic of the graph's nodes, called as functions of a hand-built state dict: no server,
no model and no graph run. Each expectation is worked out by hand from the small state it is given."""

from __future__ import annotations

import re
from typing import Any

import pytest
from langgraph.types import Send

from deepstep import mcts, step_tree
from deepstep.configuration import Settings
from deepstep.errors import InputError
from deepstep.nodes.collect import collect
from deepstep.nodes.dispatch import dispatch_steps
from deepstep.nodes.failures import route_unless_failed
from deepstep.nodes.refine import next_after_evaluate, unparsed_refinement
from deepstep.nodes.review import checked_answer, edited_plan
from deepstep.parsing import RefineResponse
from deepstep.state import merge_by_step_id

QUESTION = "What is a loss function?"
OUTLINE = "- definition\n  - examples\n- choosing one"
# Fixed ids, so expected payloads can be written out in full.
DEFINITION, EXAMPLES, CHOOSING = "id-definition", "id-examples", "id-choosing"


def plan() -> step_tree.StepTree:
    """Definition (0) with one child Examples (0>1), then Choosing one (1); every step pending."""
    specs = [
        step_tree.StepSpec(name="Definition", description="What it measures.", level="0"),
        step_tree.StepSpec(name="Examples", description="Common ones.", level="0>1"),
        step_tree.StepSpec(name="Choosing one", description="How to pick.", level="1"),
    ]
    built = step_tree.build_tree(QUESTION, OUTLINE, specs, max_steps=5, max_depth=3, ids={"0": DEFINITION, "0>1": EXAMPLES, "1": CHOOSING})
    assert built.warnings == []
    return built.tree


def with_status(tree: step_tree.StepTree, **status_by_id: str) -> step_tree.StepTree:
    return step_tree.with_step_updates(tree, [{"id": step_id, "status": status} for step_id, status in status_by_id.items()])


def step_send(step_id: str, name: str, description: str, level: str, ancestors: list[dict[str, str]]) -> Send:
    return Send(
        "step",
        {
            "step": {"id": step_id, "name": name, "description": description, "level": level},
            "question": QUESTION,
            "outline": OUTLINE,
            "ancestors": ancestors,
        },
    )


SEND_DEFINITION = step_send(DEFINITION, "Definition", "What it measures.", "0", [])
SEND_EXAMPLES = step_send(EXAMPLES, "Examples", "Common ones.", "0>1", [{"name": "Definition", "level": "0"}])
SEND_CHOOSING = step_send(CHOOSING, "Choosing one", "How to pick.", "1", [])


# dispatch_steps: the fan-out.


def test_dispatch_sends_every_pending_step_in_tree_order_with_its_ancestors():
    assert dispatch_steps({"question": QUESTION, "outline": OUTLINE, "tree": plan()}) == [SEND_DEFINITION, SEND_EXAMPLES, SEND_CHOOSING]


def test_dispatch_skips_steps_done_in_the_tree_or_in_step_results():
    state = {
        "question": QUESTION,
        "outline": OUTLINE,
        "tree": with_status(plan(), **{DEFINITION: "done"}),
        # A resumed run: Choosing one finished in the step subgraph but is not merged into the tree yet.
        "step_results": {CHOOSING: {"id": CHOOSING, "status": "done"}},
    }
    # Examples still carries its done parent as ancestor.
    assert dispatch_steps(state) == [SEND_EXAMPLES]


def test_dispatch_sends_failed_steps_again():
    # `deepstep resume` retries only the failed steps: a failure in the tree or in step_results is no "done".
    state = {
        "question": QUESTION,
        "outline": OUTLINE,
        "tree": with_status(plan(), **{DEFINITION: "failed", EXAMPLES: "done"}),
        "step_results": {CHOOSING: {"id": CHOOSING, "status": "failed", "error": "boom"}},
    }
    assert dispatch_steps(state) == [SEND_DEFINITION, SEND_CHOOSING]


def test_dispatch_goes_to_collect_when_no_step_is_left():
    done_in_tree = {"question": QUESTION, "tree": with_status(plan(), **{DEFINITION: "done", EXAMPLES: "done", CHOOSING: "done"})}
    assert dispatch_steps(done_in_tree) == "collect"
    all_done = {step_id: {"id": step_id, "status": "done"} for step_id in (DEFINITION, EXAMPLES, CHOOSING)}
    done_in_results = {"question": QUESTION, "tree": plan(), "step_results": all_done}
    assert dispatch_steps(done_in_results) == "collect"
    assert dispatch_steps({"question": QUESTION, "tree": step_tree.new_tree(QUESTION)}) == "collect"  # a plan without steps


def test_dispatch_without_an_outline_sends_an_empty_one():
    [send, *_] = dispatch_steps({"question": QUESTION, "tree": plan()})
    assert send.arg["outline"] == ""


# route_unless_failed: the conditional edges between a step's nodes.


def test_route_unless_failed_goes_on_unless_the_step_has_an_error():
    route = route_unless_failed("answer")
    assert route.__name__ == "to_answer_unless_failed"  # the edge's name in the drawn graph
    assert route({}) == "answer"
    assert route({"error": ""}) == "answer"
    assert route({"error": "retrieve: HTTP 500"}) == "finish"


# review: editing the plan (edited_plan, checked_answer).


@pytest.fixture
def review_settings() -> Settings:
    return Settings.build(max_steps=3, max_depth=2)


def review_state() -> dict[str, Any]:
    return {"question": QUESTION, "outline": OUTLINE, "tree": plan()}


@pytest.mark.parametrize("approval", [None, True, {"approve": True}])
def test_an_approval_keeps_the_proposed_plan(approval, review_settings):
    assert edited_plan(approval, review_state(), review_settings) is None
    assert checked_answer(approval, review_state(), review_settings) is True


def test_edited_steps_keep_their_id_when_their_level_is_unchanged(review_settings):
    state = review_state()
    edited = {
        "steps": [
            {"name": "What a loss is", "description": "Renamed.", "level": "0"},
            {"name": "Choosing one", "description": "How to pick.", "level": "1"},
            {"name": "Pitfalls", "description": "New.", "level": "2"},
        ]
    }
    built = edited_plan(edited, state, review_settings)
    assert built is not None and built.warnings == []
    by_level = {node["level"]: node for node in step_tree.steps(built.tree)}
    assert list(by_level) == ["0", "1", "2"]  # Examples (0>1) was left out, so it is gone
    assert by_level["0"]["id"] == DEFINITION and by_level["0"]["name"] == "What a loss is" and by_level["0"]["description"] == "Renamed."
    assert by_level["1"]["id"] == CHOOSING
    assert by_level["2"]["id"] not in {DEFINITION, EXAMPLES, CHOOSING}  # a new level gets a new id
    assert all(node["status"] == "pending" and node["answer"] == "" for node in by_level.values())
    assert step_tree.question_of(built.tree) == QUESTION and step_tree.outline_of(built.tree) == OUTLINE
    assert step_tree.trees_equal(state["tree"], plan())  # the state's tree is not changed


def test_a_step_moved_to_another_level_gets_a_new_id(review_settings):
    built = edited_plan({"steps": [{"name": "Definition", "description": "", "level": "1"}]}, review_state(), review_settings)
    assert built is not None
    [step] = step_tree.steps(built.tree)
    # Level 1 was Choosing one's: the id follows the level, not the name.
    assert (step["level"], step["id"], step["name"]) == ("1", CHOOSING, "Definition")


def test_an_edited_plan_is_held_to_the_settings_limits(review_settings):
    steps = [{"name": f"s{n}", "description": "", "level": level} for n, level in enumerate(["0", "0>1", "0>1>1", "1", "2"])]
    built = edited_plan({"steps": steps}, review_state(), review_settings)
    assert built is not None
    assert [node["level"] for node in step_tree.steps(built.tree)] == ["0", "0>1", "1"]  # max_depth=2, then max_steps=3
    assert built.warnings == [
        "dropped step 's2': level 0>1>1 is deeper than max_depth=2",
        "kept the first 3 of 4 steps (max_steps=3)",
    ]


def test_levels_given_as_numbers_are_read_as_levels(review_settings):
    built = edited_plan({"steps": [{"name": "Definition", "description": "", "level": 0}]}, review_state(), review_settings)
    assert built is not None and [(node["id"], node["level"]) for node in step_tree.steps(built.tree)] == [(DEFINITION, "0")]


def test_checked_answer_returns_the_steps_as_plain_data(review_settings):
    answer = {"steps": [{"name": "Definition", "description": "d", "level": 0, "extra": "ignored"}]}
    assert checked_answer(answer, review_state(), review_settings) == {"steps": [{"name": "Definition", "description": "d", "level": "0"}]}
    # A bare list of steps is accepted as well.
    assert checked_answer([{"name": "Definition", "level": "0"}], review_state(), review_settings) == {
        "steps": [{"name": "Definition", "description": "", "level": "0"}]
    }


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ("yes", "review answer must be true (approve) or"),
        ({"steps": "all of them"}, "review answer must be true (approve) or"),
        ({"approve": False}, "review answer must be true (approve) or"),
        ({"steps": [["Definition", "0"]]}, "edited step 1 is a list: each must be an object with name, description and level"),
        ({"steps": [{"name": "a", "level": "0"}, {"name": 7, "level": "1"}]}, "edited step 2: name must be text, not int"),
        ({"steps": [{"name": "a", "level": True}]}, "edited step 1: level must be text, not bool"),
        ({"steps": [{"name": "a", "level": "0", "description": None}]}, "edited step 1: description must be text, not NoneType"),
        ({"steps": []}, "the edited plan has no valid steps"),
        ({"steps": [{"name": "  ", "level": "0"}, {"name": "a", "level": "x"}, {"name": "b", "level": 1.5}]}, "the edited plan has no valid steps"),
    ],
)
def test_an_unusable_review_answer_raises_input_error(answer, message, review_settings):
    with pytest.raises(InputError, match="^" + re.escape(message)):
        edited_plan(answer, review_state(), review_settings)
    with pytest.raises(InputError, match="^" + re.escape(message)):
        checked_answer(answer, review_state(), review_settings)


# collect: step results merged into the tree.


def test_collect_merges_step_results_and_lists_failed_steps():
    tree = with_status(plan(), **{CHOOSING: "done"})
    contexts = [{"ref_id": "r1", "chunk_id": "r1:0", "title": "Losses", "text": "A loss maps ..."}]
    answered = {"status": "done", "error": "", "answer": "It measures error [1].", "contexts": contexts, "mcts": {"best": 1}}
    state = {
        "question": QUESTION,
        "tree": tree,
        "step_results": {
            DEFINITION: {"id": DEFINITION, **answered},
            EXAMPLES: {"id": EXAMPLES, "status": "failed", "error": "answer: HTTP 500 after 2 attempt(s)", "answer": "", "mcts": {}},
            "id-of-an-older-plan": {"id": "id-of-an-older-plan", "status": "done", "answer": "stale"},
        },
    }
    update = collect(state)
    assert set(update) == {"tree", "failed_steps", "step_results"}
    # The fan-in buffer is cleared once merged: the tree alone holds each step's result from here on.
    assert update["step_results"] is None and merge_by_step_id(state["step_results"], update["step_results"]) == {}
    merged = update["tree"]
    assert set(merged.nodes) == {step_tree.ROOT_ID, DEFINITION, EXAMPLES, CHOOSING}  # the stale result is ignored
    # The result's fields are merged; those it does not carry are kept.
    assert merged.nodes[DEFINITION] == {**step_tree.STEP_DEFAULTS, "name": "Definition", "description": "What it measures.", "level": "0", **answered}
    assert (merged.nodes[EXAMPLES]["status"], merged.nodes[EXAMPLES]["error"]) == ("failed", "answer: HTTP 500 after 2 attempt(s)")
    assert merged.nodes[CHOOSING]["status"] == "done" and merged.nodes[CHOOSING]["answer"] == ""  # no result: unchanged
    assert update["failed_steps"] == [{"id": EXAMPLES, "level": "0>1", "name": "Examples", "error": "answer: HTTP 500 after 2 attempt(s)"}]
    assert step_tree.trees_equal(state["tree"], tree)  # the state's tree is not changed


def test_collect_lists_failures_in_tree_order_and_forgets_one_that_a_retry_fixed():
    # Definition failed in an earlier run and its retry is done; Choosing one failed before and was not retried.
    tree = step_tree.with_step_updates(
        plan(), [{"id": DEFINITION, "status": "failed", "error": "old"}, {"id": CHOOSING, "status": "failed", "error": "older"}]
    )
    state = {
        "question": QUESTION,
        "tree": tree,
        "step_results": {
            DEFINITION: {"id": DEFINITION, "status": "done", "error": "", "answer": "fixed"},
            EXAMPLES: {"id": EXAMPLES, "status": "failed", "error": "new"},
        },
    }
    assert collect(state)["failed_steps"] == [
        {"id": EXAMPLES, "level": "0>1", "name": "Examples", "error": "new"},
        {"id": CHOOSING, "level": "1", "name": "Choosing one", "error": "older"},
    ]


def test_collect_without_step_results_keeps_the_tree():
    update = collect({"question": QUESTION, "tree": plan()})
    assert step_tree.trees_equal(update["tree"], plan()) and update["failed_steps"] == []


# The MCTSr loop: where a step goes after a score (next_after_evaluate), and the refinement kept
# when the model's reply never parses (unparsed_refinement).


def scored(search: mcts.Search, reward: float) -> mcts.Search:
    """``search`` with one evaluator score for its newest answer."""
    return mcts.add_reward(search, search["nodes"][-1]["id"], reward)


def one_rollout(search: mcts.Search, reward: float) -> mcts.Search:
    """``search`` after one more critique -> refine -> evaluate of its root."""
    expanded, child = mcts.expand(search, 0, critique="c", thought="t", answer="refined")
    return mcts.backpropagate(mcts.add_reward(expanded, child, reward), child)


UNSCORED = mcts.new_search("draft")
TWO_ROLLOUTS = mcts.MCTSParams(rollouts=2, reward_samples=1)


def test_after_evaluate_asks_for_a_score_while_the_newest_answer_lacks_one():
    assert next_after_evaluate({"search": UNSCORED}, TWO_ROLLOUTS) == "evaluate"
    two_samples = mcts.MCTSParams(rollouts=2, reward_samples=2)
    assert next_after_evaluate({"search": scored(UNSCORED, 40)}, two_samples) == "evaluate"
    assert next_after_evaluate({"search": scored(scored(UNSCORED, 40), 60)}, two_samples) == "critique"
    refined, _ = mcts.expand(scored(UNSCORED, 40), 0, critique="c", thought="t", answer="refined")
    assert next_after_evaluate({"search": refined}, TWO_ROLLOUTS) == "evaluate"  # the refined answer waits for its score


def test_after_evaluate_critiques_until_the_rollouts_are_done():
    draft_scored = scored(UNSCORED, 40)
    assert next_after_evaluate({"search": draft_scored}, TWO_ROLLOUTS) == "critique"
    after_one = one_rollout(draft_scored, 60)
    assert after_one["rollouts_done"] == 1
    assert next_after_evaluate({"search": after_one}, TWO_ROLLOUTS) == "critique"
    assert next_after_evaluate({"search": after_one}, mcts.MCTSParams(rollouts=1)) == "finish"
    assert next_after_evaluate({"search": one_rollout(after_one, 70)}, TWO_ROLLOUTS) == "finish"
    assert next_after_evaluate({"search": draft_scored}, mcts.MCTSParams(rollouts=0)) == "finish"


def test_after_evaluate_stops_early_once_an_answer_is_good_enough():
    # Q of one score 90 is (min + mean) / 2 = 90.
    good_draft = scored(UNSCORED, 90)
    assert next_after_evaluate({"search": good_draft}, mcts.MCTSParams(rollouts=4, early_stop_q=90)) == "finish"
    assert next_after_evaluate({"search": good_draft}, mcts.MCTSParams(rollouts=4, early_stop_q=91)) == "critique"


def test_after_evaluate_finishes_a_failed_step_at_once():
    # Even with a score still missing: the error wins.
    assert next_after_evaluate({"search": UNSCORED, "error": "evaluate: HTTP 500 after 3 attempt(s)"}, TWO_ROLLOUTS) == "finish"
    assert next_after_evaluate({"search": scored(UNSCORED, 40), "error": ""}, TWO_ROLLOUTS) == "critique"


def test_an_unparsed_reply_in_prose_becomes_the_refined_answer():
    rewrite = "The loss is the mean of squared errors [1], written {1/n} sum (y - y_hat)^2."  # braces, but no JSON
    assert unparsed_refinement(f"\n  {rewrite}  \n", "old answer") == RefineResponse(thought="(unparsed reply)", answer=rewrite)


@pytest.mark.parametrize(
    "reply",
    [
        "",
        "   \n ",
        '{"thought": "added the formula", "answer": "The loss is',  # JSON cut off
        '[{"answer": "a list"}]',
        '```json\n{"thought": "t", "answer": "a"}\n```',
        'Here is my rewrite: { "answer": "The loss is',  # broken JSON after a preamble
        "Sure! {'thought': 'shorter'}",
        "I'm sorry, but I can't help with that.",
        "As an AI language model, I am unable to rewrite this answer.",
    ],
)
def test_an_unparsed_reply_without_a_usable_rewrite_keeps_the_answer(reply):
    assert unparsed_refinement(reply, "old answer") == RefineResponse(thought="(unparsed reply)", answer="old answer")


def test_the_plan_call_has_room_for_max_steps_steps():
    from deepstep.nodes.decompose import PLAN_CHARS_PER_STEP, _room_for_the_plan

    default = Settings.build(base_url="http://127.0.0.1:9/v1")
    assert _room_for_the_plan(default) is default  # 8 steps fit the default 50,000 characters
    big = Settings.build(base_url="http://127.0.0.1:9/v1", max_steps=500)
    assert _room_for_the_plan(big).max_reply_chars == 500 * PLAN_CHARS_PER_STEP == 300_000
    assert big.max_reply_chars == 50_000  # the other calls keep the cap
