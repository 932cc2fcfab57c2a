"""Property tests: any proposed level list gives a valid tree, serialization is the identity,
and MCTSr keeps its invariants for any scores and parameters."""

from __future__ import annotations

import copy
import json

import networkx as nx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deepstep import mcts, step_tree, tree_encoding
from deepstep.mcts import REWARD_MAX, REWARD_MIN, SUPPRESS_BY, MCTSParams
from deepstep.step_tree import ROOT_ID, StepSpec

PROPERTY_SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TOP_REWARD = REWARD_MAX - SUPPRESS_BY  # 95: the highest reward after full-score suppression

valid_levels = st.lists(st.integers(0, 4), min_size=1, max_size=5).map(lambda parts: ">".join(map(str, parts)))
messy_levels = st.one_of(
    valid_levels,
    valid_levels.map(lambda level: f" {level.replace('>', ' > ')} "),  # spaces the model may add
    st.sampled_from(["", ">", "0>>1", "1>", "a", "0>x", "-1", "0.1", "0>1>"]),
    st.text(max_size=6),
)
names = st.one_of(st.text(min_size=1, max_size=12), st.sampled_from(["", "   "]))
specs = st.lists(st.builds(StepSpec, name=names, description=st.text(max_size=20), level=messy_levels), max_size=25)


def assert_valid_tree(tree: nx.DiGraph, *, max_steps: int, max_depth: int) -> None:
    assert nx.is_tree(tree) and nx.is_arborescence(tree)
    assert next(nx.topological_sort(tree)) == ROOT_ID and tree.in_degree(ROOT_ID) == 0
    ids = step_tree.step_ids(tree)
    levels = [tree.nodes[n]["level"] for n in ids]
    assert len(ids) == len(set(levels)) <= max_steps
    by_level = dict(zip(levels, ids, strict=True))
    for step_id, level in zip(ids, levels, strict=True):
        assert step_tree.LEVEL_PATTERN.match(level) and step_tree.normalize_level(level) == level
        assert step_tree.level_depth(level) < max_depth
        parent = step_tree.parent_level(level)
        assert list(tree.predecessors(step_id)) == [by_level[parent] if parent else ROOT_ID]
        assert tree.nodes[step_id]["name"].strip() == tree.nodes[step_id]["name"] != ""
    # tree order is depth-first by level numbers
    assert levels == sorted(levels, key=step_tree.level_parts)


@PROPERTY_SETTINGS
@given(proposed=specs, max_steps=st.integers(1, 30), max_depth=st.integers(1, 6))
def test_any_proposed_step_list_gives_a_valid_tree(proposed, max_steps, max_depth):
    before = copy.deepcopy(proposed)
    built = step_tree.build_tree("Q?", "outline", proposed, max_steps=max_steps, max_depth=max_depth)
    assert proposed == before
    assert_valid_tree(built.tree, max_steps=max_steps, max_depth=max_depth)
    usable = {step_tree.normalize_level(s.level) for s in proposed if s.name.strip() and step_tree.normalize_level(s.level)}
    assert len(step_tree.step_ids(built.tree)) <= len(usable)
    if built.tree.number_of_nodes() - 1 < len(proposed):
        assert built.warnings  # whatever was dropped or moved is reported


@st.composite
def well_formed_plans(draw):
    """Unique levels whose parents all exist, within the depth and step limits."""
    levels = ["0"]
    for _ in range(draw(st.integers(0, 15))):
        parent = draw(st.sampled_from([None, *levels]))
        siblings = [lv for lv in levels if step_tree.parent_level(lv) == parent]
        index = max((step_tree.level_parts(lv)[-1] for lv in siblings), default=-1 if parent is None else 0) + draw(st.integers(1, 3))
        levels.append(str(index) if parent is None else f"{parent}>{index}")
    order = draw(st.permutations(levels))
    return [StepSpec(name=f"step {level}", description="", level=level) for level in order]


@PROPERTY_SETTINGS
@given(plan=well_formed_plans())
def test_a_well_formed_plan_is_kept_exactly_without_warnings(plan):
    depth = max(step_tree.level_depth(s.level) for s in plan) + 1
    built = step_tree.build_tree("Q?", "", plan, max_steps=len(plan), max_depth=depth)
    assert built.warnings == []
    assert sorted(built.tree.nodes[n]["level"] for n in step_tree.step_ids(built.tree)) == sorted(s.level for s in plan)
    assert_valid_tree(built.tree, max_steps=len(plan), max_depth=depth)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


