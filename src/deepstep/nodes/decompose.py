"""decompose: an outline of the topic (one call), then a validated step tree (one structured call).

Two nodes, so each model call is its own checkpoint: a run killed after the outline
resumes with it instead of asking again.
"""

from __future__ import annotations

from typing import Any

from deepstep import prompts, step_tree
from deepstep.configuration import Settings
from deepstep.errors import InputError
from deepstep.models import call_structured, call_text
from deepstep.parsing import StepItem, StepList, step_list_schema
from deepstep.state import RunState


def _has_plan(state: RunState) -> bool:
    existing = state.get("tree")
    return existing is not None and bool(step_tree.step_ids(existing))


def outline(state: RunState, settings: Settings) -> dict[str, Any]:
    """Write an outline of the topic (one model call) and keep the run-shaping settings for resumes."""
    if _has_plan(state) or state.get("outline"):
        return {}  # a re-run on this thread keeps its plan
    question = (state.get("question") or "").strip()
    if not question:
        raise InputError('the question is empty: pass a question, e.g. deepstep run "What is a loss function?"')
    text, usage = call_text(
        settings, "outline", prompts.OUTLINE.format_messages(question=question, language_rule=prompts.language_rule(settings.language))
    )
    # The outline goes into every step's prompts: keep it within its token budget.
    text, cut = prompts.cap_text(text, settings.outline_tokens)
    warnings = [f"the outline was cut to about {settings.outline_tokens} tokens"] if cut else []
    return {"question": question, "outline": text, "usage": usage, "settings": settings.run_settings(), "warnings": warnings}


# A planned step in JSON: a name of up to 80 characters, a description, its level and the keys.
PLAN_CHARS_PER_STEP = 600


def _room_for_the_plan(settings: Settings) -> Settings:
    """``settings`` with a reply cap that fits ``max_steps`` steps: a 500-step plan is some 120,000 characters, and
    the default ``max_reply_chars`` (50,000) cut it to about 200 steps without a word."""
    needed = settings.max_steps * PLAN_CHARS_PER_STEP
    return settings if settings.max_reply_chars >= needed else settings.model_copy(update={"max_reply_chars": needed})


def decompose(state: RunState, settings: Settings) -> dict[str, Any]:
    """Turn the outline into a validated step tree (one structured model call)."""
    if _has_plan(state):
        return {}  # never duplicate steps on a re-run
    question = state["question"]
    outline_text = state.get("outline", "")

    def plan_from_outline(_reply: str) -> StepList:
        specs = step_tree.steps_from_outline(question, outline_text, max_steps=settings.max_steps, max_depth=settings.max_depth)
        return StepList(steps=[StepItem(name=s.name, description=s.description, level=s.level) for s in specs])

    plan, usage = call_structured(
        _room_for_the_plan(settings),
        "steps",
        prompts.STEPS.format_messages(
            question=question,
            outline=outline_text,
            max_steps=settings.max_steps,
            max_depth=settings.max_depth,
            language_rule=prompts.language_rule(settings.language),
        ),
        StepList,
        fallback=plan_from_outline,
        generation_schema=step_list_schema(settings.max_steps, settings.max_depth),
    )
    warnings = []
    if usage["decompose"]["fallbacks"]:
        warnings.append("the model's step list was unusable after repairs; the steps were taken from the outline")
    built = step_tree.build_tree(
        question,
        outline_text,
        [step_tree.StepSpec(name=s.name, description=s.description, level=s.level) for s in plan.steps],
        max_steps=settings.max_steps,
        max_depth=settings.max_depth,
    )
    return {"tree": built.tree, "warnings": warnings + built.warnings, "usage": usage}
