"""review: pause for a human to approve or edit the plan (when ``review`` is on).

Resume with ``Command(resume=True)`` to approve, or with ``{"steps": [{"name", "description",
"level"}, ...]}`` to replace the plan; edited steps are validated like the model's.
Steps whose level is unchanged keep their id.
"""

from __future__ import annotations

from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.types import interrupt

from deepstep import tree as step_tree
from deepstep.configuration import Settings
from deepstep.errors import InputError
from deepstep.state import RunState


def review(state: RunState, config: RunnableConfig) -> dict[str, Any]:
    settings = Settings.from_config(config)
    tree = state["tree"]
    # The run that started the thread decides: a resume (e.g. from Studio) need not repeat the setting.
    wanted = settings.review or bool(state.get("settings", {}).get("review"))
    if not wanted or all(tree.nodes[n]["status"] != "pending" for n in step_tree.step_ids(tree)):
        return {}
    proposed = [{k: s[k] for k in ("name", "description", "level")} for s in step_tree.steps(tree)]
    decision = interrupt({"question": state["question"], "steps": proposed, "warnings": state.get("warnings", [])})
    edited = _edited_steps(decision)
    if edited is None:
        return {}
    ids_by_level = {tree.nodes[n]["level"]: n for n in step_tree.step_ids(tree)}
    built = step_tree.build_tree(
        state["question"],
        state.get("outline", ""),
        edited,
        max_steps=settings.max_steps,
        max_depth=settings.max_depth,
        ids=ids_by_level,
    )
    if not step_tree.step_ids(built.tree):
        raise InputError("the edited plan has no valid steps: each needs a name and a level like 0, 0>1")
    return {"tree": built.tree, "warnings": ["plan edited in review", *built.warnings]}


def _edited_steps(decision: Any) -> list[step_tree.StepSpec] | None:
    """``None`` means approved as proposed."""
    if decision is None or decision is True or (isinstance(decision, dict) and decision.get("approve") and "steps" not in decision):
        return None
    raw = decision.get("steps") if isinstance(decision, dict) else decision
    if not isinstance(raw, list):
        raise InputError('review answer must be true (approve) or {"steps": [{"name", "description", "level"}, ...]}')
    specs = []
    for item in raw:
        if not isinstance(item, dict):
            raise InputError(f"each edited step must be an object with name, description and level, got {item!r}")
        specs.append(
            step_tree.StepSpec(name=str(item.get("name", "")), description=str(item.get("description", "")), level=str(item.get("level", "")))
        )
    return specs
