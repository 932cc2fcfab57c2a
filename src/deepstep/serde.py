"""Checkpoint serializer that stores ``networkx.DiGraph`` values without pickle.

LangGraph's ``JsonPlusSerializer`` cannot encode a plain DiGraph, and its pickle fallback
would execute code on load. This serializer swaps every DiGraph for a tagged node-link dict
before encoding and swaps it back after decoding, so a checkpoint holds only msgpack data
and loading it imports no class named by the data.

Checkpointers we do not configure (the ``langgraph dev`` runtime behind Studio) use their
own serializer: there the tree relies on ``step_tree.StepTree``, which such serializers store as
node-link msgpack and the LangGraph API shows as JSON nodes and edges.
"""

from __future__ import annotations

from typing import Any

import networkx as nx
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

from deepstep import step_tree

_TAG = "__deepstep_digraph__"


def _encode(value: Any) -> Any:
    if isinstance(value, nx.DiGraph):
        return {_TAG: step_tree.to_data(value)}
    if isinstance(value, dict):
        return {key: _encode(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_encode(item) for item in value]
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(_encode(item) for item in value)
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if len(value) == 1 and _TAG in value:
            return step_tree.from_data(value[_TAG])
        return {key: _decode(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_decode(item) for item in value]
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(_decode(item) for item in value)
    return value


class TreeSerializer(JsonPlusSerializer):
    """``JsonPlusSerializer`` plus safe DiGraph support; pickle stays off."""

    def __init__(self) -> None:
        super().__init__(pickle_fallback=False)

    def dumps_typed(self, obj: Any) -> tuple[str, bytes]:
        return super().dumps_typed(_encode(obj))

    def loads_typed(self, data: tuple[str, bytes]) -> Any:
        return _decode(super().loads_typed(data))
