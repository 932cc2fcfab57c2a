"""``deepstep run``, ``resume``, ``step``, ``refresh`` and ``show``: research a question, continue a thread, change a finished one, print it."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from deepstep import json_text
from deepstep.cli.common import app, fail, finish_run, load_settings, progress_display, stderr, stdout, user_errors

if TYPE_CHECKING:
    from deepstep import api

# The budget caps, as both `run` and `resume` take them: a run over them pauses and exits with code 3.
MaxCalls = Annotated[
    int | None, typer.Option("--max-calls", help="Cap on the thread's model calls: pause (exit code 3) before a step that could pass it.")
]
MaxRunTokens = Annotated[
    int | None,
    typer.Option(
        "--max-tokens", "--max-run-tokens", help="Cap on the thread's tokens (prompt + completion, estimated high per step); pause before passing it."
    ),
]
MaxCost = Annotated[
    float | None, typer.Option("--max-cost", help="Cap on the thread's estimated cost in USD (needs DEEPSTEP_PRICES); pause before passing it.")
]

# The API (LangGraph, the checkpointer, the model client) is imported inside the commands
# that use it, so `deepstep --help` and the other commands do not load it.


@app.command()
def run(
    question: Annotated[str, typer.Argument(help="The question to research.")],
    thread_id: Annotated[str | None, typer.Option("--thread-id", help="Thread id (default: a new random id).")] = None,
    corpus: Annotated[Path | None, typer.Option(help="Folder of md/txt/rst/html files (default: fetched sklearn guide, else demo corpus).")] = None,
    out: Annotated[Path | None, typer.Option(help="Folder for report.md and table.csv (default: HOME/runs/THREAD).")] = None,
    review: Annotated[bool, typer.Option("--review", help="Pause after planning to approve or edit the steps.")] = False,
    rollouts: Annotated[int | None, typer.Option(help="MCTSr rollouts per step.")] = None,
    max_steps: Annotated[int | None, typer.Option(help="At most this many steps.")] = None,
    max_concurrency: Annotated[int | None, typer.Option(help="Steps run at once.")] = None,
    base_url: Annotated[str | None, typer.Option(help="OpenAI-compatible server URL (default: $OPENAI_BASE_URL).")] = None,
    model: Annotated[str | None, typer.Option(help="Model name for every role.")] = None,
    max_calls: MaxCalls = None,
    max_run_tokens: MaxRunTokens = None,
    max_cost: MaxCost = None,
) -> None:
    """Research QUESTION step by step and write the report."""
    from deepstep import api

    thread_id = thread_id or uuid.uuid4().hex[:12]
    with user_errors(thread_id):
        settings = load_settings(
            corpus=corpus,
            review=review or None,
            rollouts=rollouts,
            max_steps=max_steps,
            max_concurrency=max_concurrency,
            base_url=base_url,
            model=model,
            max_calls=max_calls,
            max_run_tokens=max_run_tokens,
            max_cost=max_cost,
        )
        api.check_thread_id(thread_id)
        stderr.print(f"thread {thread_id}")
        with progress_display() as on_progress:
            result = api.run(question, thread_id=thread_id, settings=settings, on_progress=on_progress)
        finish_run(result, out, settings)


@app.command()
def resume(
    thread_id: Annotated[str, typer.Argument(help="The thread to continue.")],
    steps: Annotated[Path | None, typer.Option("--steps", help="JSON file with an edited step list for a plan awaiting review.")] = None,
    out: Annotated[Path | None, typer.Option(help="Folder for report.md and table.csv.")] = None,
    max_calls: MaxCalls = None,
    max_run_tokens: MaxRunTokens = None,
    max_cost: MaxCost = None,
) -> None:
    """Continue a thread after a crash, a review pause or a budget pause (give higher caps), or retry its failed steps."""
    from deepstep import api

    with user_errors(thread_id):
        review: Any = None
        if steps is not None:
            from deepstep.parsing import load_json

            try:
                # utf-8-sig: a BOM (as Windows editors write) is not an error.
                review = {"steps": load_json(steps.read_text(encoding="utf-8-sig"))}
            except OSError as error:
                fail(f"cannot read the step list {steps}: {error.strerror or error}; pass a readable JSON file")
            except ValueError as error:  # not UTF-8, not JSON, nested too deeply
                fail(f"cannot read the step list {steps}: {error}; it must be a UTF-8 JSON list of {{name, description, level}}")
            if isinstance(review["steps"], dict):
                review = review["steps"]
        settings = load_settings(max_calls=max_calls, max_run_tokens=max_run_tokens, max_cost=max_cost)
        with progress_display() as on_progress:
            # The caps by keyword, not as settings: settings given to resume would override the thread's own.
            result = api.resume(
                thread_id, review=review, on_progress=on_progress, max_calls=max_calls, max_run_tokens=max_run_tokens, max_cost=max_cost
            )
        finish_run(result, out, settings)


@app.command()
def step(
    thread_id: Annotated[str, typer.Argument(help="The finished thread.")],
    step: Annotated[str, typer.Argument(help="The step: its id or its level, e.g. 0>1 (for --add, the parent; '' for the top level).")],
    rerun: Annotated[bool, typer.Option("--rerun", help="Research the step again (question, retrieve, answer, refine).")] = False,
    reject: Annotated[bool, typer.Option("--reject", help="Same as --rerun: reject its answer, with --note saying why.")] = False,
    note: Annotated[str | None, typer.Option("--note", help="What the model should do better; shown in the step's prompts.")] = None,
    edit_answer: Annotated[
        Path | None, typer.Option("--edit-answer", help="A file with your answer (UTF-8 text citing the step's passages as [n]); no model call.")
    ] = None,
    edit_question: Annotated[str | None, typer.Option("--edit-question", help="Your research question; the step is researched from it.")] = None,
    approve: Annotated[bool, typer.Option("--approve", help="Approve the step's answer as it stands (the report says so).")] = False,
    add: Annotated[str | None, typer.Option("--add", help="Add a step with this name under STEP; only it is researched.")] = None,
    description: Annotated[str, typer.Option("--description", help="With --add: what the new step should cover.")] = "",
    remove: Annotated[bool, typer.Option("--remove", help="Remove the step and every step under it.")] = False,
    out: Annotated[Path | None, typer.Option(help="Folder for report.md and table.csv.")] = None,
) -> None:
    """Change one step of a finished report (every other step is kept, no call for them) and rebuild the report."""
    from deepstep import api

    with user_errors(thread_id):
        flags = {"--rerun": rerun, "--reject": reject, "--edit-answer": edit_answer is not None, "--edit-question": edit_question is not None}
        chosen = [flag for flag, given in {**flags, "--approve": approve, "--add": add is not None, "--remove": remove}.items() if given]
        if len(chosen) != 1:
            fail(
                "nothing to do: pass one of --rerun, --reject --note, --edit-answer FILE, --edit-question TEXT, --approve, --add NAME, --remove"
                if not chosen
                else f"pass one change at a time, not {' and '.join(chosen)}"
            )
        action: dict[str, str] = {"step": step, "note": note or ""}
        if rerun or reject:
            action["action"] = "reject" if reject else "rerun"
        elif edit_answer is not None:
            action |= {"action": "edit_answer", "text": _read_answer(edit_answer)}
        elif edit_question is not None:
            action |= {"action": "edit_question", "text": edit_question}
        elif add is not None:
            action |= {"action": "add", "name": add, "description": description}
        else:
            action["action"] = "approve" if approve else "remove"
        settings = load_settings()
        with progress_display() as on_progress:
            result = api.revise(thread_id, [action], on_progress=on_progress)  # type: ignore[list-item]  # built field by field above
        finish_run(result, out, settings)


def _read_answer(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")  # a BOM (as Windows editors write) is not part of the answer
    except OSError as error:
        fail(f"cannot read the answer file {path}: {error.strerror or error}; pass a readable text file")
    except UnicodeDecodeError:
        fail(f"the answer file {path} is not UTF-8 text; save it as UTF-8")


@app.command()
def refresh(
    thread_id: Annotated[str, typer.Argument(help="The finished thread.")],
    corpus: Annotated[Path | None, typer.Option(help="Compare with this folder instead of the thread's corpus; the thread then keeps it.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list the out-of-date steps (no model call).")] = False,
    out: Annotated[Path | None, typer.Option(help="Folder for report.md and table.csv.")] = None,
) -> None:
    """After the corpus changed: list the steps whose cited passages changed or vanished, or whose retrieval
    now finds other passages, and research only those again (every other step is kept, no call for them)."""
    from deepstep import api

    with user_errors(thread_id):
        settings = load_settings()
        found = api.refresh(thread_id, corpus=corpus, dry_run=True)
        if not found.stale:
            if corpus is not None and not dry_run:
                api.refresh(thread_id, corpus=corpus)  # keeps the folder for later runs (no model call)
            stdout.print(f"all {found.checked} steps are current", highlight=False)
            return
        _print_stale_steps(found)
        if dry_run:
            return
        with progress_display() as on_progress:
            refreshed = api.refresh(thread_id, corpus=corpus, on_progress=on_progress)
        finish_run(refreshed.result, out, settings)


def _print_stale_steps(found: api.Refresh) -> None:
    from rich.table import Table

    table = Table(title=f"{len(found.stale)} of {found.checked} steps out of date", show_edge=False)
    for column in ("level", "step", "reason"):
        table.add_column(column)
    for stale in found.stale:
        table.add_row(stale["level"], escape(stale["name"]), escape("; ".join(stale["reasons"])))
    stdout.print(table)


@app.command()
def show(
    thread_id: Annotated[str, typer.Argument(help="The thread to show.")],
    format: Annotated[str, typer.Option("--format", "-f", help="md, json or csv.")] = "md",
) -> None:
    """Print a stored thread as Markdown, JSON or CSV."""
    from deepstep.threads import load
    from deepstep.tree_encoding import to_data

    with user_errors():
        if format not in ("md", "json", "csv"):
            fail(f"unknown format {format!r}: use md, json or csv")
        result = load(thread_id)
        if format == "md":
            sys.stdout.write(result.markdown)
        elif format == "csv":
            from deepstep.render import storyboard_csv

            sys.stdout.write(storyboard_csv(result.tree))
        else:
            payload = {
                "thread_id": result.thread_id,
                "status": result.status,
                "tree": to_data(result.tree),
                "usage": result.usage,
                "failed_steps": result.failed_steps,
                "warnings": result.warnings,
                "report": result.markdown,
            }
            sys.stdout.write(json_text.dumps(payload, ensure_ascii=False, indent=2) + "\n")
