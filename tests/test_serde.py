"""The DiGraph survives the SQLite checkpointer without pickle."""

import pickle

import networkx as nx
import pytest
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

from deepstep import step_tree
from deepstep.checkpoint import sqlite_checkpointer
from deepstep.serde import TreeSerializer
from deepstep.step_tree import StepSpec


def sample_tree():
    built = step_tree.build_tree("什么是损失函数？", "- outline", [StepSpec("定义", "d", "0"), StepSpec("MSE", "m", "0>1")], max_steps=5, max_depth=3)
    first = step_tree.step_ids(built.tree)[0]
    return step_tree.with_step_updates(
        built.tree,
        [
            {
                "id": first,
                "answer": "A [1]",
                "contexts": [{"ref_id": "r", "chunk_id": "r:0", "score": 1.5, "text": "t"}],
                "mcts": {"nodes": [{"id": 0, "q": 12.5}], "best": 0},
            }
        ],
    )


def test_default_serializer_cannot_store_a_plain_digraph():
    with pytest.raises(TypeError):
        JsonPlusSerializer(pickle_fallback=False).dumps_typed({"tree": nx.DiGraph(sample_tree())})


def test_default_serializer_stores_a_step_tree_as_node_link_msgpack():
    # What the `langgraph dev` runtime relies on: no pickle, and the tree comes back whole.
    serde, tree = JsonPlusSerializer(pickle_fallback=False), sample_tree()
    kind, payload = serde.dumps_typed({"tree": tree})
    assert kind == "msgpack"
    loaded = serde.loads_typed((kind, payload))["tree"]
    assert type(loaded) is step_tree.StepTree and step_tree.trees_equal(loaded, tree)


def test_roundtrip_is_msgpack_not_pickle():
    serde = TreeSerializer()
    kind, payload = serde.dumps_typed({"tree": sample_tree(), "other": [1, "x"]})
    assert kind == "msgpack" and not payload.startswith(b"\x80")  # a pickle would start with its PROTO opcode
    with pytest.raises(NotImplementedError):  # a pickled checkpoint is refused, never executed
        serde.loads_typed(("pickle", pickle.dumps({"tree": 1})))
    loaded = serde.loads_typed((kind, payload))
    assert isinstance(loaded["tree"], nx.DiGraph)
    tree = sample_tree()
    again = serde.loads_typed(serde.dumps_typed(tree))
    assert type(again) is step_tree.StepTree and step_tree.trees_equal(tree, again)


def test_roundtrip_through_sqlite_checkpointer(tmp_path):
    from typing import TypedDict

    from langgraph.graph import END, START, StateGraph

    class S(TypedDict):
        tree: nx.DiGraph

    tree = sample_tree()
    builder = StateGraph(S)
    builder.add_node("keep", lambda state: {"tree": step_tree.with_step_updates(state["tree"], [])})
    builder.add_edge(START, "keep")
    builder.add_edge("keep", END)
    config = {"configurable": {"thread_id": "t1"}}
    with sqlite_checkpointer(tmp_path / "c.sqlite") as saver:
        builder.compile(checkpointer=saver).invoke({"tree": tree}, config)
    with sqlite_checkpointer(tmp_path / "c.sqlite") as saver:
        loaded = builder.compile(checkpointer=saver).get_state(config).values["tree"]
    assert type(loaded) is step_tree.StepTree
    assert step_tree.trees_equal(loaded, tree)
    assert list(loaded.nodes) == list(tree.nodes)
