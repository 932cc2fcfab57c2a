"""How a step tree is checkpointed and shown: as networkx node-link data, never pickle.

A step tree is a ``networkx.DiGraph``, which LangGraph's ``JsonPlusSerializer`` could only pickle
(and pickle executes code on load). Three pieces keep it data, one for each way a tree is stored:

- ``StepTree``, the class of every step tree: it has ``model_dump``, so any LangGraph serializer
  (a stock ``InMemorySaver``, the ``langgraph dev`` runtime behind Studio, a user's own
  checkpointer) stores it as msgpack node-link data tagged ``("deepstep.tree_encoding", "StepTree")``
  and rebuilds it with ``StepTree(**data)`` where that class is allowed (``allowed_msgpack_modules``);
  its pydantic schema makes the LangGraph API show it to Studio as JSON nodes and edges.
- ``TreeSerializer``, the serializer of deepstep's own checkpointers (SQLite, Postgres): every
  DiGraph becomes a tagged node-link dict before encoding, so loading imports no class named by the data.
- ``TreeChannel``, the state's ``tree`` channel: it turns node-link data back into a ``StepTree``
  where a serializer returned the tree as plain data (``LANGGRAPH_STRICT_MSGPACK=true`` blocks
  classes not allowed) or Studio sent a state edit as JSON.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import networkx as nx
import ormsgpack
from langgraph.checkpoint.serde import jsonplus
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from pydantic import GetCoreSchemaHandler
from pydantic_core import core_schema
from typing_extensions import TypedDict

from deepstep.errors import InputError

if TYPE_CHECKING:
    from langgraph.channels import LastValue


class NodeLinkData(TypedDict):
    """A tree as networkx node-link data: what checkpoints store and Studio shows."""

    directed: bool
    multigraph: bool
    graph: dict[str, Any]
    nodes: list[dict[str, Any]]  # {"id": ..., **step fields}
    edges: list[dict[str, Any]]  # {"source": parent id, "target": child id}


_NODE_LINK_KEYS = frozenset(NodeLinkData.__annotations__)


def to_data(tree: nx.DiGraph) -> dict[str, Any]:
    """A plain, JSON-safe encoding of the tree (networkx node-link format)."""
    return nx.node_link_data(tree, edges="edges")


def _node_link_graph(data: Mapping[str, Any]) -> nx.Graph:
    return nx.node_link_graph(dict(data), directed=True, multigraph=False, edges="edges")


def from_data(data: Mapping[str, Any]) -> StepTree:
    return StepTree(_node_link_graph(data))


class StepTree(nx.DiGraph):
    """The class of every step tree: a ``DiGraph`` that serializes itself as node-link data.

    LangGraph's serializers treat an object with ``model_dump`` like a pydantic model, so the
    ``langgraph dev`` runtime checkpoints the tree as msgpack node-link data (never pickle)
    and rebuilds it with ``StepTree(**data)``, and the LangGraph API sends it to Studio as
    JSON nodes and edges instead of an opaque value.
    """

    def __init__(self, incoming_graph_data: Any = None, **attr: Any) -> None:
        if incoming_graph_data is None and attr and attr.keys() == _NODE_LINK_KEYS:
            incoming_graph_data, attr = _node_link_graph(attr), {}
        super().__init__(incoming_graph_data, **attr)

    def model_dump(self, **_: Any) -> dict[str, Any]:
        return to_data(self)

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        # JSON schemas (Studio's input/output/state views) describe the node-link form.
        from_node_link = core_schema.no_info_after_validator_function(from_data, handler.generate_schema(NodeLinkData))
        from_graph = core_schema.no_info_after_validator_function(cls, core_schema.is_instance_schema(nx.DiGraph))
        return core_schema.json_or_python_schema(
            json_schema=from_node_link,
            python_schema=core_schema.union_schema([from_graph, from_node_link]),
            serialization=core_schema.plain_serializer_function_ser_schema(to_data),
        )


def as_step_tree(value: Any) -> StepTree:
    """A step tree from a graph or from node-link data (a state edit sent as JSON by Studio)."""
    if isinstance(value, StepTree):
        return value
    if isinstance(value, nx.DiGraph):
        return StepTree(value)
    if isinstance(value, Mapping) and {"nodes", "edges"} <= value.keys():
        return from_data(value)
    raise InputError(f"the tree must be a networkx DiGraph or node-link data with nodes and edges, got {type(value).__name__}")


# --- deepstep's checkpointers ---

_TAG = "__deepstep_digraph__"


def _msgpack_default(value: Any) -> Any:
    if isinstance(value, nx.DiGraph):
        return {_TAG: to_data(value)}
    return jsonplus._msgpack_default(value)


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if len(value) == 1 and _TAG in value:
            return from_data(value[_TAG])
        return {key: _decode(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_decode(item) for item in value]
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(_decode(item) for item in value)
    return value


# Values this large are stored zlib-compressed (type ``msgpack+zlib``) when that is smaller: passages, answers and
# critiques are prose, usage records repeat their keys, and a checkpoint's channel versions repeat long runs of
# zeros. Level 1 (about 80 µs for 5 KB): levels 6 and 9 saved only 4% more on a run's checkpoints.
COMPRESS_FROM_BYTES = 128
_COMPRESSED = "+zlib"


class TreeSerializer(JsonPlusSerializer):
    """``JsonPlusSerializer`` plus safe DiGraph support and compression of large values; pickle stays off."""

    def __init__(self) -> None:
        super().__init__(pickle_fallback=False)

    def dumps_typed(self, obj: Any) -> tuple[str, bytes]:
        if obj is None or isinstance(obj, bytes | bytearray):
            kind, data = super().dumps_typed(obj)
        else:
            # What JsonPlusSerializer writes, with each DiGraph as node-link data: ormsgpack hands the graphs to
            # the hook as it meets them, where walking every value first to find them cost as much as packing.
            kind, data = "msgpack", ormsgpack.packb(obj, default=_msgpack_default, option=jsonplus._option)
        if len(data) >= COMPRESS_FROM_BYTES and len(compressed := zlib.compress(data, 1)) < len(data):
            return kind + _COMPRESSED, compressed
        return kind, data

    def loads_typed(self, data: tuple[str, bytes]) -> Any:
        kind, payload = data
        if kind.endswith(_COMPRESSED):  # values stored before compression have the plain type and still load
            kind, payload = kind.removesuffix(_COMPRESSED), zlib.decompress(payload)
        return _decode(super().loads_typed((kind, payload)))


# --- the graph state's tree channel ---


def __getattr__(name: str) -> Any:
    # TreeChannel extends a LangGraph channel, and importing LangGraph's channels loads langchain-core
    # (about a second): the class is made when the graph state first asks for it, so the modules that only
    # need the tree type (step_tree, render, store, reading a thread for `deepstep show`) stay fast to import.
    if name == "TreeChannel":
        return _tree_channel_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def _tree_channel_class() -> type[LastValue[Any]]:
    from langgraph.channels import LastValue

    class TreeChannel(LastValue):
        """The ``tree`` channel: the last tree written, always a ``StepTree``, also when it arrives as
        node-link data (a Studio state edit, or a checkpoint read by a serializer that does not rebuild it)."""

        def update(self, values: Sequence[Any]) -> bool:
            return super().update([as_step_tree(value) for value in values])

        def from_checkpoint(self, checkpoint: Any) -> TreeChannel:
            channel = super().from_checkpoint(checkpoint)
            if channel.is_available():
                channel.value = as_step_tree(channel.value)
            return channel

    TreeChannel.__qualname__ = "TreeChannel"  # found by its name here (``__getattr__``), e.g. by pickle
    return TreeChannel
