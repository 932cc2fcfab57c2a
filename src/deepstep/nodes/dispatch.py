"""Fan-out: one ``Send`` to the step subgraph per step to research, as many as the budget allows.

After the plan (``review``) every step not done yet is sent (a resume skips finished ones and retries failed
ones). Under a cap (``max_calls``, ``max_run_tokens``, ``max_cost``) only the first steps whose worst case fits
in what is left are sent (``deepstep.budget``); after they are collected the rest is sent the same way
(``after_collect``), and when none fits the run goes to the ``budget`` pause instead: between supersteps,
so no call is in flight and no step is half done. The pause lets the run go on only once something fits.
"""

from __future__ import annotations

from langgraph.runtime import get_runtime
from langgraph.types import Send

from deepstep import budget, step_tree
from deepstep.configuration import Settings
from deepstep.nodes.run_settings import settings_of
from deepstep.records import Ancestor, PlannedStep
from deepstep.state import RunState, StepInput


def after_review(state: RunState) -> list[Send] | str:
    """The fan-out after the plan (or a reviewer's revision of a finished run): ``dispatch_steps`` under the run's settings."""
    runtime = get_runtime()
    if runtime is None:
        return _decided_in_the_run(dispatch_steps(state))
    return dispatch_steps(state, settings_of(runtime))


def after_collect(state: RunState) -> list[Send] | str:
    """The fan-out after a batch of steps: ``next_after_batch`` under the run's settings."""
    runtime = get_runtime()
    if runtime is None:
        return _decided_in_the_run(next_after_batch(state))
    return next_after_batch(state, settings_of(runtime))


def after_budget(state: RunState) -> list[Send] | str:
    """The fan-out once the budget node let the run go on: ``next_after_batch`` fits now."""
    runtime = get_runtime()
    return next_after_batch(state, settings_of(runtime) if runtime is not None else None)


def _decided_in_the_run(choice: list[Send] | str) -> str:
    # ``graph.update_state(..., as_node=...)`` (a step rerun and a retry of failed steps, which mark those steps
    # pending; a state edit in Studio) runs an edge outside any run, without the run's settings: the budget
    # node, which makes no call and pauses only when the caps leave no room, then decides in the run.
    return "collect" if choice == "collect" else "budget"


def dispatch_steps(state: RunState, settings: Settings | None = None) -> list[Send] | str:
    """After the plan: one ``Send`` per step not done yet that fits the budget of ``settings`` (every one without
    settings); ``collect`` when none is left, ``budget`` (the pause) when none fits."""
    tree = state["tree"]
    finished = {sid for sid, result in (state.get("step_results") or {}).items() if result.get("status") in step_tree.FINISHED_STATUSES}
    wanted = [
        step_id
        for step_id in step_tree.step_ids(tree)
        if tree.nodes[step_id]["status"] not in step_tree.FINISHED_STATUSES and step_id not in finished
    ]
    if not wanted:
        return "collect"
    return _sends(state, wanted, settings) or "budget"


def next_after_batch(state: RunState, settings: Settings | None = None) -> list[Send] | str:
    """After a batch of steps (or a budget pause): the steps never started that fit the budget of ``settings``
    (every one without settings); else ``synthesize`` once none is left and its call fits, else ``budget``."""
    tree = state["tree"]
    pending = [step_id for step_id in step_tree.step_ids(tree) if tree.nodes[step_id]["status"] == "pending"]
    if pending:
        return _sends(state, pending, settings) or "budget"
    if settings is None:
        return "synthesize"
    planned = len(step_tree.step_ids(tree))
    return "synthesize" if budget.synthesis_fits(settings, state.get("usage") or {}, planned) else "budget"


def _sends(state: RunState, step_ids: list[str], settings: Settings | None) -> list[Send]:
    fitting = len(step_ids) if settings is None else budget.steps_that_fit(settings, state.get("usage") or {}, len(step_ids))
    return [Send("step", _step_input(state, step_id)) for step_id in step_ids[:fitting]]


def _step_input(state: RunState, step_id: str) -> StepInput:
    tree = state["tree"]
    node = tree.nodes[step_id]
    step = PlannedStep(id=step_id, name=node["name"], description=node["description"], level=node["level"])
    if node.get("review_note"):
        step["note"] = node["review_note"]
    if node.get("fixed_question"):
        step["research_question"] = node["fixed_question"]
    return {
        "step": step,
        "question": state["question"],
        "outline": state.get("outline", ""),
        "ancestors": [Ancestor(name=a["name"], level=a["level"]) for a in step_tree.ancestors(tree, step_id)],
    }
