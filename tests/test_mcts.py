"""MCTSr math against hand-computed numbers (SPEC section 3), with scripted scores and no LLM."""

import math

import pytest

from deepstep import mcts
from deepstep.mcts import MCTSParams


def scripted(scores):
    """An evaluator that returns the given scores in order, and records what it saw."""
    remaining = list(scores)
    seen = []

    def evaluate(answer):
        seen.append(answer)
        return remaining.pop(0)

    return evaluate, seen


def critic(answer):
    return f"critique of {answer}"


def refiner(answer, critique):
    return f"thought on {answer}", f"{answer}+"


def test_reward_suppression_and_clamping():
    assert mcts.suppress_reward(95) == 95
    assert mcts.suppress_reward(96) == 91
    assert mcts.suppress_reward(100) == 95
    assert mcts.suppress_reward(150) == 95
    assert mcts.suppress_reward(-150) == -100


def test_q_is_mean_of_min_and_mean():
    assert mcts.q_value([50]) == 50
    assert mcts.q_value([91, 40]) == pytest.approx((40 + 65.5) / 2)


def test_two_rollouts_hand_computed():
    evaluate, seen = scripted([50, 60, 98])
    search = mcts.run_mctsr("draft", critic, refiner, evaluate, MCTSParams(rollouts=2))
    root, first, second = search["nodes"]
    # Rollout 1 expands the root; the child (60) beats the root (50): root Q = (50 + 60) / 2.
    # Rollout 2: the root is fully expanded (a child beats it), so the child is expanded.
    assert [n["parent"] for n in search["nodes"]] == [None, 0, 1]
    assert search["selections"] == [0, 1]
    assert second["rewards"] == [93]  # 98 suppressed by 5
    assert second["q"] == 93
    assert first["q"] == pytest.approx((60 + 93) / 2)  # 76.5
    assert root["q"] == pytest.approx(((50 + 60) / 2 + 76.5) / 2)  # 65.75
    assert (root["visits"], first["visits"], second["visits"]) == (2, 1, 0)
    assert mcts.best_node(search)["id"] == 2
    assert seen == ["draft", "draft+", "draft++"]
    assert first["critique"] == "critique of draft" and second["critique"] == "critique of draft+"


def test_root_is_reselected_until_fully_expanded():
    evaluate, _ = scripted([80, 40, 70, 10])
    search = mcts.run_mctsr("d", critic, refiner, evaluate, MCTSParams(rollouts=3))
    # Rollout 1: child 1 (40) is worse than the root, so the root stays open and is chosen again.
    # Rollout 2: child 2 (70) -> the root now has max_children=2 children: fully expanded.
    # Rollout 3: both children are unvisited; UCT = Q + c*sqrt(ln(3)/eps) favours child 2 (Q 70 > 40).
    assert search["selections"] == [0, 0, 2]
    root = search["nodes"][0]
    # Root Q: 80 -> (80 + 40) / 2 = 60 -> (60 + 70) / 2 = 65; rollout 3 adds child 3 (10) under
    # child 2: Q2 = (70 + 10) / 2 = 40, so the root's best child Q is 40 and root = (65 + 40) / 2.
    assert search["nodes"][2]["q"] == pytest.approx(40)
    assert root["q"] == pytest.approx(52.5)
    assert root["visits"] == 3


def test_uct_formula_and_infinite_root():
    search = mcts.new_search("d")
    search = mcts.add_reward(search, 0, 50)
    search, child = mcts.expand(search, 0, critique="c", thought="t", answer="a")
    search = mcts.add_reward(search, child, 30)
    search["nodes"][0]["visits"] = 3
    search["nodes"][child]["visits"] = 1
    assert mcts.uct(search, 0, 1.4) == math.inf
    assert mcts.uct(search, child, 1.4) == pytest.approx(30 + 1.4 * math.sqrt(math.log(4) / (1 + 1e-10)))


def test_full_expansion_rule():
    search = mcts.add_reward(mcts.new_search("d"), 0, 50)
    search, a = mcts.expand(search, 0, critique="c", thought="t", answer="a")
    search = mcts.add_reward(search, a, 40)
    assert not mcts.is_fully_expanded(search, 0, max_children=2)  # one child, not better
    search = mcts.add_reward(search, a, 100)  # a now has rewards [40, 95]: Q = (40 + 67.5) / 2 = 53.75 > 50
    assert mcts.is_fully_expanded(search, 0, max_children=2)
    assert mcts.is_fully_expanded(mcts.add_reward(mcts.new_search("d"), 0, 1), 0, max_children=0) is True


def test_backpropagation_walks_to_root():
    search = mcts.add_reward(mcts.new_search("d"), 0, 20)
    search, a = mcts.expand(search, 0, critique="c1", thought="", answer="a")
    search = mcts.backpropagate(mcts.add_reward(search, a, 40), a)  # root: (20 + 40) / 2 = 30
    search, b = mcts.expand(search, a, critique="c2", thought="", answer="b")
    search = mcts.backpropagate(mcts.add_reward(search, b, 80), b)
    nodes = search["nodes"]
    assert nodes[a]["q"] == pytest.approx((40 + 80) / 2)  # 60
    assert nodes[0]["q"] == pytest.approx((30 + 60) / 2)  # 45: max child Q of the root is a's new Q
    assert [n["visits"] for n in nodes] == [2, 1, 0]
    assert search["rollouts_done"] == 2


def test_reward_samples_take_min_and_mean():
    evaluate, seen = scripted([50, 70, 96, 40])
    search = mcts.run_mctsr("d", critic, refiner, evaluate, MCTSParams(rollouts=1, reward_samples=2))
    assert len(seen) == 4
    assert search["nodes"][0]["rewards"] == [50, 70]
    assert search["nodes"][1]["rewards"] == [91, 40]
    assert search["nodes"][1]["q"] == pytest.approx((40 + 65.5) / 2)


def test_early_stop():
    evaluate, seen = scripted([50, 60, 70, 80])
    search = mcts.run_mctsr("d", critic, refiner, evaluate, MCTSParams(rollouts=3, early_stop_q=60))
    assert search["rollouts_done"] == 1 and len(seen) == 2


def test_zero_rollouts_keeps_draft():
    evaluate, _ = scripted([10])
    search = mcts.run_mctsr("draft", critic, refiner, evaluate, MCTSParams(rollouts=0))
    assert mcts.best_node(search)["answer"] == "draft"


def test_best_node_ties_go_to_earlier():
    search = mcts.add_reward(mcts.new_search("d"), 0, 50)
    search, a = mcts.expand(search, 0, critique="c", thought="", answer="a")
    search = mcts.backpropagate(mcts.add_reward(search, a, 50), a)
    assert mcts.best_node(search)["id"] == 0


def test_functions_do_not_mutate_their_input():
    search = mcts.add_reward(mcts.new_search("d"), 0, 50)
    before = repr(search)
    grown, child = mcts.expand(search, 0, critique="c", thought="t", answer="a")
    mcts.backpropagate(mcts.add_reward(grown, child, 70), child)
    assert repr(search) == before


def test_trace_summary_for_dreamsboard():
    evaluate, _ = scripted([50, 60, 98])
    summary = mcts.trace_summary(mcts.run_mctsr("draft", critic, refiner, evaluate, MCTSParams(rollouts=2)))
    assert summary["critiques"] == ["critique of draft", "critique of draft+"]
    assert [r["answer_score"] for r in summary["refinements"]] == [60.0, 93.0]
    assert summary["rewards"] == [50.0, 60.0, 93.0]
