"""question: one focused research question for the step, also as a query in the corpus's language when that differs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from langchain_core.retrievers import BaseRetriever

from deepstep import prompts
from deepstep.configuration import Settings
from deepstep.models import call_text
from deepstep.parsing import first_line, require_usable_text, research_question_and_query
from deepstep.state import StepState


def make_question(retriever: BaseRetriever | None) -> Callable[[StepState, Settings], dict[str, Any]]:
    """A question node that reads the corpus's language from ``retriever`` (or the configured corpus)."""

    def question(state: StepState, settings: Settings) -> dict[str, Any]:
        """Write one focused research question for the step (one model call); when the corpus is in another
        language (``search_language``), the same question as a search query in it, in the same reply.
        No call when a reviewer wrote the step's research question."""
        from deepstep.retrieval import search_language  # the corpus index loads when a step first needs it

        if fixed := state["step"].get("research_question"):
            # A reviewer wrote it (``edit_question``): it is used as it stands, in the question's own language.
            return {"research_question": fixed, "search_language": None, "search_query": ""}
        language = search_language(state["question"], settings, retriever)
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
                review_note=prompts.review_note(state["step"].get("note")),
                language_rule=prompts.language_rule(settings.language),
                search_rule=prompts.search_rule(language),
            ),
        )
        text = require_usable_text("question", text)
        # One line, as the prompt asks: a small model may go on with an essay or the next steps' questions.
        research_question, query = research_question_and_query(text) if language else (first_line(text), "")
        return {"research_question": research_question, "search_language": language, "search_query": query, "usage": usage}

    return question
