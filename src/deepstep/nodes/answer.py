"""answer: a draft grounded in the contexts, with invalid citations removed and every claim checked; it roots the MCTSr search."""

from __future__ import annotations

from typing import Any

from deepstep import mcts, prompts
from deepstep.citations import cited_sentences_grammar, remove_invalid_citations
from deepstep.claims import check_answer
from deepstep.configuration import Settings
from deepstep.models import call_text
from deepstep.parsing import require_usable_text
from deepstep.records import Claim
from deepstep.state import StepState


def answer(state: StepState, settings: Settings) -> dict[str, Any]:
    """Draft a cited answer from the retrieved passages (one model call); it roots the MCTSr search."""
    text, usage = call_text(
        settings,
        "answer",
        prompts.ANSWER.format_messages(
            question=state["question"],
            name=state["step"]["name"],
            research_question=state["research_question"],
            review_note=prompts.review_note(state["step"].get("note")),
            contexts=prompts.format_contexts(state["contexts"]),
            language_rule=prompts.language_rule(settings.language),
        ),
        grammar=citation_grammar(settings, len(state["contexts"])),
    )
    text = require_usable_text("answer", text)
    draft, removed = remove_invalid_citations(text, len(state["contexts"]))
    return {
        "draft": draft,
        "search": mcts.new_search(draft),
        "claims": {"0": claims_of(draft, state)},
        "removed_citations": removed,
        "usage": usage,
    }


def claims_of(answer: str, state: StepState) -> list[Claim]:
    """The answer's claims checked against the step's passages (model-free). A claim citing nothing
    passes only when it restates the run's or the step's question."""
    return check_answer(answer, state["contexts"], f"{state['question']}\n{state['research_question']}")


def citation_grammar(settings: Settings, passages: int) -> str | None:
    """The grammar that makes every sentence cite one of ``passages``, when the settings ask for it (a llama.cpp
    server only: models.call_text sends no grammar to others); none without passages to cite."""
    return cited_sentences_grammar(passages) if settings.cited_sentences and passages else None
