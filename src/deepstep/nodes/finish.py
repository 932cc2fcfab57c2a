"""finish: the step's result (best answer and full search trace, or the failure) for the run state."""

from __future__ import annotations

from typing import Any

from deepstep import mcts
from deepstep.citations import cited_contexts
from deepstep.claims import carry_verdicts, count_verdict, mark_unsupported
from deepstep.confidence import step_confidence
from deepstep.configuration import Settings
from deepstep.mcts import Search
from deepstep.nodes.answer import claims_of
from deepstep.records import StepResult
from deepstep.state import StepState


def finish(state: StepState, settings: Settings) -> dict[str, Any]:
    """Report the step's result to the run: its best answer with its checked claims and confidence and the
    whole search; or that the corpus does not cover it, with how close each passage came; or why it failed."""
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
        "searches": state.get("searches", []),
    }
    if state.get("search_query"):
        result = {**result, "search_query": state["search_query"]}
    evidence = state.get("evidence")
    if not state.get("error") and evidence is not None and not evidence["answerable"]:
        # The passages stay in retrieval order; evidence["closest"] orders them for the report.
        result = {**result, "status": "insufficient_evidence", "error": "", "evidence": evidence}
    elif not state.get("error") and search:
        result = _answered(result, state, search, settings)
    return {"step_results": {step_id: result}}


def _answered(result: StepResult, state: StepState, search: Search, settings: Settings) -> StepResult:
    """``result`` with the kept (best-Q) answer, its claims (unsupported sentences dropped if asked) and confidence."""
    contexts = state.get("contexts", [])
    best = mcts.best_node(search)
    answer, claims = best["answer"], state.get("claims", {}).get(str(best["id"]), [])
    dropped = 0
    if settings.unsupported_claims == "drop":
        answer = mark_unsupported(answer, claims, drop=True)
        dropped = count_verdict(claims, "unsupported")
        # What is left is checked again; its sentences keep what the model verifier (verify = model) said of them.
        claims = carry_verdicts(claims_of(answer, state), claims)
    supported = count_verdict(claims, "supported") / len(claims) if claims else None
    cited = len(cited_contexts(answer, len(contexts)))
    evidence = state.get("evidence")
    strength = evidence["best_overlap"] if evidence is not None else 0.0
    return {
        **result,
        "status": "done",
        "error": "",
        "answer": answer,
        "mcts": {**search, "best": best["id"]},
        "claims": claims,
        "dropped_claims": dropped,
        "confidence": step_confidence(best["q"], supported, cited, strength),
    }
