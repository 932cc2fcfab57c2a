"""Loading a stored thread from its checkpoint alone agrees with the compiled graph's ``get_state``.

``deepstep.load`` (and so ``deepstep show`` / ``export``) reads the latest checkpoint without
compiling the graph; the status it derives (done, awaiting review, incomplete) must be what the
graph itself reports, in every state a thread can be left in.
"""

from __future__ import annotations

import pytest

from deepstep import api, step_tree, threads
from deepstep.testing import Fault

QUESTION = "What is a loss function?"


def graph_view(settings, thread_id: str) -> threads.RunResult:
    with api._open_graph(settings, None) as graph:
        return api._result(graph, {"configurable": {"thread_id": thread_id}})


def assert_same(settings, thread_id: str) -> threads.RunResult:
    loaded, expected = threads.load(thread_id, settings=settings), graph_view(settings, thread_id)
    assert loaded.status == expected.status
    assert loaded.review_request == expected.review_request
    assert step_tree.signature(loaded.tree) == step_tree.signature(expected.tree)
    assert (loaded.markdown, loaded.usage, loaded.failed_steps, loaded.warnings) == (
        expected.markdown,
        expected.usage,
        expected.failed_steps,
        expected.warnings,
    )
    return loaded


def test_a_finished_thread(settings):
    api.run(QUESTION, thread_id="done", settings=settings)
    assert assert_same(settings, "done").status == "done"


def test_a_thread_waiting_for_review(settings):
    api.run(QUESTION, thread_id="review", settings=settings.model_copy(update={"review": True}))
    loaded = assert_same(settings, "review")
    assert loaded.status == "awaiting_review" and loaded.review_request["steps"]


def test_a_thread_with_failed_steps(settings, fake_llm):
    fake_llm.set_faults([Fault("http500", task="critique")])
    api.run(QUESTION, thread_id="failed", settings=settings)
    loaded = assert_same(settings, "failed")
    assert loaded.status == "done" and loaded.failed_steps


@pytest.mark.parametrize("updates", [1, 2, 3, 5, 7])
def test_a_thread_stopped_part_way(settings, updates):
    """Planning done or not, some steps answered: the graph has tasks left, and so does the loaded thread."""
    config = api._run_config("partial", settings)
    with api._open_graph(settings, None) as graph:
        for seen, _ in enumerate(graph.stream({"question": QUESTION}, config, context=settings, stream_mode="updates"), start=1):
            if seen == updates:
                break
    assert assert_same(settings, "partial").status == "incomplete"


def test_an_unknown_thread(settings):
    api.run(QUESTION, thread_id="known", settings=settings)
    with pytest.raises(api.UnknownThreadError, match="no thread other"):
        threads.load("other", settings=settings)


def test_a_thread_stopped_before_its_report_is_shown_in_its_own_layout(settings):
    answer_first = settings.model_copy(update={"report_layout": "answer_first"})
    config = api._run_config("partial-answer-first", answer_first)
    with api._open_graph(answer_first, None) as graph:
        for seen, _ in enumerate(graph.stream({"question": QUESTION}, config, context=answer_first, stream_mode="updates"), start=1):
            if seen == 3:  # planned, no step answered
                break
    loaded = threads.load("partial-answer-first", settings=answer_first)
    assert loaded.status == "incomplete" and loaded.markdown.startswith(f"# {QUESTION}\n\n_5 steps: 0 answered._")
