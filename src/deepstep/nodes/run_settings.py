"""How nodes get their settings: resolved from the run's config and LangGraph's runtime context.

Nodes that need settings are written as ``node(state, settings)``: plain functions of a state
dict and a ``Settings`` object that tests call directly. The wrappers here (and the failure
wrappers in ``failures.py``) turn them into graph nodes that LangGraph calls with
``(state, runtime)``, resolving the settings once per call with ``Settings.for_run``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from langgraph.config import get_config
from langgraph.runtime import Runtime

from deepstep.configuration import Settings

StateT = TypeVar("StateT")
StateT_contra = TypeVar("StateT_contra", contravariant=True)

NodeWithSettings = Callable[[StateT, Settings], dict[str, Any]]


class GraphNode(Protocol[StateT_contra]):
    """A node as LangGraph calls it: with the state, and the run's ``Runtime`` by keyword (LangGraph's ``_NodeWithRuntime``).

    ``Runtime[Any]``: the run graph's context is a pydantic model (a ``RunContext`` or the API's
    ``Settings``), and the step subgraph, which declares no context schema, gets the same one."""

    def __call__(self, state: StateT_contra, *, runtime: Runtime[Any]) -> dict[str, Any]: ...


def settings_of(runtime: Runtime[Any]) -> Settings:
    """The run's settings: the ``Settings`` the Python API passed as context, or else the merge of
    environment, ``configurable`` and a ``RunContext`` (``graph.invoke(..., context={...})``, Studio)."""
    return Settings.for_run(get_config(), runtime.context)


def as_graph_node(wrapper: GraphNode[StateT], node: Callable[..., Any]) -> GraphNode[StateT]:
    """``wrapper`` named and documented like ``node``, so Studio and ``get_graph`` show the node's docstring."""
    wrapped = functools.update_wrapper(wrapper, node)
    # LangGraph reads the wrapper's own signature to decide what to inject (runtime);
    # ``__wrapped__`` would make ``inspect.signature`` report the node's ``(state, settings)`` instead.
    del wrapped.__wrapped__
    return wrapper


def with_settings(node: NodeWithSettings[StateT]) -> GraphNode[StateT]:
    """A graph node that calls ``node(state, settings)`` with the run's settings."""

    def bound(state: StateT, runtime: Runtime[Any]) -> dict[str, Any]:
        return node(state, settings_of(runtime))

    return as_graph_node(bound, node)
