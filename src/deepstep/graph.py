"""Wiring only: the run graph and the per-step subgraph.

START -> outline -> decompose -> review -> Send(step) per step -> collect -> synthesize -> report -> END
       under a cap (max_calls, ...) the fan-out sends the steps that fit, collect sends the next that fit, and
       when none fits (or the synthesis would not): -> budget (a pause) -> the fan-out again once resumed
START -> revise -> Send(step) per step left pending -> collect -> ...   (a finished thread given reviewer actions)
step:  question -> retrieve -> (evidence gate) -> answer -> evaluate <-> critique -> refine -> ... -> finish
       a follow-up search (search_query -> search) runs when the gate finds no covering passage, or before
       a refine when the critique says facts are missing, at most max_searches times per step
       (with verify = model: answer -> verify -> evaluate and refine -> verify -> evaluate)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import RetryPolicy
from pydantic import BaseModel

from deepstep.configuration import RunContext
from deepstep.models import is_transient
from deepstep.nodes.answer import answer
from deepstep.nodes.budget import budget_pause
from deepstep.nodes.collect import collect, report
from deepstep.nodes.decompose import decompose, outline
from deepstep.nodes.dispatch import after_budget, after_collect, after_review
from deepstep.nodes.failures import (
    STEP_RETRY,
    count_retries,
    fail_softly,
    route_unless_failed,
)
from deepstep.nodes.finish import finish
from deepstep.nodes.question import make_question
from deepstep.nodes.refine import after_critique, after_evaluate, critique, evaluate, refine
from deepstep.nodes.retrieve import after_retrieve, after_search, make_retrieve
from deepstep.nodes.review import review
from deepstep.nodes.revise import revise, start
from deepstep.nodes.run_settings import with_settings
from deepstep.nodes.search import make_search, search_query
from deepstep.nodes.synthesize import synthesize
from deepstep.nodes.verify import after_answer, verify
from deepstep.state import (
    RunInput,
    RunOutput,
    RunState,
    StepInput,
    StepOutput,
    StepState,
)

if TYPE_CHECKING:
    from langchain_core.retrievers import BaseRetriever

# The run's context is a pydantic model: a RunContext (``graph.invoke(..., context=...)``, Studio) or the
# Settings the Python API resolved once (``Settings.for_run`` takes either). RunContext is built at import
# time by ``create_model``, so a type checker knows it only as a BaseModel.
DeepstepGraph = CompiledStateGraph[RunState, BaseModel, RunInput, RunOutput]


def build_step_graph(retriever: BaseRetriever | None = None) -> CompiledStateGraph[StepState, None, StepInput, StepOutput]:
    builder = StateGraph(StepState, input_schema=StepInput, output_schema=StepOutput)
    builder.add_node("question", fail_softly(make_question(retriever), "question"), retry_policy=STEP_RETRY)
    builder.add_node("retrieve", fail_softly(make_retrieve(retriever)), retry_policy=STEP_RETRY)
    builder.add_node("search_query", fail_softly(search_query, "search"), retry_policy=STEP_RETRY)
    builder.add_node("search", fail_softly(make_search(retriever)), retry_policy=STEP_RETRY)
    builder.add_node("answer", fail_softly(answer, "answer"), retry_policy=STEP_RETRY)
    builder.add_node("evaluate", fail_softly(evaluate, "evaluate"), retry_policy=STEP_RETRY)
    builder.add_node("critique", fail_softly(critique, "critique"), retry_policy=STEP_RETRY)
    builder.add_node("refine", fail_softly(refine, "refine"), retry_policy=STEP_RETRY)
    builder.add_node("verify", fail_softly(verify, "verify"), retry_policy=STEP_RETRY)
    builder.add_node("finish", with_settings(finish))
    builder.add_edge(START, "question")
    builder.add_conditional_edges("question", route_unless_failed("retrieve"), ["retrieve", "finish"])
    builder.add_conditional_edges("retrieve", after_retrieve, ["answer", "search_query", "finish"])
    builder.add_conditional_edges("search_query", route_unless_failed("search"), ["search", "finish"])
    builder.add_conditional_edges("search", after_search, ["answer", "refine", "search_query", "finish"])
    builder.add_conditional_edges("answer", after_answer, ["verify", "evaluate", "finish"])
    builder.add_conditional_edges("evaluate", after_evaluate, ["evaluate", "critique", "finish"])
    builder.add_conditional_edges("critique", after_critique, ["search_query", "refine", "finish"])
    builder.add_conditional_edges("refine", after_answer, ["verify", "evaluate", "finish"])
    builder.add_conditional_edges("verify", route_unless_failed("evaluate"), ["evaluate", "finish"])
    builder.add_edge("finish", END)
    return builder.compile(name="step")


def build_graph(checkpointer: BaseCheckpointSaver | None = None, *, retriever: BaseRetriever | None = None) -> DeepstepGraph:
    """The deepstep graph; ``retriever`` defaults to BM25 over the configured corpus."""
    builder = StateGraph(RunState, context_schema=RunContext, input_schema=RunInput, output_schema=RunOutput)
    plan_retry = RetryPolicy(max_attempts=3, initial_interval=0.5, retry_on=is_transient)
    builder.add_node("outline", count_retries(outline, "decompose"), retry_policy=plan_retry)
    builder.add_node("decompose", count_retries(decompose, "decompose"), retry_policy=plan_retry)
    builder.add_node("review", with_settings(review))
    builder.add_node("revise", with_settings(revise))
    builder.add_node("step", build_step_graph(retriever))
    builder.add_node("collect", collect)
    builder.add_node("synthesize", count_retries(synthesize, "answer"), retry_policy=plan_retry)
    builder.add_node("report", with_settings(report))
    builder.add_node("budget", with_settings(budget_pause))
    builder.add_conditional_edges(START, start, ["outline", "revise"])
    builder.add_edge("outline", "decompose")
    builder.add_edge("decompose", "review")
    builder.add_conditional_edges("review", after_review, ["step", "collect", "budget"])
    # After a revision only the steps it left pending are sent (a step that failed before stays for `deepstep resume`).
    builder.add_conditional_edges("revise", after_collect, ["step", "synthesize", "budget"])
    builder.add_edge("step", "collect")
    builder.add_conditional_edges("collect", after_collect, ["step", "synthesize", "budget"])
    builder.add_conditional_edges("budget", after_budget, ["step", "synthesize"])  # the pause holds until one fits
    builder.add_edge("synthesize", "report")
    builder.add_edge("report", END)
    return builder.compile(checkpointer=checkpointer, name="deepstep")


# For langgraph.json (`langgraph dev`, Studio): the server supplies its own checkpointer.
graph = build_graph()
