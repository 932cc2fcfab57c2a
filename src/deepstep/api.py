"""The high-level Python API: ``run``, ``resume`` and ``load`` a research thread."""

from __future__ import annotations

import dataclasses
import os
import re
import unicodedata
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import networkx as nx
from langgraph.types import Command

from deepstep import budget, freshness, step_tree
from deepstep.checkpoint import checkpoint_location, open_checkpointer
from deepstep.configuration import ROLES, RUN_SHAPING_FIELDS, Settings
from deepstep.corpus import demo_corpus_dir
from deepstep.corpus_fetch import announce_demo_corpus, default_corpus_dir
from deepstep.errors import (
    ConfigError,
    InputError,
    ModelServerError,
    StructuredOutputError,
    UnknownThreadError,
)
from deepstep.graph import DeepstepGraph, build_graph
from deepstep.llm_server import CAPACITY as EMBEDDED_CAPACITY
from deepstep.llm_server import EMBEDDED_KEY_ENV, EMBEDDED_MAX_TOKENS, MODEL_ALIAS, embedded_server, gone_reason
from deepstep.locks import thread_lock
from deepstep.models import describe_error, unusable_reply
from deepstep.nodes.review import checked_answer
from deepstep.records import Estimate, StepAction
from deepstep.redaction import redact_url
from deepstep.store import read_store
from deepstep.threads import RunResult, check_thread_id, is_budget_pause, load, result_from_state, settings_or_default

if TYPE_CHECKING:  # annotations only: loading a thread (`deepstep show`) needs none of them
    from langchain_core.retrievers import BaseRetriever
    from langchain_core.runnables import RunnableConfig
    from langgraph.checkpoint.base import BaseCheckpointSaver

    from deepstep.records import StaleStep

MAX_QUESTION_CHARS = 4000


@dataclass
class Progress:
    """What the run is doing now, for progress displays."""

    phase: str
    steps_done: int = 0
    steps_total: int = 0
    # Model calls the run lets be in flight at once (the embedded server serves one at a time).
    calls_in_flight: int = 0
    # Once planned: what the steps still to research (and the synthesis) need at most (``deepstep.budget``).
    estimate: Estimate | None = None


ProgressCallback = Callable[[Progress], None]


def clean_question(question: str) -> str:
    """The question without control characters; rejects empty and oversized input."""
    if not isinstance(question, str):
        raise InputError(f'the question must be text, e.g. deepstep.run("What is a loss function?"), not {type(question).__name__}')
    text = "".join(ch for ch in question if ch in "\n\t" or unicodedata.category(ch)[0] != "C")
    text = re.sub(r"\s+", " ", text).strip()
    if not text:
        raise InputError('the question is empty: pass a question, e.g. deepstep run "What is a loss function?"')
    if len(text) > MAX_QUESTION_CHARS:
        raise InputError(f"the question is {len(text)} characters long; shorten it to at most {MAX_QUESTION_CHARS}")
    return text


def question_field(fields: Mapping[str, Any], where: str) -> str:
    """The cleaned ``question`` of one row of a question file (``deepstep batch``, ``deepstep eval``); an error
    names the row (``where``)."""
    if "question" not in fields:
        raise InputError(f"{where}: no question")
    try:
        return clean_question(fields["question"])
    except InputError as error:
        raise InputError(f"{where}: {error}") from None


def _run_config(thread_id: str, settings: Settings) -> RunnableConfig:
    # Each rollout is three supersteps per evaluator sample; leave room for retries. Under a budget cap the
    # steps may go out in batches: two more supersteps (step, collect) per batch, at most one batch per step.
    recursion_limit = 40 + 8 * (settings.rollouts + 1) * settings.reward_samples + 2 * settings.max_steps
    return {
        # Only the thread id: the settings reach the nodes as the run's context (``_stream``), which
        # LangGraph never copies into checkpoints or their metadata.
        "configurable": {"thread_id": thread_id},
        "max_concurrency": settings.max_concurrency,
        "recursion_limit": recursion_limit,
    }


