"""The step tree's checkpoint encoding (deepstep.tree_encoding): a tree written into a checkpoint comes
back a ``StepTree`` equal to the original under every checkpointer deepstep may run with, never pickled."""

from __future__ import annotations

import pickle
import subprocess
import sys
import zlib
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import networkx as nx
import pytest
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.serde import _msgpack
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

from deepstep import step_tree, tree_encoding
from deepstep.checkpoint import postgres_checkpointer, sqlite_checkpointer
from deepstep.errors import InputError
from deepstep.graph import build_graph
from deepstep.step_tree import StepSpec
from deepstep.tree_encoding import StepTree, TreeSerializer

try:  # the dev server behind Studio: test_studio's `deepstep studio` fixture (one server per module) and its SDK client
    from test_studio import client, server  # noqa: F401
except pytest.skip.Exception:  # the studio extra is not installed

    @pytest.fixture
    def client():
        pytest.skip("the studio extra is not installed")


OpenSaver = Callable[[], AbstractContextManager[BaseCheckpointSaver]]


def sample_tree() -> StepTree:
    """Two levels, non-ASCII text, and the nested values a finished step holds (passages, an MCTSr search)."""
    steps = [StepSpec("定义", "d", "0"), StepSpec("MSE", "m", "0>1"), StepSpec("交叉熵", "c", "1")]
    built = step_tree.build_tree("什么是损失函数？", "- outline", steps, max_steps=5, max_depth=3)
    first = step_tree.step_ids(built.tree)[0]
    return step_tree.with_step_updates(
        built.tree,
        [
            {
                "id": first,
                "answer": "A [1]",
                "status": "done",
                "contexts": [{"ref_id": "r", "chunk_id": "r:0", "score": 1.5, "text": "t"}],
                "mcts": {"nodes": [{"id": 0, "q": 12.5, "children": []}], "best": 0},
            }
        ],
    )


@pytest.fixture
def open_saver(request, tmp_path, monkeypatch) -> OpenSaver:
    """Opens the checkpointer named by the test's parameter; each call reads the same checkpoints."""
    kind = request.param
    if kind == "deepstep sqlite":
        return lambda: sqlite_checkpointer(tmp_path / "checkpoints.sqlite")
    if kind == "deepstep postgres":
        url = request.getfixturevalue("postgres_url")
        return lambda: postgres_checkpointer(url)
    if kind == "InMemorySaver, strict msgpack":
        # langgraph reads LANGGRAPH_STRICT_MSGPACK once, when its serde module is imported, and builds the
        # savers' default serializer then: here the flag is set afterwards, so the serializer is built after it.
        monkeypatch.setenv("LANGGRAPH_STRICT_MSGPACK", "true")
        monkeypatch.setattr(_msgpack, "STRICT_MSGPACK_ENABLED", True)
        saver = InMemorySaver(serde=JsonPlusSerializer())  # the stock default, built as in a process started in strict mode
    else:
        saver = InMemorySaver()
    if kind == "InMemorySaver, strict msgpack":  # the case is real: the serializer hands the tree back as plain data
        assert type(saver.serde.loads_typed(saver.serde.dumps_typed(sample_tree()))) is dict
    return lambda: nullcontext(saver)


def round_trip(open_saver: OpenSaver, tree: StepTree) -> object:
    """``tree`` written into a checkpoint of the deepstep graph, then read back by a fresh graph and checkpointer."""
    config = {"configurable": {"thread_id": "round-trip"}}
    with open_saver() as saver:
        build_graph(saver).update_state(config, {"question": step_tree.question_of(tree), "tree": tree}, as_node="decompose")
    with open_saver() as saver:
        return build_graph(saver).get_state(config).values["tree"]


@pytest.mark.parametrize(
    "open_saver",
    [
        "deepstep sqlite",
        pytest.param("deepstep postgres", marks=pytest.mark.slow),
        "InMemorySaver",
        "InMemorySaver, strict msgpack",
    ],
    indirect=True,
)
def test_a_checkpointed_tree_comes_back_a_step_tree_equal_to_the_original(open_saver):
    tree = sample_tree()
    loaded = round_trip(open_saver, tree)
    assert type(loaded) is StepTree
    assert step_tree.trees_equal(loaded, tree)
    assert list(loaded.nodes) == list(tree.nodes)  # the plan's order


@pytest.mark.slow
def test_the_dev_server_behind_studio_returns_a_stored_tree_whole(client):
    """``langgraph dev`` checkpoints with its own serializer; Studio reads the tree back as node-link JSON."""
    tree = sample_tree()
    thread_id = client.threads.create(graph_id="deepstep")["thread_id"]
    client.threads.update_state(thread_id, {"question": step_tree.question_of(tree), "tree": tree_encoding.to_data(tree)}, as_node="decompose")
    loaded = tree_encoding.from_data(client.threads.get_state(thread_id)["values"]["tree"])
    assert step_tree.trees_equal(loaded, tree)
    assert list(loaded.nodes) == list(tree.nodes)


