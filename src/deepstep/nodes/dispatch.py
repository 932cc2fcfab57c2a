"""Fan-out: one ``Send`` to the step subgraph per step that is not done yet."""

from __future__ import annotations

from langgraph.types import Send

from deepstep import step_tree
from deepstep.records import Ancestor, PlannedStep
from deepstep.state import RunState, StepInput


def dispatch_steps(state: RunState) -> list[Send] | str:
    """One ``Send`` to the step subgraph per step not finished yet (a resume skips finished ones); ``collect`` when none is left."""
    tree = state["tree"]
    finished = {sid for sid, result in (state.get("step_results") or {}).items() if result.get("status") in step_tree.FINISHED_STATUSES}
    sends = []
    for step_id in step_tree.step_ids(tree):
        node = tree.nodes[step_id]
        if node["status"] in step_tree.FINISHED_STATUSES or step_id in finished:
            continue
        step = PlannedStep(id=step_id, name=node["name"], description=node["description"], level=node["level"])
        if node.get("review_note"):
            step["note"] = node["review_note"]
        if node.get("fixed_question"):
            step["research_question"] = node["fixed_question"]
        payload: StepInput = {
            "step": step,
            "question": state["question"],
            "outline": state.get("outline", ""),
            "ancestors": [Ancestor(name=a["name"], level=a["level"]) for a in step_tree.ancestors(tree, step_id)],
        }
        sends.append(Send("step", payload))
    return sends or "collect"
