"""CPU per model call: deepstep against the same requests sent by a plain ``ChatOpenAI.invoke`` loop, where
the rest goes, the floor LangGraph sets, and wall time against the critical path (issue 18 item 4).

All in one process, one run, against the fake server in its own process (``benchmarks.workload``):

1. **Per call** (L = 0, C = 1): a warm-up question, then one measured question whose every ``invoke``
   (messages and options) is recorded; the same requests are then sent again by a plain ``ChatOpenAI``
   (its own default HTTP client), one after another. CPU = ``time.process_time`` of the whole process.
2. **Where it goes**: the measured run's thread CPU inside ``ChatOpenAI.invoke`` and inside the
   checkpointer's ``put`` / ``put_writes``; the rest is LangGraph and deepstep's nodes.
3. **LangGraph's floor**: a graph of the same shape (N subgraphs of 3 + 3R sequential nodes, fanned
   out with ``Send``) whose nodes do nothing, with deepstep's SQLite checkpointer (durability "sync")
   and without a checkpointer: what any LangGraph workflow that checkpoints each call pays per node.
4. **Wall / critical path** at the issue's settings, each after a warm-up question in the same process
   (imports, the corpus language, JSON schemas: a process's start-up, reported on its own), and the CPU per
   call of a plain ``ChatOpenAI`` loop at the same latency.

Run: .venv/bin/python -m benchmarks.call_cpu [--steps 40] [--json]
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import operator
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypedDict

import deepstep
from benchmarks.harness import QUESTION, calls_per_step
from benchmarks.workload import fake_server_process
from deepstep.configuration import Settings

ROLLOUTS = 2
WALL_TARGETS = [(50, 8, 200.0, 1.05), (200, 8, 50.0, 1.15)]  # N, C, L ms, target wall / critical path


def _settings(base_url: str, home: Path, steps: int, concurrency: int) -> Settings:
    return Settings.build(
        base_url=base_url, home=home, max_steps=steps, rollouts=ROLLOUTS, max_concurrency=concurrency, max_retries=0, report_layout="seed"
    )


def _warm_up(settings: Settings) -> float:
    """One 1-step question: the process's one-off costs (imports, corpus language, schemas); its wall seconds."""
    started = time.perf_counter()
    deepstep.run("What is a warm-up?", thread_id="warm-up", settings=settings.model_copy(update={"max_steps": 1}))
    return time.perf_counter() - started


class _ThreadCpu:
    """Thread CPU spent inside chosen methods (outermost entry only), summed over threads."""

    def __init__(self) -> None:
        self.seconds: collections.Counter[str] = collections.Counter()
        self._depth = threading.local()
        self._restore: list[tuple[type, str, Callable[..., Any]]] = []

    def wrap(self, owner: type, method: str, label: str) -> None:
        original = getattr(owner, method)
        meter = self

        def timed(*args: Any, **kwargs: Any) -> Any:
            depth = getattr(meter._depth, label, 0)
            setattr(meter._depth, label, depth + 1)
            started = time.thread_time()
            try:
                return original(*args, **kwargs)
            finally:
                setattr(meter._depth, label, depth)
                if depth == 0:
                    meter.seconds[label] += time.thread_time() - started

        setattr(owner, method, timed)
        self._restore.append((owner, method, original))

    def unwrap(self) -> None:
        for owner, method, original in reversed(self._restore):
            setattr(owner, method, original)