@contextmanager
def _model_server(settings: Settings) -> Iterator[Settings]:
    """``settings`` with a model server: the configured one, else the embedded model (started if needed)."""
    if not settings.needs_embedded_model:
        yield settings
        return
    with embedded_server(settings.home, module=settings.llama_server_module) as server:
        yield Settings.build(
            **{
                **settings.model_dump(),
                "base_url": server.base_url,
                "model": MODEL_ALIAS,
                "llama_cpp": True,
                "cited_sentences": settings.cited_sentences is not False,
                # Calls send the server's own key (models.chat_model); never read $OPENAI_API_KEY for it.
                "api_key_env": EMBEDDED_KEY_ENV,
                "max_tokens": min(settings.max_tokens, EMBEDDED_MAX_TOKENS),
                # The server computes one request at a time: more calls in flight would only queue
                # there and run into the per-call timeout while they wait.
                "max_concurrency": min(settings.max_concurrency, EMBEDDED_CAPACITY),
            }
        )


@contextmanager
def _open_graph(settings: Settings, retriever: BaseRetriever | None) -> Iterator[DeepstepGraph]:
    with open_checkpointer(settings, check_writable=True) as saver:
        yield build_graph(saver, retriever=retriever)


def _thread_exists(graph: DeepstepGraph, thread_id: str) -> bool:
    return graph.get_state({"configurable": {"thread_id": thread_id}}).created_at is not None  # a thread's first checkpoint has a time


def _check_models(settings: Settings) -> None:
    for role in ROLES:
        settings.resolve_model(role)  # raises ConfigError when no server is configured


# Progress phases in the user's words: while a node runs, and once it finished (its successor runs).
_PHASE_WHILE = {
    "outline": "planning: outline",
    "decompose": "planning: steps",
    "review": "steps",
    "step": "steps",
    "collect": "report",
    "synthesize": "report",  # writing the answer the report opens with
    "report": "report",
    "budget": "steps",  # the check before a batch of steps (a pause when none fits)
}
_PHASE_AFTER = {**_PHASE_WHILE, "outline": "planning: steps", "decompose": "steps", "report": "done", "__interrupt__": "waiting for review"}
_BUDGET_PAUSE_PHASE = "paused: budget"


def _progress_at(snapshot: Any, settings: Settings) -> tuple[Progress, set[str]]:
    """Where a thread stands (a resume starts mid-way), and the ids of its steps already done."""
    values = snapshot.values
    tree = values.get("tree")
    ids = step_tree.step_ids(tree) if tree is not None else []
    results = values.get("step_results") or {}
    finished = step_tree.FINISHED_STATUSES
    done = {i for i in ids if tree.nodes[i]["status"] in finished or results.get(i, {}).get("status") in finished}
    phase = _PHASE_WHILE.get(snapshot.tasks[0].name, "steps") if snapshot.tasks else "planning: outline"
    progress = Progress(phase=phase, steps_done=len(done), steps_total=len(ids))
    if tree is not None and snapshot.tasks:
        progress.estimate = budget.estimate(settings, len(ids) - len(done), planned=len(ids))
    return progress, done


def _stream(graph: DeepstepGraph, graph_input: Any, config: RunnableConfig, settings: Settings, on_progress: ProgressCallback | None) -> None:
    """Run the graph with ``settings`` resolved once for the whole run: nodes get them as LangGraph's runtime context."""
    import openai  # here, not at the top: `deepstep show` loads threads without the model client

    from deepstep.interrupts import stop_on_ctrl_c

    progress, finished = _progress_at(graph.get_state(config), settings)
    if on_progress:
        on_progress(progress)
    try:
        # Ctrl-C stops the run's model calls in every worker thread, not just the main one.
        with stop_on_ctrl_c():
            # Not subgraphs=True: LangGraph then parks a stream waiter on one of the
            # max_concurrency worker threads, so one step fewer would run at a time.
            # durability "sync": a super-step's checkpoint is saved before the next one starts its model calls, so a
            # process killed at any moment repeats only the calls in flight (with "async" a call just answered
            # could still be waiting for its checkpoint when the next call went out).
            for update in graph.stream(graph_input, config, context=settings, stream_mode="updates", durability="sync"):
                for node, values in update.items():
                    if isinstance(values, dict) and values.get("tree") is not None:
                        progress.steps_total = len(step_tree.step_ids(values["tree"]))
                        if node == "decompose":  # planned: the fan-out comes next
                            progress.estimate = budget.estimate(settings, progress.steps_total, planned=progress.steps_total)
                    if node == "step" and isinstance(values, dict):
                        finished.update(values.get("step_results") or {})
                        progress.steps_done = len(finished)
                    progress.phase = _PHASE_AFTER.get(node, progress.phase if node.startswith("__") else node)
                    if node == "__interrupt__" and any(is_budget_pause(getattr(pause, "value", None)) for pause in values):
                        progress.phase = _BUDGET_PAUSE_PHASE
                    if on_progress:
                        on_progress(progress)
    except (openai.OpenAIError, StructuredOutputError) as error:
        raise _as_user_error(error, settings) from None


