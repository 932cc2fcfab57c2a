"""MCTSr: Monte Carlo tree self-refine over candidate answers (docs/mcts.md: the algorithm, its formulas and calls).

A pure, deterministic algorithm: given the scores it is fed, it always makes the same
choices. The search is a plain dict (``Search``) so it can live in checkpointed graph
state; every function returns a new dict and never changes its argument.

The graph runs one LLM call per node (critique, refine, evaluate) using the primitives
``select``, ``expand``, ``add_reward`` and ``backpropagate``; ``run_mctsr`` drives the same
primitives in a plain loop with injected callables, for notebooks and unit tests.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypedDict

EPS = 1e-10
REWARD_MIN, REWARD_MAX = -100, 100
SUPPRESS_ABOVE, SUPPRESS_BY = 95, 5


class SearchNode(TypedDict):
    id: int
    parent: int | None
    children: list[int]
    answer: str
    thought: str
    critique: str  # the critique that produced this node ("" for the root)
    rewards: list[float]
    q: float | None
    visits: int


class Search(TypedDict):
    nodes: list[SearchNode]
    rollouts_done: int
    selections: list[int]  # the node selected for expansion in each rollout


@dataclass(frozen=True)
class MCTSParams:
    rollouts: int = 2
    exploration_c: float = 1.4
    max_children: int = 2
    reward_samples: int = 1
    early_stop_q: float | None = None


def suppress_reward(raw: float) -> float:
    """Clamp to [-100, 100], then take 5 off anything above 95 (full-score suppression)."""
    reward = max(REWARD_MIN, min(REWARD_MAX, raw))
    return reward - SUPPRESS_BY if reward > SUPPRESS_ABOVE else reward


# Points off the critic's score for an answer all of whose claims are unsupported by their cited passages.
UNSUPPORTED_PENALTY = 50.0


def claim_adjusted_score(score: float, unsupported_share: float) -> float:
    """The critic's score less ``UNSUPPORTED_PENALTY`` times the share of the answer's claims its cited
    passages do not back (docs/mcts.md): refinement learns to fix or drop invented claims."""
    return score - UNSUPPORTED_PENALTY * unsupported_share


def q_value(rewards: list[float]) -> float:
    """Q = (min + mean) / 2: one bad sample drags the node down."""
    return (min(rewards) + sum(rewards) / len(rewards)) / 2


def new_search(draft: str, thought: str = "") -> Search:
    root: SearchNode = {
        "id": 0,
        "parent": None,
        "children": [],
        "answer": draft,
        "thought": thought,
        "critique": "",
        "rewards": [],
        "q": None,
        "visits": 0,
    }
    return {"nodes": [root], "rollouts_done": 0, "selections": []}


def add_reward(search: Search, node_id: int, raw_reward: float) -> Search:
    """Record one evaluator score for a node (suppressed) and set its Q from its rewards."""
    result = copy.deepcopy(search)
    node = result["nodes"][node_id]
    node["rewards"].append(suppress_reward(raw_reward))
    node["q"] = q_value(node["rewards"])
    return result


def needs_reward(search: Search, params: MCTSParams) -> int | None:
    """The node still waiting for evaluator samples, if any (only the newest can be)."""
    newest = search["nodes"][-1]
    return newest["id"] if len(newest["rewards"]) < params.reward_samples else None


def is_fully_expanded(search: Search, node_id: int, max_children: int) -> bool:
    node = search["nodes"][node_id]
    children = [search["nodes"][c] for c in node["children"]]
    if len(children) >= max_children:
        return True
    return any(_q(child) > _q(node) for child in children)


def uct(search: Search, node_id: int, exploration_c: float) -> float:
    node = search["nodes"][node_id]
    if node["parent"] is None:
        return math.inf
    parent = search["nodes"][node["parent"]]
    return _q(node) + exploration_c * math.sqrt(math.log(parent["visits"] + 1) / (node["visits"] + EPS))


def select(search: Search, params: MCTSParams) -> int:
    """The node to expand: highest UCT among nodes not fully expanded; ties go to the earlier node."""
    candidates = [n["id"] for n in search["nodes"] if not is_fully_expanded(search, n["id"], params.max_children)]
    if not candidates:  # cannot happen with max_children >= 1 (a leaf is never full), kept for safety
        candidates = [n["id"] for n in search["nodes"]]
    best = candidates[0]
    for node_id in candidates[1:]:
        if uct(search, node_id, params.exploration_c) > uct(search, best, params.exploration_c):
            best = node_id
    return best


def expand(search: Search, parent_id: int, *, critique: str, thought: str, answer: str) -> tuple[Search, int]:
    """Add a refined answer as a child of ``parent_id``; it has no rewards yet."""
    result = copy.deepcopy(search)
    child_id = len(result["nodes"])
    result["nodes"].append(
        {
            "id": child_id,
            "parent": parent_id,
            "children": [],
            "answer": answer,
            "thought": thought,
            "critique": critique,
            "rewards": [],
            "q": None,
            "visits": 0,
        }
    )
    result["nodes"][parent_id]["children"].append(child_id)
    result["selections"].append(parent_id)
    return result, child_id


def backpropagate(search: Search, child_id: int) -> Search:
    """From the new node's parent up to the root: Q = (Q + best child Q) / 2, visits += 1.

    Completes a rollout.
    """
    result = copy.deepcopy(search)
    nodes = result["nodes"]
    parent_id = nodes[child_id]["parent"]
    while parent_id is not None:
        parent = nodes[parent_id]
        best_child_q = max(_q(nodes[c]) for c in parent["children"])
        parent["q"] = (_q(parent) + best_child_q) / 2
        parent["visits"] += 1
        parent_id = parent["parent"]
    result["rollouts_done"] += 1
    return result


def best_node(search: Search) -> SearchNode:
    """The node with the highest Q; ties go to the earlier node."""
    scored = [n for n in search["nodes"] if n["q"] is not None] or search["nodes"][:1]
    best = scored[0]
    for node in scored[1:]:
        if _q(node) > _q(best):
            best = node
    return best


def is_done(search: Search, params: MCTSParams) -> bool:
    if search["rollouts_done"] >= params.rollouts:
        return True
    if params.early_stop_q is not None and search["nodes"][0]["q"] is not None:
        return _q(best_node(search)) >= params.early_stop_q
    return False


def _q(node: SearchNode) -> float:
    return node["q"] if node["q"] is not None else -math.inf


Critic = Callable[[str], str]
Refiner = Callable[[str, str], tuple[str, str]]
Evaluator = Callable[[str], float]


def run_mctsr(draft: str, critique: Critic, refine: Refiner, evaluate: Evaluator, params: MCTSParams) -> Search:
    """The whole search in one loop; the graph performs the same steps as separate nodes.

    ``critique(answer) -> critique``, ``refine(answer, critique) -> (thought, answer)``,
    ``evaluate(answer) -> raw reward``.
    """
    search = new_search(draft)
    for _ in range(params.reward_samples):
        search = add_reward(search, 0, evaluate(draft))
    while not is_done(search, params):
        parent_id = select(search, params)
        parent_answer = search["nodes"][parent_id]["answer"]
        critique_text = critique(parent_answer)
        thought, answer = refine(parent_answer, critique_text)
        search, child_id = expand(search, parent_id, critique=critique_text, thought=thought, answer=answer)
        for _ in range(params.reward_samples):
            search = add_reward(search, child_id, evaluate(answer))
        search = backpropagate(search, child_id)
    return search


def trace_summary(search: Search) -> dict[str, Any]:
    """Critiques in expansion order, refinements with their mean score, mean rewards in node order."""

    def score(node: SearchNode) -> float:
        return sum(node["rewards"]) / len(node["rewards"]) if node["rewards"] else 0.0

    children = search["nodes"][1:]
    return {
        "critiques": [n["critique"] for n in children],
        "refinements": [{"thought": n["thought"], "answer": n["answer"], "answer_score": score(n)} for n in children],
        "rewards": [score(n) for n in search["nodes"] if n["rewards"]],
    }
