"""finish: the step's result (best answer and full search trace, or the failure) for the run state."""

from __future__ import annotations

from typing import Any

from deepstep import mcts
from deepstep.records import StepResult
from deepstep.state import StepState


def finish(state: StepState) -> dict[str, Any]:
    """Report the step's result to the run: its best answer and whole search, or why it failed."""
    step_id = state["step"]["id"]
    search = state.get("search")
    result: StepResult = {
        "id": step_id,
        "question": state.get("research_question", ""),
        "contexts": state.get("contexts", []),
        "removed_citations": state.get("removed_citations", 0),
        "truncated_contexts": state.get("truncated_contexts", 0),
        "status": "failed",
        "error": state.get("error") or "the step produced no answer",
        "answer": "",
        "mcts": search or {},
    }
    if search and not state.get("error"):
        best = mcts.best_node(search)
        result = {**result, "status": "done", "error": "", "answer": best["answer"], "mcts": {**search, "best": best["id"]}}
    return {"step_results": {step_id: result}}