def _as_user_error(error: Exception, settings: Settings) -> Exception:
    import openai

    base_url = redact_url(settings.resolve_model("decompose").base_url, keep_user=False)  # it may carry a key
    if isinstance(error, openai.AuthenticationError):
        return ConfigError(f"the model server at {base_url} rejected the API key: set ${settings.api_key_env}")
    if isinstance(error, openai.NotFoundError):
        return ConfigError(f"the model server at {base_url} does not know model {settings.model!r}: set DEEPSTEP_MODEL")
    if isinstance(error, openai.APIConnectionError):
        if reason := gone_reason(base_url):
            return ModelServerError(reason)
        if reason := unusable_reply(error):
            return ModelServerError(f"{reason} (at {base_url}), also on retries; check the server or try again later")
        return ModelServerError(f"cannot reach the model server at {base_url}: start it, or set OPENAI_BASE_URL to a running server")
    if isinstance(error, openai.APIStatusError):
        return ModelServerError(f"the model server at {base_url} keeps failing (HTTP {error.status_code}); try again later")
    if isinstance(error, StructuredOutputError):
        return ModelServerError(f"the model never produced a usable plan ({error}); try a stronger model")
    return ModelServerError(f"the model server at {base_url} failed: {describe_error(error)}")


def _result(graph: DeepstepGraph, config: RunnableConfig) -> RunResult:
    snapshot = graph.get_state(config)
    review_request = next((i.value for task in snapshot.tasks for i in task.interrupts), None)
    # Not snapshot.next: it leaves out tasks whose writes are saved, so a superstep whose every
    # task finished (e.g. all steps answered, collect not run yet) would look done.
    return result_from_state(config["configurable"]["thread_id"], snapshot.values, review_request=review_request, tasks_pending=bool(snapshot.tasks))


def stored_result(checkpointer: BaseCheckpointSaver, thread_id: str) -> RunResult:
    """A stored thread as the compiled graph sees it (its part-done superstep's writes applied)."""
    return _result(build_graph(checkpointer), {"configurable": {"thread_id": thread_id}})


def _execute(graph: DeepstepGraph, graph_input: Any, thread_id: str, settings: Settings, on_progress: ProgressCallback | None) -> RunResult:
    """Run the graph on the thread with a model server up for the whole run."""
    with _model_server(settings) as served:
        _check_models(served)
        config = _run_config(thread_id, served)
        if on_progress is not None and settings.needs_embedded_model:
            on_progress = _with_calls_in_flight(on_progress, served.max_concurrency)
        _stream(graph, graph_input, config, served, on_progress)
        return _result(graph, config)


def _with_calls_in_flight(on_progress: ProgressCallback, calls: int) -> ProgressCallback:
    def report(progress: Progress) -> None:
        on_progress(dataclasses.replace(progress, calls_in_flight=calls))

    return report


def _check_progress_callback(on_progress: ProgressCallback | None) -> None:
    if on_progress is not None and not callable(on_progress):
        raise InputError(f"on_progress must be a function taking a deepstep.Progress, not {type(on_progress).__name__}")


def _prepare(settings: Settings | None, corpus: str | Path | None, retriever: BaseRetriever | None) -> Settings:
    settings = settings_or_default(settings)
    if corpus is not None and not isinstance(corpus, (str, os.PathLike)):
        raise InputError(f"corpus must be the path of a folder (str or Path), not {type(corpus).__name__}")
    if corpus is None and settings.corpus is None and retriever is None:
        # Pin the default corpus in the thread's settings: a resume keeps it even if another is fetched meanwhile.
        corpus = default_corpus_dir(settings.home)
        if corpus == demo_corpus_dir():
            announce_demo_corpus()
    if corpus is not None:
        settings = Settings.build(**{**settings.model_dump(), "corpus": Path(corpus)})
    if retriever is None:
        from deepstep.retrieval import corpus_retriever  # bm25s and numpy: only a run over the corpus needs them

        corpus_retriever(settings)  # fail early (CorpusError) and index once, before any model call
    return settings


