"""revise: a reviewer's changes to a finished run (``actions`` input), applied to the step tree.

A finished thread given ``{"actions": [...]}`` (``deepstep.revise``, ``deepstep step``, Studio) starts here
instead of planning: the tree is revised (``deepstep.revisions``), the fan-out then researches only the steps
left pending (not steps that failed before: ``deepstep resume`` retries those), and the report is rebuilt.
With ``verify = model`` each answer a reviewer wrote gets the verifier's one call; nothing else here calls a model.
"""

from __future__ import annotations

from typing import Any, Literal

from deepstep import step_tree
from deepstep.configuration import Settings
from deepstep.errors import InputError
from deepstep.nodes.verify import judged_claims
from deepstep.revisions import judged_answer
from deepstep.revisions import revise as revised
from deepstep.state import RunState
from deepstep.usage import Usage, add_usage


def revise(state: RunState, settings: Settings) -> dict[str, Any]:
    """Apply the reviewer's actions to the tree; the steps they leave pending are researched next."""
    if "tree" not in state:
        raise InputError("this thread has no finished plan to revise: start it with a question first")
    revision = revised(state["tree"], state.get("actions") or [])
    tree, usage = revision.tree, Usage()
    if settings.verify == "model":
        for step_id in revision.edited_answers:
            node = tree.nodes[step_id]
            if node["claims"]:
                claims, call_usage = judged_claims(settings, node.get("question", ""), node.get("contexts") or [], node["claims"])
                tree = step_tree.with_step_updates(tree, [{"id": step_id, **judged_answer(node, claims)}])
                usage = add_usage(usage, call_usage)
    # Counted on the root, so the thread's history tells each revision's report apart (``deepstep history``).
    revisions = tree.nodes[step_tree.ROOT_ID].get("revisions", 0) + 1
    tree = step_tree.with_root_update(tree, revision="; ".join(revision.done), revisions=revisions)
    return {"tree": tree, "actions": [], "step_results": None, "usage": usage}


def start(state: RunState) -> Literal["revise", "outline"]:
    """A thread given actions is revised; anything else (a new question) is planned."""
    return "revise" if state.get("actions") else "outline"
