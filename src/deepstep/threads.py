"""A thread's result as the API returns it, and loading a stored thread from its latest checkpoint.

Loading (``deepstep.load``, ``deepstep show``, ``export``) goes through the checkpointer alone
for a finished thread or one waiting for review: compiling the graph to call ``get_state`` would
import LangGraph's runtime and LangSmith, about a second of CPU for commands that run nothing.
What ``get_state`` adds there, the tasks still to run and a pending review, is read from the
checkpoint the way LangGraph stores it. A thread stopped in the middle of a superstep is read
through the graph. ``tests/test_threads.py`` checks both ways agree in every state a thread can be in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from langgraph.constants import TASKS

from deepstep import render, step_tree
from deepstep.checkpoint import checkpoint_location, open_checkpointer
from deepstep.configuration import Settings
from deepstep.errors import ConfigError, InputError, UnknownThreadError

if TYPE_CHECKING:
    import networkx as nx
    import pandas as pd
    from langgraph.checkpoint.base import CheckpointTuple

    from deepstep.history import ReportVersion
    from deepstep.records import BudgetPause, FailedStep
    from deepstep.usage import Usage

# awaiting_budget: paused by its caps (max_calls, max_run_tokens, max_cost) before a step or the synthesis.
Status = Literal["done", "awaiting_review", "awaiting_budget", "incomplete"]
THREAD_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

# LangGraph's checkpoint channels for what runs next: a pending interrupt's write, and the edge
# channel that triggers a node ("branch:to:NODE") until that node has run. Sends wait in TASKS.
_INTERRUPT_WRITE = "__interrupt__"
_EDGE_CHANNEL_PREFIX = "branch:to:"


@dataclass
class RunResult:
    thread_id: str
    tree: nx.DiGraph
    markdown: str
    usage: Usage
    failed_steps: list[FailedStep]
    warnings: list[str] = field(default_factory=list)
    status: Status = "done"
    review_request: dict[str, Any] | None = None
    # Set when the status is awaiting_budget: the caps, what was used and what the rest of the run needs.
    budget_pause: BudgetPause | None = None

    def table(self) -> pd.DataFrame:
        """The storyboard table (seed format)."""
        return render.storyboard_table(self.tree)

    def versions(self, settings: Settings | None = None) -> list[ReportVersion]:
        """The thread's report versions, oldest first (``deepstep.history``): each run, resume or step rerun."""
        from deepstep.history import versions

        return versions(self.thread_id, settings=settings)

    # The report in other formats, same content as ``markdown`` (deepstep/report_formats.py says how
    # math, links and HTML inside answers come out). The writers write atomically and return the path.
    def to_html(self) -> str:
        """The report as a standalone HTML page: inline stylesheet, no script, nothing loaded from elsewhere."""
        from deepstep.report_formats import markdown_to_html

        return markdown_to_html(self.markdown, title=step_tree.question_of(self.tree))

    def write_html(self, path: str | Path) -> Path:
        """Write ``to_html()`` to ``path`` (UTF-8)."""
        return _written(path, self.to_html().encode("utf-8"))

    def write_docx(self, path: str | Path) -> Path:
        """Write the report as a Word document (python-docx; no other program needed)."""
        from deepstep.report_formats import markdown_to_docx

        return _written(path, markdown_to_docx(self.markdown, title=step_tree.question_of(self.tree)))

    def write_pdf(self, path: str | Path) -> Path:
        """Write the report as an A4 PDF (WeasyPrint: ``pip install 'deepstep[pdf]'``; without it a
        ``MissingDependencyError`` says what to install, and ``path`` is left as it was)."""
        from deepstep.report_formats import markdown_to_pdf

        return _written(path, markdown_to_pdf(self.markdown, title=step_tree.question_of(self.tree)))


def _written(path: str | Path, content: bytes) -> Path:
    """``content`` written to ``path`` whole or not at all; converted first, so a failed conversion leaves the file as it was."""
    from deepstep.atomic_files import write_bytes_atomically

    write_bytes_atomically(Path(path), content)
    return Path(path)