def run(
    question: str,
    *,
    thread_id: str | None = None,
    corpus: str | Path | None = None,
    settings: Settings | None = None,
    retriever: BaseRetriever | None = None,
    on_progress: ProgressCallback | None = None,
) -> RunResult:
    """Answer ``question`` step by step on a new thread (checkpointed; see ``resume``)."""
    text = clean_question(question)
    _check_progress_callback(on_progress)
    settings = _prepare(settings, corpus, retriever)
    budget.check_caps(settings)
    thread_id = check_thread_id(thread_id or uuid.uuid4().hex[:12])
    with _new_thread(settings, thread_id, retriever, f"continue it with `deepstep resume {thread_id}` or pick a new id") as graph:
        return _execute(graph, {"question": text}, thread_id, settings, on_progress)


@contextmanager
def _new_thread(settings: Settings, thread_id: str, retriever: BaseRetriever | None, if_it_exists: str) -> Iterator[DeepstepGraph]:
    """The graph, with the thread locked for this process and refused when it already exists."""
    with thread_lock(settings, thread_id), _open_graph(settings, retriever) as graph:
        if _thread_exists(graph, thread_id):
            raise InputError(f"thread {thread_id} already exists: {if_it_exists}")
        yield graph


@contextmanager
def _finished_thread(base: Settings, thread_id: str, retriever: BaseRetriever | None, then: str) -> Iterator[tuple[DeepstepGraph, Any]]:
    """The graph and the state of a finished thread, locked for this process; an unknown or unfinished thread is refused
    (``then``: what to do once it is finished)."""
    with thread_lock(base, thread_id), _open_graph(base, retriever) as graph:
        snapshot = graph.get_state({"configurable": {"thread_id": thread_id}})
        if not snapshot.values and not snapshot.next:
            raise UnknownThreadError(f"no thread {thread_id} in {checkpoint_location(base)}: check the id or DEEPSTEP_HOME")
        if snapshot.tasks or "tree" not in snapshot.values:
            raise InputError(f"thread {thread_id} is not finished: run `deepstep resume {thread_id}` first, then {then}")
        yield graph, snapshot


def run_tree(
    tree: nx.DiGraph,
    *,
    thread_id: str | None = None,
    settings: Settings | None = None,
    retriever: BaseRetriever | None = None,
    on_progress: ProgressCallback | None = None,
) -> RunResult:
    """Start a new thread from a ready step tree (e.g. an imported dreamsboard store):
    steps already ``done`` are kept without any model call, the others are run."""
    if not isinstance(tree, nx.DiGraph):
        raise InputError(f"tree must be a step tree (networkx.DiGraph, e.g. from deepstep.store.read_store), not {type(tree).__name__}")
    question = clean_question(step_tree.question_of(tree))
    _check_progress_callback(on_progress)
    settings = _prepare(settings, None, retriever)
    budget.check_caps(settings, planning=False)  # the tree is planned already
    thread_id = check_thread_id(thread_id or uuid.uuid4().hex[:12])
    with _new_thread(settings, thread_id, retriever, "pick a new thread id for the import") as graph:
        config = _run_config(thread_id, settings)
        plan = {"question": question, "outline": step_tree.outline_of(tree), "tree": tree, "settings": settings.run_settings()}
        graph.update_state(config, plan, as_node="decompose")  # as if planned: review and the fan-out come next
        if all(tree.nodes[n]["status"] in step_tree.FINISHED_STATUSES for n in step_tree.step_ids(tree)):
            _stream(graph, None, config, settings, on_progress)  # nothing to answer: no model server needed
            return _result(graph, config)
        return _execute(graph, None, thread_id, settings, on_progress)


def import_store(
    directory: str | Path,
    thread_id: str | None = None,
    settings: Settings | None = None,
    *,
    retriever: BaseRetriever | None = None,
    on_progress: ProgressCallback | None = None,
) -> RunResult:
    """Load a dreamsboard store into a new thread and complete its unanswered steps.

    Answered steps are kept as they are (no model call is made for them). Returns the
    thread's ``RunResult``.
    """
    settings = settings_or_default(settings)  # a wrong type is a ConfigError, before the store is read
    tree = read_store(directory, max_steps=settings.max_steps)
    return run_tree(tree, thread_id=thread_id, settings=settings, retriever=retriever, on_progress=on_progress)


def _thread_settings(base: Settings, values: dict[str, Any], explicit: Settings | None) -> Settings:
    """The settings that shape the result as the thread started, over ``base``; explicit settings win.
    (Threads from before RunSettings stored every setting: only the run-shaping ones count.)"""
    stored = {k: v for k, v in values.get("settings", {}).items() if k in RUN_SHAPING_FIELDS}
    return Settings.build(**{**base.model_dump(), **stored, **(explicit.model_dump(exclude_unset=True) if explicit else {})})


