"""question: one focused research question for the step."""

from __future__ import annotations

from typing import Any

from deepstep import prompts
from deepstep.configuration import Settings
from deepstep.models import call_text
from deepstep.parsing import require_usable_text
from deepstep.state import StepState


def question(state: StepState, settings: Settings) -> dict[str, Any]:
    """Write one focused research question for the step (one model call)."""
    step = state["step"]
    text, usage = call_text(
        settings,
        "question",
        prompts.QUESTION.format_messages(
            question=state["question"],
            outline=state["outline"],
            ancestors=prompts.format_ancestors(state["ancestors"]),
            name=step["name"],
            description=step["description"],
            language_rule=prompts.language_rule(settings.language),
        ),
    )
    text = require_usable_text("question", text)
    # One line, as the prompt asks: a small model may go on with an essay or the next steps' questions.
    return {"research_question": text.strip().splitlines()[0].strip(), "usage": usage}
