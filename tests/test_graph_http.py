"""The whole graph over real HTTP: ChatOpenAI against the fake OpenAI-compatible server."""

from __future__ import annotations

import re
from collections import Counter

import networkx as nx
import pytest

import deepstep
from deepstep import step_tree
from deepstep.configuration import Settings
from deepstep.render import TABLE_COLUMNS
from deepstep.testing import FakeLLMServer, Fault

QUESTION = "What is a loss function?"


def tasks(log, status=200):
    return Counter(entry["task"] for entry in log if entry["status"] == status)


def expected_calls(steps: int, rollouts: int) -> Counter:
    return Counter(
        outline=1, steps=1, question=steps, answer=steps, evaluate=steps * (1 + rollouts), critique=steps * rollouts, refine=steps * rollouts
    )


def test_full_run_makes_exactly_3_plus_3r_calls_per_step(settings, fake_llm):
    result = deepstep.run(QUESTION, thread_id="full", settings=settings)
    steps = step_tree.steps(result.tree)
    assert len(steps) == 5
    assert all(s["status"] == "done" and s["answer"] and s["question"] and s["contexts"] for s in steps)
    assert tasks(fake_llm.log()) == expected_calls(5, settings.rollouts)
    per_step = (len(fake_llm.log()) - 2) / len(steps)
    assert per_step == 3 + 3 * settings.rollouts
    # Usage recorded per role equals what the server saw.
    assert result.usage["evaluate"]["calls"] == 5 * (1 + settings.rollouts)
    assert result.usage["decompose"]["calls"] == 2
    assert all(result.usage[role]["prompt_tokens"] > 0 for role in ("question", "answer", "critique", "refine"))
    # The MCTS trace is complete and the answer written back is the best-Q node's.
    for step in steps:
        search = step["mcts"]
        assert search["rollouts_done"] == settings.rollouts
        assert len(search["nodes"]) == 1 + settings.rollouts
        best = max(search["nodes"], key=lambda n: (n["q"], -n["id"]))
        assert step["answer"] == best["answer"] and search["best"] == best["id"]
        assert all(-100 <= r <= 95 for n in search["nodes"] for r in n["rewards"])
    assert isinstance(result.tree, nx.DiGraph)
    assert result.markdown.startswith(f"\n# {QUESTION} \n")  # the seed layout starts with a newline
    assert "[task_id:0](" in result.markdown and "[task_id:0>1>1](" in result.markdown
    table = result.table()
    assert list(table.columns) == TABLE_COLUMNS and list(table["shot_number"]) == [1, 2, 3, 4, 5]
    assert result.failed_steps == [] and result.status == "done"


def test_finished_thread_reruns_without_calls(settings, fake_llm):
    first = deepstep.run(QUESTION, thread_id="again", settings=settings)
    calls = len(fake_llm.log())
    again = deepstep.resume("again", settings=settings)
    assert len(fake_llm.log()) == calls
    assert step_tree.trees_equal(first.tree, again.tree)
    loaded = deepstep.load("again", settings=settings)
    assert step_tree.trees_equal(first.tree, loaded.tree) and loaded.markdown == first.markdown


def test_review_pauses_and_resumes_with_an_edited_plan(settings, fake_llm):
    reviewing = Settings.build(**{**settings.model_dump(), "review": True})
    paused = deepstep.run(QUESTION, thread_id="rev", settings=reviewing)
    assert paused.status == "awaiting_review"
    assert [s["level"] for s in paused.review_request["steps"]] == ["0", "0>1", "0>1>1", "0>1>2", "0>2"]
    assert tasks(fake_llm.log()) == Counter(outline=1, steps=1)
    edited = [
        {"name": "Definition", "description": "what it is", "level": "0"},
        {"name": "Examples", "description": "MSE and cross-entropy", "level": "0>1"},
        {"name": "Orphan", "description": "", "level": "0>5>1"},
    ]
    done = deepstep.resume("rev", review={"steps": edited}, settings=reviewing)
    assert done.status == "done"
    assert [(s["name"], s["level"]) for s in step_tree.steps(done.tree)] == [("Definition", "0"), ("Examples", "0>1"), ("Orphan", "0>2")]
    assert any("no parent step" in w for w in done.warnings)
    assert tasks(fake_llm.log())["question"] == 3