def resume(
    thread_id: str,
    *,
    settings: Settings | None = None,
    review: Any = None,
    retriever: BaseRetriever | None = None,
    on_progress: ProgressCallback | None = None,
    max_calls: int | None = None,
    max_run_tokens: int | None = None,
    max_cost: float | None = None,
) -> RunResult:
    """Continue a thread: after a crash, after a review pause (``review`` = True or edited steps), after a
    budget pause (with higher caps: ``max_calls`` etc. replace the settings' for this resume), or to retry its
    failed steps. A finished thread without failures makes no model call."""
    check_thread_id(thread_id)
    _check_progress_callback(on_progress)
    base = settings_or_default(settings)
    caps = {"max_calls": max_calls, "max_run_tokens": max_run_tokens, "max_cost": max_cost}
    with thread_lock(base, thread_id), _open_graph(base, retriever) as graph:
        probe: RunnableConfig = {"configurable": {"thread_id": thread_id}}
        snapshot = graph.get_state(probe)
        if not snapshot.values and not snapshot.next:
            raise UnknownThreadError(f"no thread {thread_id} in {checkpoint_location(base)}: check the id or DEEPSTEP_HOME")
        merged = _thread_settings(base, snapshot.values, settings)
        if any(value is not None for value in caps.values()):
            merged = Settings.build(**{**merged.model_dump(), **caps})
        budget.check_caps(merged, planning=False)
        config = _run_config(thread_id, merged)
        if snapshot.tasks:  # not finished (snapshot.next is empty when every task of the superstep saved its writes)
            waiting_for_review = any(task.interrupts for task in snapshot.tasks)
            paused = [i.value for task in snapshot.tasks for i in task.interrupts]
            if review is not None and any(is_budget_pause(value) for value in paused):
                raise InputError(f"thread {thread_id} is paused by its budget, not waiting for review: resume it without --steps, with higher caps")
            # Checked here, before the graph keeps it: a rejected answer leaves the plan waiting.
            graph_input: Any = Command(resume=checked_answer(review, snapshot.values, merged)) if waiting_for_review else None
        elif snapshot.values.get("failed_steps"):
            # Re-dispatch the steps not done: pending again, as the fan-out after the budget check sends them.
            tree = snapshot.values["tree"]
            again = step_tree.with_step_updates(
                tree, [{"id": n, "status": "pending"} for n in step_tree.step_ids(tree) if tree.nodes[n]["status"] != "done"]
            )
            graph.update_state(config, {"failed_steps": [], "tree": again}, as_node="review")
            graph_input = None
        else:
            return _result(graph, config)
        if retriever is None:
            from deepstep.retrieval import corpus_retriever

            corpus_retriever(merged)
        return _execute(graph, graph_input, thread_id, merged, on_progress)


def rerun_step(
    thread_id: str,
    step: str,
    *,
    note: str | None = None,
    settings: Settings | None = None,
    retriever: BaseRetriever | None = None,
    on_progress: ProgressCallback | None = None,
) -> RunResult:
    """Research one step of a finished thread again (question, retrieve, answer, refine), with a reviewer's
    ``note`` given to the model, and rebuild the report; every other step is kept without a model call.
    ``step`` is the step's id or its level (``0>1``). The earlier report stays in the thread's history."""
    if not isinstance(step, str) or (note is not None and not isinstance(note, str)):
        raise InputError("step (its id or level, e.g. '0>1') and note must be text")
    return revise(thread_id, [{"action": "rerun", "step": step, "note": note or ""}], settings=settings, retriever=retriever, on_progress=on_progress)


