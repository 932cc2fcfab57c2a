"""collect and report: merge step results into the tree, then render the report."""

from __future__ import annotations

from typing import Any

from deepstep import render, step_tree
from deepstep.state import RunState


def collect(state: RunState) -> dict[str, Any]:
    tree = step_tree.with_step_updates(state["tree"], (state.get("step_results") or {}).values())
    failed = [{"id": n["id"], "level": n["level"], "name": n["name"], "error": n["error"]} for n in step_tree.steps(tree) if n["status"] == "failed"]
    return {"tree": tree, "failed_steps": failed}


def report(state: RunState) -> dict[str, Any]:
    return {"report": render.markdown_report(state["tree"])}
