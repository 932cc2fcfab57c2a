"""synthesize: the answer-first report's opening answer, written from the step answers (one model call)."""

from __future__ import annotations

import hashlib
from typing import Any

from deepstep import prompts, render, step_tree
from deepstep.citations import remove_invalid_citations, renumber_citations
from deepstep.claims import check_answer, count_verdict, mark_unsupported
from deepstep.configuration import Settings
from deepstep.models import call_text
from deepstep.nodes.answer import citation_grammar
from deepstep.parsing import require_usable_text
from deepstep.state import RunState


def synthesize(state: RunState, settings: Settings) -> dict[str, Any]:
    """Answer the question in a few sentences from the answered steps (one model call), citing the report's one
    reference list; its claims are checked like any answer's (and with ``unsupported_claims = drop`` the unsupported
    ones removed and counted, as in a step's answer). No call for the seed layout or when no step was answered."""
    tree = state["tree"]
    answered = [step for step in step_tree.steps(tree) if step["status"] == "done"]
    if settings.report_layout != "answer_first" or not answered:
        return {}
    references = render.report_references(tree)
    step_answers = "\n".join(
        f"- {step['name']}: {' '.join(renumber_citations(step['answer'], references.numbers[step['id']])[0].split())}" for step in answered
    )
    source = hashlib.sha256(step_answers.encode()).hexdigest()[:16]
    if tree.nodes[step_tree.ROOT_ID].get("synthesized_from") == source:
        return {}  # a re-run over the same step answers keeps its answer: no call
    text, usage = call_text(
        settings,
        "synthesize",
        prompts.SYNTHESIZE.format_messages(
            question=state["question"],
            step_answers=step_answers,
            contexts=prompts.format_contexts(references.passages),
            language_rule=prompts.language_rule(settings.language),
        ),
        grammar=citation_grammar(settings, len(references.passages)),
    )
    text, _ = remove_invalid_citations(require_usable_text("synthesize", text), len(references.passages))
    claims = check_answer(text, references.passages, state["question"])
    dropped = 0
    if settings.unsupported_claims == "drop":  # as finish does for a step's answer
        text = mark_unsupported(text, claims, drop=True)
        dropped = count_verdict(claims, "unsupported")
        claims = check_answer(text, references.passages, state["question"])
    update = step_tree.with_root_update(tree, answer=text, claims=claims, dropped_claims=dropped, synthesized_from=source)
    return {"tree": update, "usage": usage}
