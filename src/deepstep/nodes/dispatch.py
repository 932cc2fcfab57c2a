"""Fan-out: one ``Send`` to the step subgraph per step to research, as many as the budget allows.

After the plan (``review``) every step not done yet is sent (a resume skips finished ones and retries failed
ones). Under a cap (``max_calls``, ``max_run_tokens``, ``max_cost``) only the first steps whose worst case fits
in what is left are sent (``deepstep.budget``); after they are collected the rest is sent the same way
(``dispatch_pending``), and when none fits the run goes to the ``budget`` pause instead: between supersteps,
so no call is in flight and no step is half done. The pause lets the run go on only once something fits.
"""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime, get_runtime
from langgraph.types import Send

from deepstep import budget, step_tree
from deepstep.configuration import Settings
from deepstep.nodes.run_settings import settings_of
from deepstep.records import Ancestor, PlannedStep
from deepstep.state import RunState, StepInput


def after_review(state: RunState) -> list[Send] | str:
    """The fan-out after the plan (``dispatch_steps`` under the run's settings)."""
    runtime = get_runtime()
    if runtime is None:
        # ``graph.update_state(..., as_node="review")`` (a step rerun, a retry of failed steps; they mark those
        # steps pending) runs this edge outside any run, so without the run's settings: the budget node, the
        # first node of the run then, lets the run go on to the fan-out once the caps leave room.
        return "budget" if dispatch_steps(state) != "collect" else "collect"
    return dispatch_steps(state, settings_of(runtime))


def dispatch_steps(state: RunState, settings: Settings | None = None) -> list[Send] | str:
    """After the plan: one ``Send`` per step not done yet that fits the budget of ``settings`` (every one without
    settings); ``collect`` when none is left, ``budget`` (the pause) when none fits."""
    tree = state["tree"]
    done = {sid for sid, result in (state.get("step_results") or {}).items() if result.get("status") == "done"}
    wanted = [step_id for step_id in step_tree.step_ids(tree) if tree.nodes[step_id]["status"] != "done" and step_id not in done]
    if not wanted:
        return "collect"
    if settings is None:
        return [Send("step", _step_input(state, step_id)) for step_id in wanted]
    return _sends(state, wanted, settings) or "budget"


def dispatch_pending(state: RunState, runtime: Runtime[Any]) -> list[Send] | str:
    """After a batch of steps (or a budget pause): the steps never started that fit; else ``synthesize`` once none
    is left and its call fits, else ``budget``."""
    return next_after_batch(state, settings_of(runtime))


def next_after_batch(state: RunState, settings: Settings) -> list[Send] | str:
    """``dispatch_pending``'s choice under ``settings`` (the budget pause asks it whether the run can go on)."""
    tree = state["tree"]
    pending = [step_id for step_id in step_tree.step_ids(tree) if tree.nodes[step_id]["status"] == "pending"]
    if pending:
        return _sends(state, pending, settings) or "budget"
    planned = len(step_tree.step_ids(tree))
    return "synthesize" if budget.synthesis_fits(settings, state.get("usage") or {}, planned) else "budget"


def _sends(state: RunState, step_ids: list[str], settings: Settings) -> list[Send]:
    fitting = budget.steps_that_fit(settings, state.get("usage") or {}, len(step_ids))
    return [Send("step", _step_input(state, step_id)) for step_id in step_ids[:fitting]]


def _step_input(state: RunState, step_id: str) -> StepInput:
    tree = state["tree"]
    node = tree.nodes[step_id]
    step = PlannedStep(id=step_id, name=node["name"], description=node["description"], level=node["level"])
    if node.get("review_note"):
        step["note"] = node["review_note"]
    return {
        "step": step,
        "question": state["question"],
        "outline": state.get("outline", ""),
        "ancestors": [Ancestor(name=a["name"], level=a["level"]) for a in step_tree.ancestors(tree, step_id)],
    }