def test_review_approval_keeps_the_proposed_plan(settings):
    reviewing = Settings.build(**{**settings.model_dump(), "review": True})
    paused = deepstep.run(QUESTION, thread_id="ok", settings=reviewing)
    done = deepstep.resume("ok", settings=reviewing)
    assert [s["level"] for s in step_tree.steps(done.tree)] == [s["level"] for s in paused.review_request["steps"]]
    assert all(s["status"] == "done" for s in step_tree.steps(done.tree))


def test_a_failing_step_is_retried_then_marked_failed_while_others_finish(settings, fake_llm):
    reviewing = Settings.build(**{**settings.model_dump(), "review": True})
    plan = deepstep.run(QUESTION, thread_id="fail", settings=reviewing).review_request["steps"]
    doomed = plan[2]["name"]
    fake_llm.set_faults([Fault(kind="http500", task="critique", match=doomed)])
    result = deepstep.resume("fail", settings=reviewing)
    assert [f["name"] for f in result.failed_steps] == [doomed]
    assert "HTTP 500" in result.failed_steps[0]["error"] and "2 attempt" in result.failed_steps[0]["error"]
    statuses = Counter(s["status"] for s in step_tree.steps(result.tree))
    assert statuses == Counter(done=4, failed=1)
    assert "failed" in result.markdown and doomed in result.markdown
    # The node was tried step_attempts (2) times, each a real request.
    assert sum(1 for e in fake_llm.log() if e["status"] == 500) == 2
    assert result.usage["critique"]["retries"] == 1

    fake_llm.set_faults([])
    before = len(fake_llm.log())
    retried = deepstep.resume("fail", settings=reviewing)
    assert retried.failed_steps == []
    assert all(s["status"] == "done" for s in step_tree.steps(retried.tree))
    assert len(fake_llm.log()) - before == 3 + 3 * settings.rollouts  # only the failed step ran again


def test_server_without_json_schema_is_detected_once(tmp_path):
    with FakeLLMServer(json_schema=False) as server:
        settings = Settings.build(base_url=server.base_url, home=tmp_path / "h", corpus=settings_corpus(), rollouts=1, max_retries=0)
        result = deepstep.run(QUESTION, settings=settings)
        rejected = [e for e in server.log() if e["status"] == 400]
    assert len(rejected) == 1
    assert all(s["status"] == "done" for s in step_tree.steps(result.tree))


def test_malformed_structured_reply_is_repaired_and_counted(settings, fake_llm):
    fake_llm.set_faults([Fault(kind="malformed_json", task="refine", times=1)])
    result = deepstep.run(QUESTION, settings=settings)
    assert result.usage["refine"]["repairs"] == 1
    assert result.usage["refine"]["calls"] == 5 * settings.rollouts + 1
    assert all(s["status"] == "done" for s in step_tree.steps(result.tree))


def test_unparsable_scores_fall_back_to_zero(settings, fake_llm):
    from conftest import fallback_rewards

    fake_llm.set_faults([Fault(kind="bad_score", task="evaluate")])
    result = deepstep.run(QUESTION, settings=settings)
    evaluations = 5 * (1 + settings.rollouts)
    assert result.usage["evaluate"]["fallbacks"] == evaluations
    assert result.usage["evaluate"]["repairs"] == evaluations * settings.max_repairs
    for step in step_tree.steps(result.tree):
        assert step["status"] == "done"
        assert [node["rewards"] for node in step["mcts"]["nodes"]] == fallback_rewards(step, QUESTION)