def per_call(steps: int) -> dict[str, float]:
    from langchain_core.language_models.chat_models import BaseChatModel
    from langchain_openai import ChatOpenAI

    from deepstep.checkpoint import _ChannelBlobSqliteSaver

    recorded: list[tuple[str, Any, dict[str, Any]]] = []
    meter = _ThreadCpu()
    with fake_server_process(latency_ms=0, steps=steps, faults=[]) as server, tempfile.TemporaryDirectory() as home:
        settings = _settings(server.base_url, Path(home), steps, 1)
        _warm_up(settings)
        invoke = BaseChatModel.invoke

        def recording(model: Any, messages: Any, config: Any = None, **options: Any) -> Any:
            recorded.append((model.default_headers["X-Deepstep-Task"], messages, options))
            return invoke(model, messages, config, **options)

        BaseChatModel.invoke = recording  # type: ignore[method-assign]
        meter.wrap(BaseChatModel, "invoke", "ChatOpenAI.invoke")
        meter.wrap(_ChannelBlobSqliteSaver, "put", "checkpointer put")
        meter.wrap(_ChannelBlobSqliteSaver, "put_writes", "checkpointer put_writes")
        try:
            started = time.process_time()
            deepstep.run(QUESTION, thread_id="measured", settings=settings)
            deepstep_cpu = time.process_time() - started
        finally:
            meter.unwrap()
            BaseChatModel.invoke = invoke  # type: ignore[method-assign]
        models: dict[str, ChatOpenAI] = {}

        def plain(task: str) -> ChatOpenAI:
            if task not in models:
                headers = {"X-Deepstep-Task": task}
                models[task] = ChatOpenAI(base_url=server.base_url, api_key="unused", model="fake", max_retries=0, default_headers=headers)
            return models[task]

        for task, messages, options in recorded[:20]:  # the plain client's own warm-up
            plain(task).invoke(messages, **options)
        started = time.process_time()
        for task, messages, options in recorded:
            plain(task).invoke(messages, **options)
        plain_cpu = time.process_time() - started
    calls = len(recorded)
    figures = {
        "calls": calls,
        "deepstep_ms_per_call": 1000 * deepstep_cpu / calls,
        "plain_chatopenai_ms_per_call": 1000 * plain_cpu / calls,
        "ratio": deepstep_cpu / plain_cpu,
    }
    for label, seconds in meter.seconds.items():
        figures[f"{label} ms_per_call"] = 1000 * seconds / calls
    figures["rest ms_per_call"] = figures["deepstep_ms_per_call"] - sum(1000 * s / calls for s in meter.seconds.values())
    return figures


def langgraph_floor(steps: int) -> dict[str, float]:
    """CPU per node of a no-op graph shaped like deepstep's, with and without deepstep's checkpointer."""
    from langgraph.graph import END, START, StateGraph
    from langgraph.types import Send

    from deepstep.checkpoint import sqlite_checkpointer

    class StepState(TypedDict, total=False):
        name: str
        text: str

    class RunState(TypedDict, total=False):
        done: Annotated[list[str], operator.add]

    nodes_per_step = calls_per_step(ROLLOUTS)
    step = StateGraph(StepState)
    previous = START
    for index in range(nodes_per_step):

        def node(state: StepState, index: int = index) -> StepState:
            return {"text": f"{state.get('text', '')[:20]}{index}"}

        step.add_node(f"call_{index}", node)
        step.add_edge(previous, f"call_{index}")
        previous = f"call_{index}"
    step.add_edge(previous, END)
    run = StateGraph(RunState)
    run.add_node("plan", lambda state: {})
    run.add_node("step", step.compile())
    run.add_edge(START, "plan")
    run.add_conditional_edges("plan", lambda state: [Send("step", {"name": str(k)}) for k in range(steps)], ["step"])
    run.add_edge("step", END)
    nodes = steps * nodes_per_step
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as home, sqlite_checkpointer(Path(home) / "floor.sqlite") as saver:
        graph = run.compile(checkpointer=saver)
        for thread in ("warm-up", "measured"):
            started = time.process_time()
            graph.invoke({}, {"configurable": {"thread_id": thread}, "max_concurrency": 1}, durability="sync")
            figures["with_checkpointer_ms_per_node"] = 1000 * (time.process_time() - started) / nodes
    bare = run.compile()
    bare.invoke({}, {"max_concurrency": 1})
    started = time.process_time()
    bare.invoke({}, {"max_concurrency": 1})
    figures["without_checkpointer_ms_per_node"] = 1000 * (time.process_time() - started) / nodes
    return figures


