"""A thread's report versions, from its checkpoint history: every report a run, a resume or a step rerun
wrote stays in the checkpoints, so listing and comparing them costs no model call.

A version is a root checkpoint whose report differs from the one before it. Its action is ``run`` for
the first; what a reviewer asked for when the thread was revised (``deepstep step``, ``deepstep.revise``:
e.g. ``rerun 0>1; approve 0``, kept on the tree's root); else ``resume``. Read through the checkpointer alone, like ``deepstep show``.
"""

from __future__ import annotations

from typing import Any

from typing_extensions import TypedDict

from deepstep import step_tree
from deepstep.checkpoint import checkpoint_location, open_checkpointer
from deepstep.configuration import Settings
from deepstep.errors import InputError, UnknownThreadError
from deepstep.render import report_diff
from deepstep.threads import check_thread_id, settings_or_default
from deepstep.usage import Usage


class ReportVersion(TypedDict):
    """One version of a thread's report."""

    number: int  # 1 for the first report
    time: str  # when its checkpoint was written (ISO 8601, UTC)
    action: str  # "run", "resume", or the revision's actions, e.g. "rerun 0>1; approve 0"
    steps: list[str]  # levels of the steps whose answer or status it changed (every step for the first)
    calls: int  # model calls made for this version
    cost: float | None  # their estimated dollars, when every model used has a price
    report: str


def versions(thread_id: str, *, settings: Settings | None = None) -> list[ReportVersion]:
    """The thread's report versions, oldest first."""
    check_thread_id(thread_id)
    settings = settings_or_default(settings)
    with open_checkpointer(settings) as saver:
        checkpoints = list(saver.list({"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}))
    if not checkpoints:
        raise UnknownThreadError(f"no thread {thread_id} in {checkpoint_location(settings)}: check the id or DEEPSTEP_HOME")
    found: list[ReportVersion] = []
    previous: dict[str, Any] = {}
    for stored in reversed(checkpoints):  # the saver lists the newest first
        values = stored.checkpoint["channel_values"]
        report = values.get("report")
        if not report or report == previous.get("report"):
            continue
        steps = _changed_steps(previous.get("tree"), values["tree"])
        calls_now, calls_before = _calls(values.get("usage")), _calls(previous.get("usage"))
        (count, actions), (count_before, _) = _revision(values), _revision(previous)
        revised = actions if count != count_before else ""
        found.append(
            {
                "number": len(found) + 1,
                "time": stored.checkpoint["ts"],
                "action": "run" if not found else revised or "resume",
                "steps": steps,
                "calls": calls_now - calls_before,
                "cost": settings.estimate_cost(_usage_since(values.get("usage") or {}, previous.get("usage") or {})),
                "report": report,
            }
        )
        previous = values
    return found


def diff(thread_id: str, from_version: int | None = None, to_version: int | None = None, *, settings: Settings | None = None) -> str:
    """A unified diff of two report versions (default: the last two) as a Markdown ``diff`` block."""
    found = versions(thread_id, settings=settings)
    to_number = to_version or len(found)
    from_number = from_version or max(1, to_number - 1)
    for number in (from_number, to_number):
        if not 1 <= number <= len(found):
            raise InputError(f"thread {thread_id} has report versions 1 to {len(found)}, not {number}: see `deepstep history {thread_id}`")
    return report_diff(found[from_number - 1]["report"], found[to_number - 1]["report"], f"version {from_number}", f"version {to_number}")


def _changed_steps(before: Any, after: Any) -> list[str]:
    """Levels of the steps whose answer, status or question differ between two trees (all steps of ``after``
    when there is no tree before)."""
    fields = ("answer", "status", "question")
    old = {node["id"]: node for node in step_tree.steps(before)} if before is not None else {}
    return [node["level"] for node in step_tree.steps(after) if node["id"] not in old or any(node.get(f) != old[node["id"]].get(f) for f in fields)]


def _revision(values: dict[str, Any]) -> tuple[int, str]:
    """How many times the thread was revised so far, and what the last revision did."""
    root = values["tree"].nodes[step_tree.ROOT_ID] if values.get("tree") is not None else {}
    return root.get("revisions", 0), root.get("revision", "")


def _calls(usage: Usage | None) -> int:
    return int(sum(fields.get("calls", 0) for fields in (usage or {}).values()))


def _usage_since(now: Usage, before: Usage) -> dict[str, dict[str, float]]:
    return {role: {k: v - before.get(role, {}).get(k, 0) for k, v in fields.items()} for role, fields in now.items()}
