"""refine: the MCTSr loop, one LLM call per node so every call is its own checkpoint.

evaluate -> (more samples? evaluate) -> (done? finish) -> critique -> refine -> evaluate ...
The choice of which answer to refine (``mcts.select``) is made in ``critique`` and kept in
state, so a run killed between critique and refine resumes on the same answer.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from langgraph.runtime import Runtime

from deepstep import mcts, prompts
from deepstep.citations import remove_invalid_citations
from deepstep.claims import unsupported_share
from deepstep.configuration import Settings
from deepstep.models import call_structured, call_text
from deepstep.nodes.answer import claims_of
from deepstep.nodes.run_settings import settings_of
from deepstep.nodes.search import searches_left
from deepstep.parsing import RefineResponse, Score, looks_like_refusal, missing_information, require_usable_text
from deepstep.state import StepState

# The last-resort score when the critic's reply never parses: neutral, and counted as a fallback.
FALLBACK_SCORE = 0


def evaluate(state: StepState, settings: Settings) -> dict[str, Any]:
    """Score the answer that still needs a reward (one model call), less the claim penalty, and backpropagate
    once it has all its samples."""
    params = settings.mcts_params()
    search = state["search"]
    node_id = mcts.needs_reward(search, params)
    if node_id is None:
        return {}
    claims = state.get("claims", {}).get(str(node_id), [])
    score, usage = call_structured(
        settings,
        "evaluate",
        prompts.EVALUATE.format_messages(
            research_question=state["research_question"],
            contexts=prompts.format_contexts(state["contexts"]),
            answer=search["nodes"][node_id]["answer"],
            claim_check=prompts.format_claim_check(claims),
        ),
        Score,
        fallback=lambda _reply: Score(score=FALLBACK_SCORE),
    )
    search = mcts.add_reward(search, node_id, mcts.claim_adjusted_score(score.score, unsupported_share(claims)))
    if node_id != 0 and mcts.needs_reward(search, params) is None:
        search = mcts.backpropagate(search, node_id)
    return {"search": search, "usage": usage}


def critique(state: StepState, settings: Settings) -> dict[str, Any]:
    """Select the answer to refine (UCT) and critique it (one model call)."""
    search = state["search"]
    parent_id = mcts.select(search, settings.mcts_params())
    parent = search["nodes"][parent_id]
    earlier = [search["nodes"][c]["critique"] for c in parent["children"]]
    text, usage = call_text(
        settings,
        "critique",
        prompts.CRITIQUE.format_messages(
            name=state["step"]["name"],
            research_question=state["research_question"],
            contexts=prompts.format_contexts(state["contexts"]),
            answer=parent["answer"],
            earlier_critiques=" | ".join(earlier) if earlier else "(none)",
            language_rule=prompts.language_rule(settings.language),
        ),
    )
    text = require_usable_text("critique", text)
    return {"pending_expansion": {"parent": parent_id, "critique": text}, "usage": usage}


def refine(state: StepState, settings: Settings) -> dict[str, Any]:
    """Rewrite the selected answer following its critique (one structured model call): a new search node."""
    search = state["search"]
    pending = state["pending_expansion"]
    if pending is None:  # the graph runs refine only right after critique, which selects the answer
        raise RuntimeError("refine: no answer selected for refinement (critique did not run)")
    parent_answer = search["nodes"][pending["parent"]]["answer"]
    refined, usage = call_structured(
        settings,
        "refine",
        prompts.REFINE.format_messages(
            name=state["step"]["name"],
            research_question=state["research_question"],
            contexts=prompts.format_contexts(state["contexts"]),
            answer=parent_answer,
            critique=pending["critique"],
            language_rule=prompts.language_rule(settings.language),
        ),
        RefineResponse,
        fallback=lambda reply: unparsed_refinement(reply, parent_answer),
    )
    new_answer, removed = remove_invalid_citations(refined.answer, len(state["contexts"]))
    search, node_id = mcts.expand(search, pending["parent"], critique=pending["critique"], thought=refined.thought, answer=new_answer)
    claims = {**state.get("claims", {}), str(node_id): claims_of(new_answer, state)}
    return {"search": search, "claims": claims, "pending_expansion": None, "removed_citations": removed, "usage": usage}


_BROKEN_JSON = re.compile(r"\{\s*[\"']?(?:thought|answer)\b")


def unparsed_refinement(reply: str, parent_answer: str) -> RefineResponse:
    """The refinement kept when the model's reply never parses: the reply itself when it reads as a
    rewrite in prose; the parent's answer unchanged for broken JSON, an empty reply or a refusal."""
    text = reply.strip()
    unusable = not text or text.startswith(("{", "[", "```")) or _BROKEN_JSON.search(text) or looks_like_refusal(text)
    return RefineResponse(thought="(unparsed reply)", answer=parent_answer if unusable else text)


def after_evaluate(state: StepState, runtime: Runtime[Any]) -> Literal["evaluate", "critique", "finish"]:
    """Route after a score: another reward sample, another rollout, or the step's end."""
    return next_after_evaluate(state, settings_of(runtime).mcts_params())


def next_after_evaluate(state: StepState, params: mcts.MCTSParams) -> Literal["evaluate", "critique", "finish"]:
    """``evaluate`` while the newest answer lacks reward samples, ``finish`` once the search is done
    (or the step failed), else ``critique`` for the next rollout."""
    if state.get("error"):
        return "finish"
    if mcts.needs_reward(state["search"], params) is not None:
        return "evaluate"
    return "finish" if mcts.is_done(state["search"], params) else "critique"


def after_critique(state: StepState, runtime: Runtime[Any]) -> Literal["search_query", "refine", "finish"]:
    """Search again before refining when the critique says the contexts lack facts and ``max_searches`` allows."""
    pending = state.get("pending_expansion")
    if state.get("error") or pending is None:
        return "finish"
    if missing_information(pending["critique"]) and searches_left(state, settings_of(runtime)):
        return "search_query"
    return "refine"
