"""Graph state, per-step state and reducers.

The run state holds the step tree (a ``networkx.DiGraph``); each step runs in a subgraph
with its own small state, so checkpoints taken inside a step never re-serialize the tree.
Reducers build new values and never change their inputs.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from typing import Annotated, Any

import networkx as nx
from langgraph.channels import LastValue

# typing_extensions' TypedDict: pydantic builds Studio's JSON schemas from these on Python 3.11.
from typing_extensions import TypedDict

from deepstep import step_tree
from deepstep.errors import InputError
from deepstep.mcts import Search
from deepstep.step_tree import StepTree
from deepstep.usage import add_usage


def merge_by_step_id(left: dict[str, dict] | None, right: dict[str, dict] | None) -> dict[str, dict]:
    """Step results keyed by step id; a later result for the same step replaces the earlier one."""
    return {**(left or {}), **(right or {})}


def as_step_tree(value: Any) -> StepTree:
    """A step tree from a graph or from node-link data (a state edit sent as JSON by Studio)."""
    if isinstance(value, StepTree):
        return value
    if isinstance(value, nx.DiGraph):
        return StepTree(value)
    if isinstance(value, Mapping) and {"nodes", "edges"} <= value.keys():
        return step_tree.from_data(value)
    raise InputError(f"the tree must be a networkx DiGraph or node-link data with nodes and edges, got {type(value).__name__}")


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


class RunInput(TypedDict):
    """What a run needs: the question (Studio shows just this field)."""

    question: str


class RunOutput(TypedDict, total=False):
    """What a run returns (Studio's output view): the report, the step tree and model usage."""

    report: str
    tree: StepTree
    usage: dict[str, dict[str, float]]
    failed_steps: list[dict[str, Any]]
    warnings: list[str]


class RunState(TypedDict, total=False):
    question: str
    outline: str
    tree: Annotated[StepTree, TreeChannel(StepTree)]  # replaced as a whole; step_tree functions return new graphs
    warnings: Annotated[list[str], operator.add]
    step_results: Annotated[dict[str, dict[str, Any]], merge_by_step_id]
    usage: Annotated[dict[str, dict[str, float]], add_usage]
    failed_steps: list[dict[str, Any]]
    report: str
    settings: dict[str, Any]


class StepInput(TypedDict):
    """What the fan-out sends to one step's subgraph."""

    step: dict[str, Any]  # id, name, description, level
    question: str
    outline: str
    ancestors: list[dict[str, Any]]


class StepOutput(TypedDict):
    step_results: Annotated[dict[str, dict[str, Any]], merge_by_step_id]
    usage: Annotated[dict[str, dict[str, float]], add_usage]


class StepState(StepInput, total=False):
    research_question: str
    contexts: list[dict[str, Any]]
    truncated_contexts: int  # passages cut to fit the prompt budget
    draft: str
    removed_citations: Annotated[int, operator.add]
    search: Search
    pending_expansion: dict[str, Any] | None  # {"parent": node id, "critique": text} between critique and refine
    error: str
    step_results: Annotated[dict[str, dict[str, Any]], merge_by_step_id]
    usage: Annotated[dict[str, dict[str, float]], add_usage]
