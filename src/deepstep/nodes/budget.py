"""budget: pause the run when its caps leave no room for the next step (or the synthesis).

The fan-out routes here between supersteps, so no model call is in flight and every step is either done or not
started. The pause is a LangGraph ``interrupt`` whose payload (``records.BudgetPause``) gives the caps, what was
used and what the rest needs. Resuming (``deepstep resume THREAD --max-calls N``, or ``Command(resume=True)``)
goes on to the fan-out, which sends what the new caps allow; with caps that still leave no room it pauses here
again at once, without a call.
"""

from __future__ import annotations

from typing import Any

from langgraph.types import interrupt

from deepstep import budget, step_tree
from deepstep.configuration import Settings
from deepstep.nodes.dispatch import next_after_batch
from deepstep.state import RunState


def budget_pause(state: RunState, settings: Settings) -> dict[str, Any]:
    """Pause until the run is resumed with caps that let its next step (or the synthesis) start; the fan-out follows."""
    tree = state["tree"]
    steps = step_tree.step_ids(tree)
    left = sum(1 for step_id in steps if tree.nodes[step_id]["status"] == "pending")  # what the fan-out sends next
    # Asked again on every resume that still leaves no room: LangGraph replays this task's earlier answers, and
    # the next interrupt pauses the run at once, without a call.
    while next_after_batch(state, settings) == "budget":
        interrupt(budget.pause_request(settings, state.get("usage") or {}, left, planned=len(steps)))
    return {}