def revise(
    thread_id: str,
    actions: list[StepAction],
    *,
    settings: Settings | None = None,
    retriever: BaseRetriever | None = None,
    on_progress: ProgressCallback | None = None,
) -> RunResult:
    """Change steps of a finished thread and rebuild its report: ``rerun`` / ``reject`` (with a ``note``),
    ``refresh``, ``edit_question`` / ``edit_answer`` (with ``text``), ``approve``, ``add`` (under ``step``, with
    ``name``) and ``remove`` (see ``deepstep.revisions``). Only the steps the actions leave pending are researched (3 + 3R
    calls each); an edited answer costs no call but its verification with ``verify = model``. Every earlier
    report stays in the thread's history (``deepstep.versions``)."""
    from deepstep.revisions import revise as revised

    check_thread_id(thread_id)
    _check_progress_callback(on_progress)
    base = settings_or_default(settings)
    with _finished_thread(base, thread_id, retriever, "change its steps") as (graph, snapshot):
        merged = _thread_settings(base, snapshot.values, settings)
        budget.check_caps(merged, planning=False)
        # Checked here, before the graph keeps the actions: an unusable one changes nothing.
        revision = revised(snapshot.values["tree"], actions)
        tree = revision.tree
        needs_model = (
            any(tree.nodes[n]["status"] == "pending" for n in step_tree.step_ids(tree))
            or (merged.verify == "model" and bool(revision.edited_answers))
            or merged.report_layout == "answer_first"  # the opening answer is written again from the changed steps
        )
        if not needs_model:
            config = _run_config(thread_id, merged)
            _stream(graph, {"actions": actions}, config, merged, on_progress)
            return _result(graph, config)
        if retriever is None and any(tree.nodes[n]["status"] == "pending" for n in step_tree.step_ids(tree)):
            from deepstep.retrieval import corpus_retriever

            corpus_retriever(merged)  # fail early (CorpusError) before any model call
        return _execute(graph, {"actions": actions}, thread_id, merged, on_progress)


@dataclass
class Refresh:
    """What ``refresh`` found, and the thread after it."""

    stale: list[StaleStep]  # the steps the corpus change made out of date, in tree order, with why
    checked: int  # the steps compared with the corpus (done, or answered "insufficient evidence")
    result: RunResult  # the thread: with the stale steps researched again, or as it was (dry run, nothing stale)
    recomputed: bool


def refresh(
    thread_id: str,
    *,
    corpus: str | Path | None = None,
    dry_run: bool = False,
    settings: Settings | None = None,
    retriever: BaseRetriever | None = None,
    on_progress: ProgressCallback | None = None,
) -> Refresh:
    """After the corpus changed: find the steps of a finished thread whose cited passages changed or vanished,
    or whose first retrieval now finds other passages, and research only those again (question, retrieve,
    answer, refine), then rebuild the report. ``dry_run``: only find them. ``corpus``: a folder to refresh
    against instead of the thread's own; the thread keeps it for later resumes and reruns."""
    check_thread_id(thread_id)
    _check_progress_callback(on_progress)
    if corpus is not None and not isinstance(corpus, (str, os.PathLike)):
        raise InputError(f"corpus must be the path of a folder (str or Path), not {type(corpus).__name__}")
    base = settings_or_default(settings)
    with _finished_thread(base, thread_id, retriever, "refresh it") as (graph, snapshot):
        tree = snapshot.values["tree"]
        merged = _thread_settings(base, snapshot.values, settings)
        if corpus is not None:
            merged = Settings.build(**{**merged.model_dump(), "corpus": Path(corpus)})
        budget.check_caps(merged, planning=False)
        from deepstep.retrieval import passage_texts, reread_corpus_retriever, top_contexts  # bm25s and numpy

        texts = passage_texts(merged, reread_corpus_retriever(merged) if retriever is None else retriever)
        stale = freshness.stale_steps(tree, texts.get, lambda query: [found["chunk_id"] for found in top_contexts(query, merged, retriever)])
        checked = len(freshness.checked_steps(tree))
        config = _run_config(thread_id, merged)
        new_corpus = corpus is not None and snapshot.values.get("settings", {}).get("corpus") != merged.run_settings().get("corpus")
        if dry_run or not stale:
            if new_corpus and not dry_run:  # nothing to recompute, but later runs search the new folder
                graph.update_state(config, {"settings": merged.run_settings()}, as_node="report")
            return Refresh(stale, checked, _result(graph, config), recomputed=False)
        if new_corpus:  # later resumes and reruns search the new folder too
            graph.update_state(config, {"settings": merged.run_settings()}, as_node="report")
        # A refresh keeps what a reviewer said of a step (its note, its own research question) for the new passages.
        actions: list[StepAction] = [{"action": "refresh", "step": step["id"]} for step in stale]
        return Refresh(stale, checked, _execute(graph, {"actions": actions}, thread_id, merged, on_progress), recomputed=True)


__all__ = [
    "Progress",
    "Refresh",
    "RunResult",
    "check_thread_id",
    "clean_question",
    "import_store",
    "load",
    "refresh",
    "rerun_step",
    "resume",
    "revise",
    "run",
    "run_tree",
]
