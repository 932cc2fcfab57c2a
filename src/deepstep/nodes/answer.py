"""answer: a draft grounded in the contexts, with invalid citations removed; it roots the MCTSr search."""

from __future__ import annotations

from typing import Any

from deepstep import mcts, prompts
from deepstep.citations import remove_invalid_citations
from deepstep.configuration import Settings
from deepstep.models import call_text
from deepstep.parsing import require_usable_text
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
            contexts=prompts.format_contexts(state["contexts"]),
            language_rule=prompts.language_rule(settings.language),
        ),
    )
    text = require_usable_text("answer", text)
    draft, removed = remove_invalid_citations(text, len(state["contexts"]))
    return {"draft": draft, "search": mcts.new_search(draft), "removed_citations": removed, "usage": usage}