def _plain_loop_cpu(base_url: str, calls: int) -> float:
    """CPU seconds per call of a plain ChatOpenAI loop of one fixed prompt against ``base_url``."""
    from langchain_openai import ChatOpenAI

    model = ChatOpenAI(base_url=base_url, api_key="unused", model="fake", max_retries=0, default_headers={"X-Deepstep-Task": "answer"})
    messages = [("system", "You answer."), ("human", f"Question: {QUESTION}")]
    for _ in range(3):
        model.invoke(messages)
    started = time.process_time()
    for _ in range(calls):
        model.invoke(messages)
    return (time.process_time() - started) / calls


def wall(steps: int, concurrency: int, latency_ms: float, plain_calls: int = 20) -> dict[str, float]:
    with fake_server_process(latency_ms=latency_ms, steps=steps, faults=[]) as server, tempfile.TemporaryDirectory() as home:
        settings = _settings(server.base_url, Path(home), steps, concurrency)
        warm_up_seconds = _warm_up(settings)
        started, cpu_started = time.perf_counter(), time.process_time()
        deepstep.run(QUESTION, thread_id="measured", settings=settings)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        # A client's CPU per call grows with the wait between calls on some machines (caches gone cold while it
        # sleeps): the plain loop at the same latency says how much of the run's CPU per call that is.
        plain_cpu = _plain_loop_cpu(server.base_url, plain_calls)
    critical_path = (2 + math.ceil(steps / concurrency) * calls_per_step(ROLLOUTS)) * latency_ms / 1000
    calls = 2 + steps * calls_per_step(ROLLOUTS)
    return {
        "wall_s": seconds,
        "critical_path_s": critical_path,
        "ratio": seconds / critical_path,
        "cpu_ms_per_call": 1000 * cpu / calls,
        "plain_loop_cpu_ms_per_call": 1000 * plain_cpu,
        "warm_up_s": warm_up_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="steps of the per-call and floor runs")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    figures: dict[str, Any] = {"per_call": per_call(args.steps), "langgraph_floor": langgraph_floor(args.steps), "wall": []}
    for steps, concurrency, latency_ms, target in WALL_TARGETS:
        measured = wall(steps, concurrency, latency_ms)
        figures["wall"].append({"steps": steps, "concurrency": concurrency, "latency_ms": latency_ms, "target": target, **measured})
    if args.json:
        print(json.dumps(figures, indent=1))
        return
    call = figures["per_call"]
    print(f"per call (N = {args.steps}, {call['calls']} calls, L = 0, C = 1): deepstep {call['deepstep_ms_per_call']:.2f} ms CPU, the same")
    print(f"  requests by a plain ChatOpenAI.invoke loop {call['plain_chatopenai_ms_per_call']:.2f} ms: ratio {call['ratio']:.2f} (target 1.4)")
    for key, value in call.items():
        if key.endswith(" ms_per_call"):
            print(f"  {key.removesuffix(' ms_per_call')}: {value:.2f} ms per call")
    floor = figures["langgraph_floor"]
    print(f"LangGraph's floor, no-op nodes: {floor['with_checkpointer_ms_per_node']:.2f} ms per node with deepstep's checkpointer,")
    print(f"  {floor['without_checkpointer_ms_per_node']:.2f} ms without")
    for row in figures["wall"]:
        print(
            f"N = {row['steps']}, C = {row['concurrency']}, L = {row['latency_ms']:g} ms: wall {row['wall_s']:.2f} s / critical path "
            f"{row['critical_path_s']:.2f} s = {row['ratio']:.3f} (target {row['target']}); {row['cpu_ms_per_call']:.2f} ms CPU per call "
            f"(a plain ChatOpenAI loop at this latency: {row['plain_loop_cpu_ms_per_call']:.2f}); start-up {row['warm_up_s']:.2f} s"
        )


if __name__ == "__main__":
    main()