def test_a_plain_digraph_needs_pickle_under_the_default_serializer():
    # Why StepTree and TreeSerializer exist.
    with pytest.raises(TypeError):
        JsonPlusSerializer(pickle_fallback=False).dumps_typed({"tree": nx.DiGraph(sample_tree())})


def test_tree_serializer_writes_msgpack_and_refuses_pickle():
    serde = TreeSerializer()
    kind, payload = serde.dumps_typed({"tree": nx.DiGraph(sample_tree()), "other": [1, "x"]})  # a plain DiGraph too
    assert kind == "msgpack+zlib" and not zlib.decompress(payload).startswith(b"\x80")  # a pickle would start with its PROTO opcode
    assert type(serde.loads_typed((kind, payload))["tree"]) is StepTree
    with pytest.raises(NotImplementedError):  # a pickled checkpoint is refused, never executed
        serde.loads_typed(("pickle", pickle.dumps({"tree": 1})))
    with pytest.raises(NotImplementedError):  # also when compressed
        serde.loads_typed(("pickle+zlib", zlib.compress(pickle.dumps({"tree": 1}))))


def test_tree_serializer_packs_as_langgraph_does_and_finds_trees_at_any_depth():
    import datetime
    import uuid

    from langchain_core.messages import AIMessage

    serde, plain = TreeSerializer(), JsonPlusSerializer(pickle_fallback=False)
    # No tree: the same bytes as LangGraph's serializer (it packs with the same options and hook).
    value = {"n": 1, "when": datetime.datetime(2026, 11, 30), "id": uuid.UUID(int=7), "message": AIMessage("hi"), "pair": (1, "x")}
    kind, payload = serde.dumps_typed(value)
    assert (zlib.decompress(payload) if kind.endswith("+zlib") else payload) == plain.dumps_typed(value)[1]
    # Trees nested in dicts, lists and tuples come back as step trees equal to the originals.
    tree = StepTree(sample_tree())
    nested = {"a": [tree, {"b": (tree,)}], "none": None}
    back = serde.loads_typed(serde.dumps_typed(nested))
    assert step_tree.trees_equal(back["a"][0], tree) and step_tree.trees_equal(back["a"][1]["b"][0], tree) and back["none"] is None
    assert [serde.loads_typed(serde.dumps_typed(raw)) for raw in (None, b"x", bytearray(b"y"))] == [None, b"x", bytearray(b"y")]


def test_large_values_are_stored_compressed_and_small_ones_and_older_ones_as_they_are():
    serde = TreeSerializer()
    prose = {"text": "The squared error loss averages the squared differences between predictions and targets. " * 20}
    kind, payload = serde.dumps_typed(prose)
    plain = JsonPlusSerializer(pickle_fallback=False).dumps_typed(prose)
    assert kind == "msgpack+zlib" and len(payload) < len(plain[1]) / 5 and serde.loads_typed((kind, payload)) == prose
    assert serde.dumps_typed({"n": 1})[0] == "msgpack"  # under COMPRESS_FROM_BYTES: compressing would not pay
    assert serde.loads_typed(plain) == prose  # written before compression


def test_a_tree_checkpointed_before_step_tree_moved_still_loads(monkeypatch):
    # Checkpoints written before deepstep.tree_encoding name the class deepstep.step_tree.StepTree.
    monkeypatch.setattr(StepTree, "__module__", "deepstep.step_tree")
    serde, tree = JsonPlusSerializer(pickle_fallback=False), sample_tree()
    stored = serde.dumps_typed({"tree": tree})
    assert b"deepstep.step_tree" in stored[1]
    monkeypatch.undo()
    loaded = serde.loads_typed(stored)["tree"]
    assert type(loaded) is StepTree and step_tree.trees_equal(loaded, tree)


def test_a_state_edit_as_node_link_data_becomes_a_step_tree_and_anything_else_is_refused():
    graph = build_graph(InMemorySaver())
    config = {"configurable": {"thread_id": "edit"}}
    tree = sample_tree()
    graph.update_state(config, {"question": "q", "tree": tree_encoding.to_data(tree)}, as_node="decompose")  # what Studio sends
    loaded = graph.get_state(config).values["tree"]
    assert type(loaded) is StepTree and step_tree.trees_equal(loaded, tree)
    with pytest.raises(InputError):
        graph.update_state(config, {"tree": ["not", "a", "tree"]}, as_node="decompose")


def test_the_tree_type_loads_without_langgraph_channels():
    # TreeChannel is made on first use: langgraph's channels load langchain-core (about a second), which the
    # modules that only need the tree (step_tree, and reading a thread for `deepstep show`) must not pay for.
    probe = "import sys, deepstep.step_tree, deepstep.tree_encoding; print('langgraph.channels' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip() == "False"
    channel = tree_encoding.TreeChannel(StepTree)
    assert type(channel).__module__ == "deepstep.tree_encoding" and tree_encoding.TreeChannel is type(channel)
