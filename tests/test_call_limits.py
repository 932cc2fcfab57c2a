"""At most max_concurrency model calls in flight per model server, whatever runs the graph: by hand in
threads, and over real HTTP with the fake server for a graph invoked without LangGraph's max_concurrency."""

from __future__ import annotations

import threading
import time

from langgraph.checkpoint.memory import InMemorySaver

from deepstep import call_limits, step_tree
from deepstep.call_limits import InFlightLimit, limit_for
from deepstep.graph import build_graph
from deepstep.testing import Fault
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


def test_a_rate_limit_halves_the_calls_in_flight_once_per_event_and_successes_add_them_back(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(call_limits.time, "monotonic", lambda: clock[0])
    limit = InFlightLimit()
    with limit.slot(8) as first, limit.slot(8) as second:
        limit.rate_limited(first, 0.5, 8)
        assert limit.allowed == 4
        limit.rate_limited(second, 0.5, 8)  # sent before that decrease: the same event
        assert limit.allowed == 4
    clock[0] += 1.0  # past the Retry-After
    with limit.slot(8) as third:  # (two of the four allowed are free)
        limit.rate_limited(third, None, 8)  # a call sent after the decrease: a new event
    assert limit.allowed == 2
    for _ in range(call_limits.INCREASE_AFTER * 2 - 1):
        limit.succeeded(8)
    assert limit.allowed == 2
    limit.succeeded(8)  # INCREASE_AFTER successes per allowed call: one more
    assert limit.allowed == 3


def test_below_one_call_in_flight_calls_are_paced_from_the_retry_after(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(call_limits.time, "monotonic", lambda: clock[0])
    limit = InFlightLimit()
    with limit.slot(1) as started:
        limit.rate_limited(started, 0.2, 1)  # one call in flight was already too many
    assert limit.allowed == 1 and limit._interval == 0.2
    clock[0] += 0.2
    with limit.slot(1):
        pass
    assert limit._next_start == clock[0] + 0.2  # the next call waits 0.2 s after this one started
    limit.succeeded(1)
    assert limit._interval == 0.2 * (1 - 1 / (2 * call_limits.INCREASE_AFTER))


def test_a_429_with_retry_after_over_http_halves_the_servers_limit(fake_llm, monkeypatch):
    """An injected HTTP 429 (Retry-After 0.05 s) on the first answer: the run goes on (the OpenAI client
    retries it) and the limit of that server and model now allows half of max_concurrency in flight."""
    monkeypatch.setenv("OPENAI_BASE_URL", fake_llm.base_url)
    monkeypatch.setenv("DEEPSTEP_CORPUS", str(TEST_CORPUS))
    monkeypatch.setenv("DEEPSTEP_MODEL", "rate-limit-test")
    monkeypatch.setenv("DEEPSTEP_MAX_CONCURRENCY", "4")
    fake_llm.set_faults([Fault("http429", task="answer", times=1, retry_after=0.05)])
    graph = build_graph(InMemorySaver())
    final = graph.invoke({"question": "What is a loss function?"}, {"configurable": {"thread_id": "t"}}, context={"rollouts": 0, "max_steps": 1})
    assert [step["status"] for step in step_tree.steps(final["tree"])] == ["done"]
    assert limit_for(fake_llm.base_url, "rate-limit-test").allowed == 2
