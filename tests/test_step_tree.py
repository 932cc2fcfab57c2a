"""The step tree: validation of proposed steps, tree order, and pure updates."""

import networkx as nx

from deepstep import step_tree, tree_encoding
from deepstep.step_tree import ROOT_ID, StepSpec


def specs(*levels):
    return [StepSpec(name=f"step {lv}", description=f"about {lv}", level=lv) for lv in levels]


def build(*levels, max_steps=50, max_depth=5):
    return step_tree.build_tree("Q?", "outline", specs(*levels), max_steps=max_steps, max_depth=max_depth)


def levels(tree):
    return [tree.nodes[n]["level"] for n in step_tree.step_ids(tree)]


def test_valid_levels_build_parent_edges_in_tree_order():
    built = build("0", "0>2", "0>1", "0>1>1", "1", "0>10")
    assert built.warnings == []
    assert levels(built.tree) == ["0", "0>1", "0>1>1", "0>2", "0>10", "1"]
    by_level = {built.tree.nodes[n]["level"]: n for n in step_tree.step_ids(built.tree)}
    assert set(built.tree.predecessors(by_level["0>1>1"])) == {by_level["0>1"]}
    assert set(built.tree.predecessors(by_level["1"])) == {ROOT_ID}
    assert nx.is_tree(built.tree)
    assert built.tree.nodes[ROOT_ID] == {"kind": "question", "question": "Q?", "outline": "outline"}


def test_duplicate_and_invalid_levels_are_dropped_with_warnings():
    built = step_tree.build_tree(
        "Q?",
        "",
        [*specs("0", "0>1"), StepSpec("again", "", "0>1"), StepSpec("bad", "", "one"), StepSpec("", "", "0>2")],
        max_steps=10,
        max_depth=3,
    )
    assert levels(built.tree) == ["0", "0>1"]
    assert len(built.warnings) == 3
    assert any("already used" in w for w in built.warnings)


def test_level_spelling_is_normalized():
    built = step_tree.build_tree(
        "Q", "", [StepSpec("a", "", " 0 "), StepSpec("b", "", "0 > 1"), StepSpec("c", "", "0>>02")], max_steps=9, max_depth=3
    )
    assert levels(built.tree) == ["0", "0>1", "0>2"]


def test_orphan_attached_to_nearest_ancestor_and_renumbered():
    built = build("0", "0>1", "0>3>1", "0>3>1>1")
    assert levels(built.tree) == ["0", "0>1", "0>2", "0>2>1"]
    assert any("had no parent step" in w for w in built.warnings)
    moved = next(n for n in step_tree.step_ids(built.tree) if built.tree.nodes[n]["name"] == "step 0>3>1")
    assert built.tree.nodes[moved]["level"] == "0>2"
    child = next(n for n in step_tree.step_ids(built.tree) if built.tree.nodes[n]["name"] == "step 0>3>1>1")
    assert list(built.tree.predecessors(child)) == [moved]


def test_orphan_without_any_ancestor_goes_under_the_question():
    built = build("0", "5>1")
    assert levels(built.tree) == ["0", "1"]


def test_caps_on_depth_and_count_keep_parents():
    built = build("0", "0>1", "0>1>1", "0>1>1>1", max_depth=3)
    assert levels(built.tree) == ["0", "0>1", "0>1>1"]
    built = build("0", "0>1", "0>1>1", "0>2", "1", max_steps=3)
    assert levels(built.tree) == ["0", "0>1", "0>1>1"]
    assert any("max_steps=3" in w for w in built.warnings)


def test_ids_are_kept_for_known_levels():
    built = step_tree.build_tree("Q", "", specs("0", "0>1"), max_steps=5, max_depth=3, ids={"0": "keep-me"})
    assert "keep-me" in built.tree


def test_updates_return_a_new_tree():
    tree = build("0", "0>1").tree
    first = step_tree.step_ids(tree)[0]
    updated = step_tree.with_step_updates(tree, [{"id": first, "answer": "A", "status": "done"}, {"id": "gone", "answer": "x"}])
    assert tree.nodes[first]["answer"] == "" and updated.nodes[first]["answer"] == "A"
    assert "gone" not in updated


def test_ancestors_and_node_link_roundtrip():
    tree = build("0", "0>1", "0>1>1").tree
    leaf = step_tree.step_ids(tree)[-1]
    assert [a["level"] for a in step_tree.ancestors(tree, leaf)] == ["0", "0>1"]
    again = tree_encoding.from_data(tree_encoding.to_data(tree))
    assert isinstance(again, nx.DiGraph) and step_tree.trees_equal(tree, again)


def test_steps_from_outline_follow_bullet_nesting():
    outline = "# Loss\n- Definition\n  - Formula\n  - Intuition\n- Examples\n    * MSE\n1. Choosing one\ntext line"
    specs = step_tree.steps_from_outline("Q?", outline, max_steps=10, max_depth=3)
    assert [(s.name, s.level) for s in specs] == [
        ("Loss", "0"),
        ("Definition", "1"),
        ("Formula", "1>1"),
        ("Intuition", "1>2"),
        ("Examples", "2"),
        ("MSE", "2>1"),
        ("Choosing one", "3"),
    ]
    built = step_tree.build_tree("Q?", outline, specs, max_steps=10, max_depth=3)
    assert built.warnings == []


def test_steps_from_outline_without_bullets_is_one_step():
    specs = step_tree.steps_from_outline("What is X?", "X is a thing.\nMore prose.", max_steps=5, max_depth=3)
    assert [(s.name, s.level, s.description) for s in specs] == [("What is X?", "0", "X is a thing.")]