def test_invalid_citations_are_removed(settings, fake_llm):
    result = deepstep.run(QUESTION, settings=settings)
    steps = step_tree.steps(result.tree)
    # The fake server adds an out-of-range citation to some drafts; they must be gone and counted.
    assert sum(s["removed_citations"] for s in steps) > 0
    for step in steps:
        cited = [int(n) for n in re.findall(r"\[(\d+)\]", step["answer"])]
        assert all(1 <= n <= len(step["contexts"]) for n in cited)


def settings_corpus():
    from conftest import TEST_CORPUS

    return TEST_CORPUS


@pytest.mark.parametrize("question", ["", "   ", "\x00\x01"])
def test_empty_question_is_rejected_before_any_call(settings, fake_llm, question):
    with pytest.raises(deepstep.InputError, match="question is empty"):
        deepstep.run(question, settings=settings)
    assert fake_llm.log() == []


def test_unknown_thread_and_unreachable_server(settings, tmp_path):
    with pytest.raises(deepstep.UnknownThreadError):
        deepstep.load("nope", settings=settings)
    dead = Settings.build(**{**settings.model_dump(), "base_url": "http://127.0.0.1:9/v1", "step_attempts": 1})
    with pytest.raises(deepstep.ModelServerError, match="cannot reach the model server"):
        deepstep.run(QUESTION, settings=dead)


@pytest.mark.parametrize(("method", "sent"), [("auto", "json_schema"), ("json_object", "json_object"), ("prompt", None)])
def test_structured_output_method_is_what_the_settings_ask(settings, fake_llm, method, sent):
    chosen = Settings.build(**{**settings.model_dump(), "structured_output": method, "rollouts": 1})
    result = deepstep.run(QUESTION, settings=chosen)
    structured = [e for e in fake_llm.log() if e["task"] in ("steps", "refine", "evaluate")]
    assert {e["format"] for e in structured} == {sent}
    assert {e["format"] for e in fake_llm.log() if e["task"] in ("outline", "question", "answer", "critique")} == {None}
    assert all(s["status"] == "done" for s in step_tree.steps(result.tree))


def test_graph_invoke_with_configurable_and_rerun_never_duplicates_steps(fake_llm, tmp_path):
    from conftest import TEST_CORPUS

    from deepstep.checkpoint import sqlite_checkpointer

    config = {
        "configurable": {"thread_id": "direct", "base_url": fake_llm.base_url, "corpus": str(TEST_CORPUS), "rollouts": 1, "max_steps": 3},
        "recursion_limit": 100,
    }
    with sqlite_checkpointer(tmp_path / "c.sqlite") as saver:
        graph = deepstep.build_graph(saver)
        output = graph.invoke({"question": QUESTION}, config)
        assert set(output) >= {"report", "tree", "usage", "failed_steps"}
        assert len(step_tree.step_ids(output["tree"])) == 3
        calls = len(fake_llm.log())
        assert calls == 2 + 3 * 6 + 1  # planning, 3 + 3R per step, the answer-first report's synthesis
        again = graph.invoke({"question": QUESTION}, config)
        assert len(fake_llm.log()) == calls
        assert step_tree.trees_equal(again["tree"], output["tree"])


def test_max_concurrency_bounds_calls_in_flight(tmp_path):
    from conftest import TEST_CORPUS

    def peak_in_flight(log):
        events = sorted([(e["started"], 1) for e in log] + [(e["finished"], -1) for e in log])
        peak = current = 0
        for _, delta in events:
            current += delta
            peak = max(peak, current)
        return peak

    peaks = {}
    for concurrency in (1, 3):
        with FakeLLMServer(latency_ms=40) as server:
            settings = Settings.build(
                base_url=server.base_url, home=tmp_path / str(concurrency), corpus=TEST_CORPUS, rollouts=1, max_concurrency=concurrency
            )
            deepstep.run(QUESTION, settings=settings)
            peaks[concurrency] = peak_in_flight(server.log())
    assert peaks == {1: 1, 3: 3}


