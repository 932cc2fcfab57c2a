"""At most max_concurrency model calls in flight per model server, whatever runs the graph: by hand in
threads, and over real HTTP with the fake server for a graph invoked without LangGraph's max_concurrency."""

from __future__ import annotations

import threading
import time

from langgraph.checkpoint.memory import InMemorySaver

from deepstep import step_tree
from deepstep.call_limits import InFlightLimit, limit_for
from deepstep.graph import build_graph
from tests.conftest import TEST_CORPUS


def test_a_limit_lets_at_most_its_bound_through_and_each_caller_brings_its_own():
    limit = InFlightLimit()
    peak = 0
    lock = threading.Lock()

    def call(bound: int) -> None:
        nonlocal peak
        with limit.slot(bound):
            with lock:
                peak = max(peak, limit.in_flight)
            time.sleep(0.02)

    threads = [threading.Thread(target=call, args=(3,)) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert peak == 3 and limit.in_flight == 0
    with limit.slot(5), limit.slot(5):
        # A caller with a tighter bound waits while two are in flight.
        waiter = threading.Thread(target=call, args=(2,))
        waiter.start()
        time.sleep(0.05)
        assert waiter.is_alive()
    waiter.join(5)
    assert not waiter.is_alive()


def test_one_limit_per_base_url_and_model():
    assert limit_for("http://127.0.0.1:9/v1", "m") is limit_for("http://127.0.0.1:9/v1/", "m")
    assert limit_for("http://127.0.0.1:9/v1", "m") is not limit_for("http://127.0.0.1:9/v1", "other")


def test_a_graph_invoked_without_langgraphs_bound_keeps_max_concurrency_calls_in_flight(fake_llm, monkeypatch):
    """Eight steps fan out at once (graph.invoke passes no max_concurrency, as Studio does not); the model
    server still sees at most max_concurrency = 2 requests at a time (8 without the limit)."""
    monkeypatch.setenv("OPENAI_BASE_URL", fake_llm.base_url)
    monkeypatch.setenv("DEEPSTEP_CORPUS", str(TEST_CORPUS))
    monkeypatch.setenv("DEEPSTEP_MODEL", "limit-test")  # a limit of its own, not shared with other tests' calls
    monkeypatch.setenv("DEEPSTEP_MAX_CONCURRENCY", "2")  # the server's setting: not a run's (Studio cannot change it)
    fake_llm.steps = 8
    fake_llm.set_latency(150)
    graph = build_graph(InMemorySaver())
    final = graph.invoke({"question": "What is a loss function?"}, {"configurable": {"thread_id": "t"}}, context={"rollouts": 0})
    assert len(step_tree.steps(final["tree"])) == 8
    assert fake_llm.max_in_flight == 2