def check_thread_id(thread_id: str) -> str:
    if not isinstance(thread_id, str):
        raise InputError(f"the thread id must be text (1-128 letters, digits, '.', '_' or '-'), not {type(thread_id).__name__}")
    if not THREAD_ID.match(thread_id):
        raise InputError(f"invalid thread id {thread_id!r}: use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return thread_id


def settings_or_default(settings: Settings | None) -> Settings:
    """``settings``, or the environment's when ``None``: a wrong type is bad input, not a TypeError later."""
    if settings is None:
        return Settings.build()
    if not isinstance(settings, Settings):
        raise ConfigError(f"settings must be a deepstep.Settings (e.g. deepstep.Settings.build(rollouts=1)), not {type(settings).__name__}")
    return settings


def result_from_state(thread_id: str, values: dict[str, Any], *, review_request: dict[str, Any] | None, tasks_pending: bool) -> RunResult:
    """The result of a thread whose state is ``values``; ``tasks_pending``: the graph has work left;
    ``review_request``: the payload of the pause it waits in (the plan review's or the budget's), if any."""
    tree = values.get("tree")
    if tree is None:
        tree = step_tree.new_tree(values.get("question", ""))
    budget_pause = review_request if is_budget_pause(review_request) else None
    if budget_pause is not None:
        review_request = None
    status: Status = (
        "awaiting_budget"
        if budget_pause is not None
        else "awaiting_review"
        if review_request is not None
        else ("incomplete" if tasks_pending else "done")
    )
    return RunResult(
        thread_id=thread_id,
        tree=tree,
        # A thread stopped before its report: rendered in its own layout (threads older than the setting used the seed's).
        markdown=values.get("report") or render.report(tree, values.get("settings", {}).get("report_layout", "seed")),
        usage=values.get("usage", {}),
        failed_steps=values.get("failed_steps", []),
        warnings=values.get("warnings", []),
        status=status,
        review_request=review_request,
        budget_pause=budget_pause,  # type: ignore[arg-type]  # checked by is_budget_pause
    )


def is_budget_pause(request: Any) -> bool:
    """Whether an interrupt's payload is the budget pause's (``records.BudgetPause``), not the plan review's."""
    return isinstance(request, dict) and request.get("paused") == "budget"


def _result_from_checkpoint(thread_id: str, stored: CheckpointTuple) -> RunResult | None:
    """The result read off the checkpoint, or None when only the graph can tell: a superstep left
    part-done has saved writes, which ``get_state`` applies through the state's reducers."""
    channels = stored.checkpoint["channel_values"]
    writes = stored.pending_writes or []
    if any(channel != _INTERRUPT_WRITE for _, channel, _ in writes):
        return None
    review_request = next((interrupt.value for _, _, interrupts in writes for interrupt in interrupts), None)
    tasks_pending = bool(channels.get(TASKS)) or any(name.startswith(_EDGE_CHANNEL_PREFIX) for name in channels)
    return result_from_state(thread_id, channels, review_request=review_request, tasks_pending=tasks_pending)


def load(thread_id: str, *, settings: Settings | None = None) -> RunResult:
    """The stored result of a thread, without running anything."""
    check_thread_id(thread_id)
    settings = settings_or_default(settings)
    if settings.database_url is None and not settings.checkpoint_file.exists():
        raise UnknownThreadError(
            f"no thread {thread_id}: there is no checkpoint database at {settings.checkpoint_file} yet; run a question first or set DEEPSTEP_HOME"
        )
    with open_checkpointer(settings) as saver:
        stored = saver.get_tuple({"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}})
        if stored is None or not stored.checkpoint["channel_values"]:
            raise UnknownThreadError(f"no thread {thread_id} in {checkpoint_location(settings)}: check the id or DEEPSTEP_HOME")
        result = _result_from_checkpoint(thread_id, stored)
        if result is None:  # stopped mid-superstep: rare, and worth the graph's import
            from deepstep.api import stored_result

            result = stored_result(saver, thread_id)
    return result


__all__ = ["RunResult", "check_thread_id", "load", "result_from_state"]
