"""collect and report: merge step results into the tree, then render the report."""

from __future__ import annotations

from typing import Any

from deepstep import render, step_tree
from deepstep.configuration import Settings
from deepstep.records import FailedStep
from deepstep.state import RunState


def collect(state: RunState) -> dict[str, Any]:
    """Merge the steps' results into the tree, list the failed steps, and clear the fan-in buffer:
    from here on the tree alone holds each step's status, and the final checkpoint holds every
    step's passages and search once."""
    tree = step_tree.with_step_updates(state["tree"], (state.get("step_results") or {}).values())
    failed: list[FailedStep] = [
        {"id": n["id"], "level": n["level"], "name": n["name"], "error": n["error"]} for n in step_tree.steps(tree) if n["status"] == "failed"
    ]
    return {"tree": tree, "failed_steps": failed, "step_results": None}


def report(state: RunState, settings: Settings) -> dict[str, Any]:
    """Render the Markdown report from the tree, in the layout the settings ask for."""
    return {"report": render.report(state["tree"], settings.report_layout)}
