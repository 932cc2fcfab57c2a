"""verify: the optional model verifier (``verify = model``) refines the lexical verdicts of the newest answer.

answer -> verify -> evaluate and refine -> verify -> evaluate when it is on; with ``verify = off`` the graph
goes straight to ``evaluate`` and makes no call. The lexical check (``claims.check_answer``, run by ``answer``
and ``refine``) always comes first; the model's verdicts are merged into it (``claims.apply_verdicts``).
"""

from __future__ import annotations

from typing import Any, Literal

from langgraph.runtime import Runtime

from deepstep import prompts
from deepstep.claims import apply_verdicts
from deepstep.configuration import Settings
from deepstep.models import call_structured
from deepstep.nodes.run_settings import settings_of
from deepstep.parsing import ClaimVerdicts
from deepstep.records import Claim, Context
from deepstep.state import StepState
from deepstep.usage import Usage


def verify(state: StepState, settings: Settings) -> dict[str, Any]:
    """Judge every claim of the newest answer at once (one structured model call); an answer without claims
    needs no call, and a reply that never parses keeps the lexical verdicts (counted as a fallback)."""
    newest = state["search"]["nodes"][-1]  # answer and refine each add one node, then come here
    key = str(newest["id"])
    claims = state.get("claims", {}).get(key, [])
    if not claims:
        return {}
    judged, usage = judged_claims(settings, state["research_question"], state["contexts"], claims)
    return {"claims": {**state["claims"], key: judged}, "usage": usage}


def judged_claims(settings: Settings, research_question: str, contexts: list[Context], claims: list[Claim]) -> tuple[list[Claim], Usage]:
    """``claims`` with the verifier's verdicts merged in (one structured call), and the call's usage."""
    judged, usage = call_structured(
        settings,
        "verify",
        prompts.VERIFY.format_messages(
            research_question=research_question,
            contexts=prompts.format_contexts(contexts),
            claims=prompts.format_claims_to_verify(claims),
        ),
        ClaimVerdicts,
        fallback=lambda _reply: ClaimVerdicts(verdicts=[]),
    )
    return apply_verdicts(claims, [(item.claim, item.verdict) for item in judged.verdicts]), usage


def after_answer(state: StepState, runtime: Runtime[Any]) -> Literal["verify", "evaluate", "finish"]:
    """Route after a new answer (the draft or a refinement): to the verifier when ``verify = model``, else
    straight to its score; to ``finish`` when the step failed."""
    if state.get("error"):
        return "finish"
    return "verify" if settings_of(runtime).verify == "model" else "evaluate"