def test_resume_keeps_run_shaping_settings_but_takes_the_current_server(settings, tmp_path):
    reviewing = Settings.build(**{**settings.model_dump(), "review": True, "rollouts": 1})
    deepstep.run(QUESTION, thread_id="moved", settings=reviewing)
    with FakeLLMServer() as new_server:
        resumed = deepstep.resume("moved", settings=Settings.build(base_url=new_server.base_url, home=settings.home))
        assert resumed.status == "done"
        assert tasks(new_server.log()) == Counter(question=5, answer=5, evaluate=10, critique=5, refine=5)  # rollouts=1 kept


def test_a_transient_error_is_retried_and_counted(settings, fake_llm):
    fake_llm.set_faults([Fault(kind="http500", task="question", times=1), Fault(kind="http429", task="outline", times=1, retry_after=0)])
    result = deepstep.run(QUESTION, settings=settings)
    assert all(s["status"] == "done" for s in step_tree.steps(result.tree))
    assert result.usage["question"]["retries"] == 1 and result.usage["decompose"]["retries"] == 1
    assert tasks(fake_llm.log()) == expected_calls(5, settings.rollouts)


def test_unusable_step_list_falls_back_to_the_outline(settings, fake_llm):
    fake_llm.set_faults([Fault(kind="malformed_json", task="steps")])
    result = deepstep.run(QUESTION, settings=settings)
    assert result.usage["decompose"]["fallbacks"] == 1 and result.usage["decompose"]["repairs"] == settings.max_repairs
    assert any("taken from the outline" in w for w in result.warnings)
    names = [s["name"] for s in step_tree.steps(result.tree)]
    assert names[:2] == ["Definition and purpose", "Common forms and formulas"]
    assert all(s["status"] == "done" for s in step_tree.steps(result.tree))


def test_http_retries_respect_retry_after(settings, fake_llm):
    patient = Settings.build(**{**settings.model_dump(), "max_retries": 2, "max_steps": 1, "rollouts": 0})
    fake_llm.set_faults([Fault(kind="http429", task="outline", times=1, retry_after=1.5)])
    result = deepstep.run(QUESTION, settings=patient)
    refused, retried = [e for e in fake_llm.log() if e["task"] == "outline"]
    assert (refused["status"], retried["status"]) == (429, 200)
    # A lower bound only (load can only lengthen the gap): the retry came no sooner than the server asked,
    # measured by the server between its 429 reply and the retry's arrival.
    assert retried["started"] - refused["finished"] >= 1.5
    assert result.usage["decompose"]["retries"] == 0  # the HTTP client retried, not the graph


def test_replies_cut_off_by_max_tokens_are_recovered(settings, fake_llm):
    # A reply cut at max_tokens (finish_reason "length") is parsed as far as it goes, then repaired.
    fake_llm.set_faults([Fault(kind="length", task="refine", times=2), Fault(kind="length", task="evaluate", times=1)])
    result = deepstep.run(QUESTION, settings=settings)
    assert all(s["status"] == "done" for s in step_tree.steps(result.tree))
    refined = [n["answer"] for s in step_tree.steps(result.tree) for n in s["mcts"]["nodes"][1:]]
    assert "A loss function scores a prediction against the target [1]" in refined  # the cut-off JSON was closed
    assert result.usage["evaluate"]["repairs"] == 1  # '{"score": 4' could be 4 or 40: asked again


def test_the_final_state_holds_each_step_once(settings, fake_llm):
    """collect merges the fan-in buffer into the tree and clears it: the final checkpoint keeps
    every step's passages and search in the tree only, and the tree alone says a step is done."""
    from deepstep.checkpoint import sqlite_checkpointer

    result = deepstep.run(QUESTION, thread_id="once", settings=settings)
    with sqlite_checkpointer(settings.checkpoint_file) as saver:
        values = saver.get_tuple({"configurable": {"thread_id": "once"}}).checkpoint["channel_values"]
    assert values["step_results"] == {}
    assert [s["status"] for s in step_tree.steps(values["tree"])] == ["done"] * 5
    assert step_tree.trees_equal(values["tree"], result.tree)
