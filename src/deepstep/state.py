"""Graph state, per-step state and reducers.

The run state holds the step tree (a ``networkx.DiGraph``); each step runs in a subgraph
with its own small state, so checkpoints taken inside a step never re-serialize the tree.
Reducers build new values and never change their inputs.
"""

from __future__ import annotations

import operator
from typing import Annotated

from pydantic import ConfigDict, with_config

# typing_extensions' TypedDict: pydantic builds Studio's JSON schemas from these on Python 3.11.
from typing_extensions import TypedDict

from deepstep.configuration import RunSettings
from deepstep.mcts import Search
from deepstep.records import (
    Ancestor,
    Claim,
    Context,
    EvidenceCheck,
    FailedStep,
    FollowUpSearch,
    PendingExpansion,
    PlannedStep,
    StepAction,
    StepResult,
)
from deepstep.tree_encoding import StepTree, TreeChannel
from deepstep.usage import Usage, add_usage


def merge_by_step_id(left: dict[str, StepResult] | None, right: dict[str, StepResult] | None) -> dict[str, StepResult]:
    """The fan-in buffer of step results, keyed by step id: a later result for a step replaces the
    earlier one, and ``None`` clears the buffer (``collect`` does, once the results are in the tree)."""
    if right is None:
        return {}
    return {**(left or {}), **right}


# Field docstrings become descriptions in the JSON schemas Studio shows.
@with_config(ConfigDict(use_attribute_docstrings=True))
class RunInput(TypedDict, total=False):
    """What a run needs: a question for a new thread, or a reviewer's actions for a finished one."""

    question: str
    """The question to research, e.g. "What is a loss function?" (a new thread)."""
    actions: list[StepAction]
    """Changes to a finished thread's steps, e.g. [{"action": "rerun", "step": "0>1", "note": "Give the formula."}]:
    rerun, reject, refresh, edit_question, edit_answer, approve (step and its text or note), add (under step, with name and
    description) and remove. Only the steps they leave pending are researched again."""


@with_config(ConfigDict(use_attribute_docstrings=True))
class RunOutput(TypedDict, total=False):
    """What a run returns (Studio's output view): the report, the step tree and model usage."""

    report: str
    """The Markdown report."""
    tree: StepTree
    """The step tree: the question at the root, one node per step with its answer, passages and search."""
    usage: Usage
    """Model usage per role: calls, tokens, retries, repairs, fallbacks, seconds."""
    failed_steps: list[FailedStep]
    """Steps that failed for good, with the reason; ``deepstep resume`` retries them."""
    warnings: list[str]
    """What the run had to fix or cut (e.g. an unusable plan replaced by the outline's)."""


@with_config(ConfigDict(use_attribute_docstrings=True))
class RunState(TypedDict, total=False):
    """The run graph's state: planning, the fan-out's results and the report."""

    question: str
    """The question, cleaned of control characters."""
    outline: str
    """The model's outline of the topic, cut to ``outline_tokens``; every step's prompts show it."""
    tree: Annotated[StepTree, TreeChannel(StepTree)]
    """The step tree, replaced as a whole (step_tree functions return new graphs); after ``collect``
    the one source of truth for every step's status and answer."""
    warnings: Annotated[list[str], operator.add]
    """What the run had to fix or cut, in order."""
    step_results: Annotated[dict[str, StepResult], merge_by_step_id]
    """Fan-in buffer: each finished step's result until ``collect`` merges it into the tree and clears it."""
    usage: Annotated[Usage, add_usage]
    """Model usage per role, summed over every node."""
    failed_steps: list[FailedStep]
    """Steps that failed for good in the last fan-out."""
    report: str
    """The Markdown report, rendered from the tree."""
    settings: RunSettings
    """The settings that shape the result, as the thread started: a resume keeps them."""
    actions: list[StepAction]
    """A reviewer's actions for the ``revise`` node (emptied once applied)."""


@with_config(ConfigDict(use_attribute_docstrings=True))
class StepInput(TypedDict):
    """What the fan-out sends to one step's subgraph."""

    step: PlannedStep
    """The step itself: id, name, description, level."""
    question: str
    """The run's question."""
    outline: str
    """The run's outline."""
    ancestors: list[Ancestor]
    """The steps above this one, from the top down."""


class StepOutput(TypedDict):
    """What a step's subgraph hands back to the run."""

    step_results: Annotated[dict[str, StepResult], merge_by_step_id]
    usage: Annotated[Usage, add_usage]


@with_config(ConfigDict(use_attribute_docstrings=True))
class StepState(StepInput, total=False):
    """One step's state inside its subgraph: small, so its checkpoints never re-serialize the tree."""

    research_question: str
    """The focused research question the ``question`` node wrote."""
    search_language: str | None
    """The corpus's language when it differs from the question's (``search_language``): queries are also written in it."""
    search_query: str
    """The research question in ``search_language`` ("" when the corpus is in the question's language)."""
    searches: list[FollowUpSearch]
    """The follow-up retrievals so far (at most ``max_searches``); the last one lacks ``new_passages`` until it ran."""
    contexts: list[Context]
    """The retrieved passages, numbered [1], [2], ... in the prompts; a follow-up search appends, so numbers never change."""
    truncated_contexts: int
    """Passages cut to fit the prompt budget (``context_tokens``)."""
    draft: str
    """The first answer, the root of the MCTSr search."""
    removed_citations: Annotated[int, operator.add]
    """Citations of passages that do not exist, removed from the answers."""
    evidence: EvidenceCheck
    """The evidence gate's decision: whether any retrieved passage covers the research question, and how closely each does."""
    claims: dict[str, list[Claim]]
    """Each answer's claims with their verdicts, by its node id in the search (as text: JSON keys)."""
    search: Search
    """The MCTSr search: every answer with its critique, rewards, Q and visits."""
    pending_expansion: PendingExpansion | None
    """Between ``critique`` and ``refine``: the answer selected for refinement and its critique."""
    error: str
    """Why the step failed; the step then goes straight to ``finish``."""
    step_results: Annotated[dict[str, StepResult], merge_by_step_id]
    """This step's result, written by ``finish``."""
    usage: Annotated[Usage, add_usage]
    """Model usage of this step per role."""
