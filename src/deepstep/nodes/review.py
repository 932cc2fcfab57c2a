"""review: pause for a human to approve or edit the plan (when ``review`` is on).

Resume with ``Command(resume=True)`` to approve, or with ``{"steps": [{"name", "description",
"level"}, ...]}`` to replace the plan; edited steps are validated like the model's.
The request also gives the ``estimate`` of the rest of the run (``deepstep.budget``): model calls at most,
tokens and dollars. Steps whose level is unchanged keep their id. An unusable answer is not applied: the plan keeps
waiting for review, with the reason in the request's ``error``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from langgraph.types import interrupt

from deepstep import budget, step_tree
from deepstep.configuration import Settings
from deepstep.errors import InputError
from deepstep.state import RunState

ANSWER_FORMAT = 'true (approve) or {"steps": [{"name", "description", "level"}, ...]}'


def review(state: RunState, settings: Settings) -> dict[str, Any]:
    """Pause for a human to approve or edit the plan (when ``review`` is on); the fan-out follows."""
    tree = state["tree"]
    # The run that started the thread decides: a resume (e.g. from Studio) need not repeat the setting.
    wanted = settings.review or bool(state.get("settings", {}).get("review"))
    if not wanted or all(tree.nodes[n]["status"] != "pending" for n in step_tree.step_ids(tree)):
        return {}
    proposed = [{k: s[k] for k in ("name", "description", "level")} for s in step_tree.steps(tree)]
    pending = sum(1 for n in step_tree.step_ids(tree) if tree.nodes[n]["status"] != "done")
    request: dict[str, Any] = {
        "question": state["question"],
        "steps": proposed,
        "warnings": state.get("warnings", []),
        "estimate": budget.estimate(settings, pending, planned=len(proposed)),
    }
    while True:
        try:
            built = edited_plan(interrupt(request), state, settings)
        except InputError as error:
            # Ask again instead of raising: LangGraph keeps every answer this task was given and
            # replays them whenever the node runs again, so a raised error would reject each later answer too.
            request = {**request, "error": str(error)}
            continue
        if built is None:
            return {}
        return {"tree": built.tree, "warnings": ["plan edited in review", *built.warnings]}


def checked_answer(decision: Any, state: Mapping[str, Any], settings: Settings) -> Any:
    """``decision`` as plain data the review node will accept (``True`` or ``{"steps": [...]}``),
    or an ``InputError``: check an answer before it is given to the graph, which keeps it."""
    specs = _edited_steps(decision)
    if specs is None:
        return True
    edited_plan({"steps": [vars(spec) for spec in specs]}, state, settings)
    return {"steps": [vars(spec) for spec in specs]}


def edited_plan(decision: Any, state: Mapping[str, Any], settings: Settings) -> step_tree.TreeBuild | None:
    """The plan a review answer asks for; ``None`` means approved as proposed."""
    specs = _edited_steps(decision)
    if specs is None:
        return None
    tree = state["tree"]
    ids_by_level = {tree.nodes[n]["level"]: n for n in step_tree.step_ids(tree)}
    built = step_tree.build_tree(
        state["question"],
        state.get("outline", ""),
        specs,
        max_steps=settings.max_steps,
        max_depth=settings.max_depth,
        ids=ids_by_level,
    )
    if not step_tree.step_ids(built.tree):
        raise InputError("the edited plan has no valid steps: each needs a name and a level like 0, 0>1")
    return built


def _edited_steps(decision: Any) -> list[step_tree.StepSpec] | None:
    """``None`` means approved as proposed. Never formats the answer itself: it may be nested
    too deeply to print."""
    if decision is None or decision is True or (isinstance(decision, dict) and decision.get("approve") and "steps" not in decision):
        return None
    raw = decision.get("steps") if isinstance(decision, dict) else decision
    if not isinstance(raw, list):
        raise InputError(f"review answer must be {ANSWER_FORMAT}")
    specs = []
    for number, item in enumerate(raw, start=1):
        if not isinstance(item, dict):
            raise InputError(f"edited step {number} is a {type(item).__name__}: each must be an object with name, description and level")
        specs.append(
            step_tree.StepSpec(
                name=_text(item, "name", number), description=_text(item, "description", number), level=_text(item, "level", number, numbers=True)
            )
        )
    return specs


def _text(item: dict[str, Any], key: str, number: int, *, numbers: bool = False) -> str:
    value = item.get(key, "")
    if isinstance(value, str):
        return value
    if numbers and isinstance(value, float):
        return str(value)  # never a level: dropped with a warning
    if numbers and isinstance(value, int) and not isinstance(value, bool):
        # Python refuses str() of an int over 4300 digits; one over 9 digits is no level anyway.
        return str(value) if abs(value) < 10**step_tree.MAX_LEVEL_DIGITS else "a number too long for a level"
    raise InputError(f"edited step {number}: {key} must be text, not {type(value).__name__}")
