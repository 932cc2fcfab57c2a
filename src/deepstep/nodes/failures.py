"""Turning a step node's final failure into state, so one bad step never stops the others.

The node's ``RetryPolicy`` retries transient errors (model, HTTP, parse). On the last
allowed attempt, or for an error that retrying cannot fix, the wrapper records the error
in the step state instead of raising; the step then finishes as ``failed``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from langgraph.errors import GraphBubbleUp
from langgraph.runtime import Runtime
from langgraph.types import RetryPolicy

from deepstep.models import describe_error, is_transient
from deepstep.nodes.run_settings import GraphNode, NodeWithSettings, StateT, as_graph_node, settings_of
from deepstep.redaction import without_api_keys
from deepstep.state import StepState
from deepstep.usage import add_usage

MAX_ATTEMPTS = 10  # upper bound of Settings.step_attempts; the wrapper stops earlier
STEP_RETRY = RetryPolicy(max_attempts=MAX_ATTEMPTS, initial_interval=0.2, max_interval=5.0, retry_on=is_transient)


def _attempt(runtime: Runtime[Any]) -> int:
    return runtime.execution_info.node_attempt if runtime.execution_info else 1


def _count_retries(update: dict[str, Any], role: str | None, attempt: int) -> dict[str, Any]:
    # A failed attempt's writes are discarded, so the attempt that ends the node records them.
    if attempt == 1 or role is None:
        return update
    return {**update, "usage": add_usage(update.get("usage"), {role: {"retries": attempt - 1}})}


def count_retries(node: NodeWithSettings[StateT], role: str) -> GraphNode[StateT]:
    """A graph node that calls ``node(state, settings)`` and records its retries (attempts beyond
    the first) in the usage of ``role``."""

    def counted(state: StateT, runtime: Runtime[Any]) -> dict[str, Any]:
        return _count_retries(node(state, settings_of(runtime)), role, _attempt(runtime))

    return as_graph_node(counted, node)


def fail_softly(node: NodeWithSettings[StateT], role: str | None = None) -> GraphNode[StateT]:
    """A graph node that calls ``node(state, settings)``: transient errors are retried via the node's
    RetryPolicy, and the last failure is recorded in the step state instead of raised."""

    def guarded(state: StateT, runtime: Runtime[Any]) -> dict[str, Any]:
        settings = settings_of(runtime)  # outside the try: bad settings fail the run, not one step
        attempt = _attempt(runtime)
        try:
            return _count_retries(node(state, settings), role, attempt)
        except GraphBubbleUp:
            raise
        except Exception as error:
            attempts = min(settings.step_attempts, MAX_ATTEMPTS)
            if is_transient(error) and attempt < attempts:
                raise
            tries = f" after {attempt} attempt(s)" if is_transient(error) else ""
            reason = without_api_keys(f"{node.__name__}: {describe_error(error)}{tries}", settings)
            return _count_retries({"error": reason}, role, attempt)

    return as_graph_node(guarded, node)


def route_unless_failed(next_node: str) -> Callable[[StepState], str]:
    """Conditional edge: go on to ``next_node`` unless the step has failed."""

    def route(state: StepState) -> str:
        return "finish" if state.get("error") else next_node

    route.__name__ = f"to_{next_node}_unless_failed"
    return route
