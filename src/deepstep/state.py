"""Graph state, per-step state and reducers.

The run state holds the step tree (a ``networkx.DiGraph``); each step runs in a subgraph
with its own small state, so checkpoints taken inside a step never re-serialize the tree.
Reducers build new values and never change their inputs.
"""

from __future__ import annotations

import operator
from typing import Annotated, Any, TypedDict

import networkx as nx

from deepstep.mcts import Search

USAGE_FIELDS = ("calls", "prompt_tokens", "completion_tokens", "retries", "repairs", "fallbacks", "seconds")


def add_usage(left: dict[str, dict[str, float]] | None, right: dict[str, dict[str, float]] | None) -> dict[str, dict[str, float]]:
    """Sum usage per role and field."""
    total = {role: dict(fields) for role, fields in (left or {}).items()}
    for role, fields in (right or {}).items():
        merged = dict(total.get(role, {}))
        for field, value in fields.items():
            merged[field] = merged.get(field, 0) + value
        total[role] = merged
    return total


def merge_by_step_id(left: dict[str, dict] | None, right: dict[str, dict] | None) -> dict[str, dict]:
    """Step results keyed by step id; a later result for the same step replaces the earlier one."""
    return {**(left or {}), **(right or {})}


class RunInput(TypedDict):
    """What a run needs: the question (Studio shows just this field)."""

    question: str


class RunOutput(TypedDict, total=False):
    report: str
    tree: nx.DiGraph
    usage: dict[str, dict[str, float]]
    failed_steps: list[dict[str, Any]]
    warnings: list[str]


class RunState(TypedDict, total=False):
    question: str
    outline: str
    tree: nx.DiGraph  # replaced as a whole; tree.py functions return new graphs
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
