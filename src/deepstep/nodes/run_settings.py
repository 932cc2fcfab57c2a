"""How nodes get their settings: resolved from the run's config and LangGraph's runtime context.

Nodes that need settings are written as ``node(state, settings)``: plain functions of a state
dict and a ``Settings`` object that tests call directly. The wrappers here (and the failure
wrappers in ``failures.py``) turn them into graph nodes that LangGraph calls with
``(state, config, runtime)``, resolving the settings once per call with ``Settings.for_run``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.runtime import Runtime

from deepstep.configuration import Settings

NodeWithSettings = Callable[[Any, Settings], dict[str, Any]]
GraphNode = Callable[[Any, RunnableConfig, Runtime[Any]], Any]


def settings_of(config: RunnableConfig, runtime: Runtime[Any]) -> Settings:
    """The run's settings: the ``Settings`` the Python API passed as context, or else the merge of
    environment, ``configurable`` and a ``RunContext`` (``graph.invoke(..., context={...})``, Studio)."""
    return Settings.for_run(config, runtime.context)


def as_graph_node(wrapper: GraphNode, node: Callable[..., Any]) -> GraphNode:
    """``wrapper`` named and documented like ``node``, so Studio and ``get_graph`` show the node's docstring."""
    functools.update_wrapper(wrapper, node)
    # LangGraph reads the wrapper's own signature to decide what to inject (config, runtime);
    # ``__wrapped__`` would make ``inspect.signature`` report the node's ``(state, settings)`` instead.
    del wrapper.__wrapped__
    return wrapper


def with_settings(node: NodeWithSettings) -> GraphNode:
    """A graph node that calls ``node(state, settings)`` with the run's settings."""

    def bound(state: Any, config: RunnableConfig, runtime: Runtime[Any]) -> dict[str, Any]:
        return node(state, settings_of(config, runtime))

    return as_graph_node(bound, node)