@st.composite
def filled_trees(draw):
    plan = draw(well_formed_plans())
    built = step_tree.build_tree(draw(st.text(max_size=30)), draw(st.text(max_size=30)), plan, max_steps=100, max_depth=6)
    updates = [
        {
            "id": step_id,
            "answer": draw(st.text(max_size=40)),
            "status": draw(st.sampled_from(["pending", "done", "failed"])),
            "contexts": draw(
                st.lists(st.fixed_dictionaries({"ref_id": st.text(max_size=8), "score": st.floats(0, 50), "text": st.text(max_size=30)}), max_size=3)
            ),
            "mcts": {"extra": draw(json_values)},
        }
        for step_id in step_tree.step_ids(built.tree)
    ]
    return step_tree.with_step_updates(built.tree, updates)


@PROPERTY_SETTINGS
@given(tree=filled_trees())
def test_serialization_round_trips_are_the_identity(tree):
    data = tree_encoding.to_data(tree)
    assert step_tree.trees_equal(tree_encoding.from_data(data), tree)
    assert step_tree.trees_equal(tree_encoding.from_data(json.loads(json.dumps(data))), tree)  # the JSON export path
    serializer = tree_encoding.TreeSerializer()
    restored = serializer.loads_typed(serializer.dumps_typed({"tree": tree, "trees": [tree]}))
    assert step_tree.trees_equal(restored["tree"], tree) and step_tree.trees_equal(restored["trees"][0], tree)
    assert isinstance(restored["tree"], nx.DiGraph)
    assert step_tree.signature(restored["tree"]) == step_tree.signature(tree)


mcts_params = st.builds(
    MCTSParams,
    rollouts=st.integers(0, 8),
    exploration_c=st.floats(0, 4),
    max_children=st.integers(1, 3),
    reward_samples=st.integers(1, 3),
    early_stop_q=st.one_of(st.none(), st.floats(-100, 100)),
)


def descendants(search: mcts.Search, node_id: int) -> int:
    children = search["nodes"][node_id]["children"]
    return len(children) + sum(descendants(search, child) for child in children)


@PROPERTY_SETTINGS
@given(params=mcts_params, scores=st.lists(st.integers(-150, 150) | st.floats(-1e6, 1e6), min_size=1, max_size=40))
def test_mctsr_invariants_hold_for_any_scores(params, scores):
    feed = iter(scores * 100)

    def evaluate(_answer: str) -> float:
        return next(feed)

    search = mcts.run_mctsr("draft", lambda a: f"critique of {a}", lambda a, c: ("thought", f"{a}+"), evaluate, params)
    nodes = search["nodes"]
    assert len(nodes) == 1 + search["rollouts_done"] and search["rollouts_done"] <= params.rollouts
    if params.early_stop_q is None:
        assert search["rollouts_done"] == params.rollouts
    assert len(search["selections"]) == search["rollouts_done"]
    for index, node in enumerate(nodes):
        assert node["id"] == index
        # Visits: one per rollout that added a node below this one.
        assert node["visits"] == descendants(search, index)
        assert len(node["rewards"]) == params.reward_samples
        assert all(REWARD_MIN <= r <= TOP_REWARD for r in node["rewards"])
        assert node["q"] is not None and REWARD_MIN <= node["q"] <= TOP_REWARD
        if not node["children"]:
            assert node["q"] == mcts.q_value(node["rewards"])
        for child in node["children"]:
            assert nodes[child]["parent"] == index
    for rollout, parent in enumerate(search["selections"]):
        assert nodes[rollout + 1]["parent"] == parent
    best = mcts.best_node(search)
    assert best["q"] == max(n["q"] for n in nodes)
    assert best["id"] == min(n["id"] for n in nodes if n["q"] == best["q"])  # ties go to the earlier node


@PROPERTY_SETTINGS
@given(params=mcts_params, first=st.integers(-150, 150), second=st.integers(-150, 150))
def test_mcts_primitives_never_change_their_input(params, first, second):
    search = mcts.add_reward(mcts.new_search("draft"), 0, first)
    frozen = copy.deepcopy(search)
    parent = mcts.select(search, params)
    expanded, child = mcts.expand(search, parent, critique="c", thought="t", answer="a")
    rewarded = mcts.add_reward(expanded, child, second)
    frozen_rewarded = copy.deepcopy(rewarded)
    mcts.backpropagate(rewarded, child)
    assert search == frozen and rewarded == frozen_rewarded
