"""A reviewer's changes to a finished report over real HTTP with the fake server, exact from its request log:
an edited answer costs no call (but its verification with verify = model), an edited question skips only the
question call, an added step makes only its own calls, approve and remove make none; the same actions given
as graph input (as Studio sends them) revise the thread."""

from __future__ import annotations

from collections import Counter

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from typer.testing import CliRunner

import deepstep
from deepstep import step_tree
from deepstep.cli import app
from deepstep.errors import InputError
from deepstep.graph import build_graph
from deepstep.testing.crash import cli_env
from tests.conftest import TEST_CORPUS, calls_by_task, with_settings

QUESTION = "What is a loss function?"


@pytest.fixture
def finished(settings, fake_llm):
    """A finished 3-step thread (R = 1, the seed layout: no synthesis call), and the fake server's log emptied."""
    run_settings = with_settings(settings, rollouts=1, max_steps=3, report_layout="seed")
    result = deepstep.run(QUESTION, thread_id="rev", settings=run_settings)
    fake_llm.reset_log()
    return run_settings, result


def by_level(result):
    return {step["level"]: step for step in step_tree.steps(result.tree)}


def test_an_edited_answer_costs_no_model_call_and_its_claims_are_checked(finished, fake_llm):
    run_settings, first = finished
    passage = by_level(first)["0>1"]["contexts"][0]["text"]
    text = f"{passage} [1] The moon is made of green cheese. [1]"
    edited = deepstep.revise("rev", [{"action": "edit_answer", "step": "0>1", "text": text}], settings=run_settings)
    assert fake_llm.log() == []
    step = by_level(edited)["0>1"]
    assert step["answer"] == text and step["answer_source"] == "reviewer"
    assert [claim["verdict"] for claim in step["claims"]][-1] == "unsupported"
    assert "Answer written by the reviewer" not in edited.markdown  # the seed layout has no confidence lines
    for level in ("0", "0>1>1"):
        assert by_level(edited)[level] == by_level(first)[level]


def test_with_the_model_verifier_an_edited_answer_costs_exactly_one_verify_call(settings, fake_llm):
    run_settings = with_settings(settings, rollouts=0, max_steps=2, report_layout="seed", verify="model")
    first = deepstep.run(QUESTION, thread_id="rev-verify", settings=run_settings)
    fake_llm.reset_log()
    text = f"{by_level(first)['0']['contexts'][0]['text']} [1]"
    edited = deepstep.revise("rev-verify", [{"action": "edit_answer", "step": "0", "text": text}], settings=run_settings)
    assert calls_by_task(fake_llm) == Counter(verify=1)
    assert edited.usage["verify"]["calls"] == first.usage["verify"]["calls"] + 1
    step = by_level(edited)["0"]
    supported = sum(claim["verdict"] == "supported" for claim in step["claims"]) / len(step["claims"])
    assert step["confidence"]["supported_share"] == round(supported, 3)  # read from the verifier's verdicts


def test_an_edited_question_is_researched_without_a_question_call(finished, fake_llm):
    run_settings, _ = finished
    mine = "How does the learning rate change gradient descent?"
    again = deepstep.revise("rev", [{"action": "edit_question", "step": "0>1", "text": mine}], settings=run_settings)
    assert calls_by_task(fake_llm) == Counter(answer=1, evaluate=2, critique=1, refine=1)  # 3 + 3R less the question call
    step = by_level(again)["0>1"]
    assert step["question"] == mine and step["fixed_question"] == step["question"]


def test_an_added_step_makes_only_its_own_calls_and_remove_and_approve_make_none(finished, fake_llm):
    run_settings, first = finished
    added = deepstep.revise("rev", [{"action": "add", "step": "0", "name": "Hinge loss", "description": "The SVM's loss."}], settings=run_settings)
    assert calls_by_task(fake_llm) == Counter(question=1, answer=1, evaluate=2, critique=1, refine=1)
    new = by_level(added)["0>2"]
    assert new["name"] == "Hinge loss" and new["status"] == "done" and "Hinge loss" in added.markdown
    fake_llm.reset_log()
    trimmed = deepstep.revise("rev", [{"action": "remove", "step": "0>1"}, {"action": "approve", "step": "0"}], settings=run_settings)
    assert fake_llm.log() == []
    assert sorted(by_level(trimmed)) == ["0", "0>2"] and by_level(trimmed)["0"]["approved"] is True
    assert by_level(first)["0>1"]["name"] not in trimmed.markdown
    actions = [v["action"] for v in trimmed.versions(settings=run_settings)]
    assert actions == ["run", "add 0>2", "remove 0>1 (+1 under it); approve 0"]


