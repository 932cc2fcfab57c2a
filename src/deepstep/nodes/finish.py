"""finish: the step's result (best answer and full search trace, or the failure) for the run state."""

from __future__ import annotations

from typing import Any

from deepstep import mcts
from deepstep.state import StepState


def finish(state: StepState) -> dict[str, Any]:
    step_id = state["step"]["id"]
    result: dict[str, Any] = {
        "id": step_id,
        "question": state.get("research_question", ""),
        "contexts": state.get("contexts", []),
        "removed_citations": state.get("removed_citations", 0),
        "truncated_contexts": state.get("truncated_contexts", 0),
    }
    search = state.get("search")
    if state.get("error") or not search:
        result.update(status="failed", error=state.get("error") or "the step produced no answer", answer="", mcts=search or {})
    else:
        best = mcts.best_node(search)
        result.update(status="done", error="", answer=best["answer"], mcts={**search, "best": best["id"]})
    return {"step_results": {step_id: result}}