def test_the_answer_first_report_marks_what_a_reviewer_did(settings, fake_llm):
    run_settings = with_settings(settings, rollouts=0, max_steps=2, report_layout="answer_first")
    first = deepstep.run(QUESTION, thread_id="rev-marks", settings=run_settings)
    fake_llm.reset_log()
    text = f"{by_level(first)['0>1']['contexts'][0]['text']} [1]"
    deepstep.revise("rev-marks", [{"action": "edit_answer", "step": "0>1", "text": text}], settings=run_settings)
    # The opening answer is written again from the changed step (one call); no step is researched.
    assert calls_by_task(fake_llm) == Counter(synthesize=1)
    approved = deepstep.revise("rev-marks", [{"action": "approve", "step": "0>1"}], settings=run_settings)
    assert "_Answer written by the reviewer; approved by the reviewer._" in approved.markdown
    assert calls_by_task(fake_llm) == Counter(synthesize=1)  # approving changed no answer: the opening one is kept


def test_actions_given_as_graph_input_revise_a_finished_thread(fake_llm, monkeypatch):
    """What Studio sends: the finished thread's next input is {"actions": [...]} instead of a question."""
    monkeypatch.setenv("OPENAI_BASE_URL", fake_llm.base_url)
    monkeypatch.setenv("DEEPSTEP_CORPUS", str(TEST_CORPUS))
    graph = build_graph(InMemorySaver())
    config = {"configurable": {"thread_id": "studio"}}
    context = {"rollouts": 0, "max_steps": 2, "report_layout": "seed"}
    first = graph.invoke({"question": QUESTION}, config, context=context)
    fake_llm.reset_log()
    final = graph.invoke({"actions": [{"action": "rerun", "step": "0>1", "note": "Shorter."}]}, config, context=context)
    assert calls_by_task(fake_llm) == Counter(question=1, answer=1, evaluate=1)
    assert step_tree.signature(final["tree"], fields=("level", "status")) == step_tree.signature(first["tree"], fields=("level", "status"))
    assert final["tree"].nodes[step_tree.step_ids(final["tree"])[1]]["review_note"] == "Shorter."


def test_a_bad_action_changes_nothing(finished, fake_llm):
    run_settings, first = finished
    with pytest.raises(InputError, match="the answer is empty"):
        deepstep.revise("rev", [{"action": "edit_answer", "step": "0", "text": ""}], settings=run_settings)
    assert deepstep.load("rev", settings=run_settings).markdown == first.markdown and fake_llm.log() == []


def test_the_cli_edits_an_answer_from_a_file_and_refuses_two_changes_at_once(settings, fake_llm, tmp_path):
    env = cli_env(fake_llm.base_url, settings.home, corpus=settings.corpus, rollouts=0, max_steps=2, report_layout="seed")
    runner = CliRunner()
    assert runner.invoke(app, ["run", QUESTION, "--thread-id", "rev-cli"], env=env).exit_code == 0
    fake_llm.reset_log()
    answer = tmp_path / "answer.md"
    answer.write_text("\ufeffA loss function scores a prediction. [1]", encoding="utf-8")
    result = runner.invoke(app, ["step", "rev-cli", "0", "--edit-answer", str(answer)], env=env)
    assert result.exit_code == 0, result.output
    assert fake_llm.log() == []
    assert by_level(deepstep.load("rev-cli", settings=with_settings(settings)))["0"]["answer"] == "A loss function scores a prediction. [1]"
    both = runner.invoke(app, ["step", "rev-cli", "0", "--approve", "--remove"], env=env)
    assert both.exit_code == 2 and "one change at a time, not --approve and --remove" in both.output
    missing = runner.invoke(app, ["step", "rev-cli", "0", "--edit-answer", str(tmp_path / "nope.md")], env=env)
    assert missing.exit_code == 2 and "cannot read the answer file" in missing.output


def test_a_revision_researches_only_what_it_left_pending_not_a_step_that_failed_before(settings, fake_llm):
    from deepstep.testing import Fault

    run_settings = with_settings(settings, rollouts=0, max_steps=3, report_layout="seed")
    fake_llm.set_faults([Fault(kind="http500", task="question", match="Step: Aspect 2 ")])  # the step at 0>1 fails for good
    first = deepstep.run(QUESTION, thread_id="rev-failed", settings=run_settings)
    assert [s["level"] for s in first.failed_steps] == ["0>1"]
    fake_llm.reset_log()
    approved = deepstep.revise("rev-failed", [{"action": "approve", "step": "0"}], settings=run_settings)
    assert fake_llm.log() == []  # the failed step waits for `deepstep resume`
    assert [s["level"] for s in approved.failed_steps] == ["0>1"] and by_level(approved)["0"]["approved"] is True
