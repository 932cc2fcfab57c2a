"""Change one step, not the whole report: a step of a finished thread is researched again over real HTTP
with the fake server, exactly its own calls are made, every other step is kept, and the earlier report
stays in the thread's history."""

from __future__ import annotations

from collections import Counter

import pytest
from typer.testing import CliRunner

import deepstep
from deepstep import step_tree
from deepstep.cli import app
from deepstep.configuration import Settings
from deepstep.errors import InputError
from deepstep.testing.crash import cli_env

QUESTION = "What is a loss function?"


def with_settings(settings: Settings, **changes) -> Settings:
    return Settings.build(**{**settings.model_dump(), **changes})


def calls_by_task(fake_llm) -> Counter:
    return Counter(entry["task"] for entry in fake_llm.log() if entry["status"] == 200)


def test_rerunning_one_step_makes_exactly_its_calls_and_keeps_the_others(settings, fake_llm):
    run_settings = with_settings(settings, rollouts=2, max_steps=3)
    first = deepstep.run(QUESTION, thread_id="rerun1", settings=run_settings)
    before = {s["level"]: s for s in step_tree.steps(first.tree)}
    prompts_before = {entry["hash"] for entry in fake_llm.log() if entry["task"] in ("question", "answer")}
    fake_llm.reset_log()
    again = deepstep.rerun_step("rerun1", "0>1", note="Give the formula of the squared error.", settings=run_settings)
    # 3 + 3R calls of the one step (seed layout: no synthesis) and nothing else.
    assert calls_by_task(fake_llm) == Counter(question=1, answer=1, evaluate=3, critique=2, refine=2)
    after = {s["level"]: s for s in step_tree.steps(again.tree)}
    assert after.keys() == before.keys()
    for level in before.keys() - {"0>1"}:
        assert after[level] == before[level]  # untouched, to the last field
    rerun = after["0>1"]
    assert rerun["status"] == "done" and rerun["review_note"] == "Give the formula of the squared error."
    assert rerun["id"] == before["0>1"]["id"]
    # The note reached the question and answer prompts: neither was sent in the first run.
    assert not prompts_before & {entry["hash"] for entry in fake_llm.log() if entry["task"] in ("question", "answer")}
    assert again.thread_id == "rerun1" and again.status == "done"


def test_a_step_is_named_by_its_id_or_level_and_a_wrong_one_says_which_exist(settings, fake_llm):
    run_settings = with_settings(settings, rollouts=0, max_steps=2)
    first = deepstep.run(QUESTION, thread_id="rerun2", settings=run_settings)
    step_id = step_tree.step_ids(first.tree)[0]
    fake_llm.reset_log()
    deepstep.rerun_step("rerun2", step_id, settings=run_settings)
    assert calls_by_task(fake_llm) == Counter(question=1, answer=1, evaluate=1)
    with pytest.raises(InputError, match=r"has no step '7>7': give a step id or one of the levels 0, 0>1"):
        deepstep.rerun_step("rerun2", "7>7", settings=run_settings)
    with pytest.raises(InputError, match="must be text"):
        deepstep.rerun_step("rerun2", ["0"], settings=run_settings)  # type: ignore[arg-type]


def test_the_cli_reruns_a_step(settings, fake_llm, tmp_path):
    env = cli_env(fake_llm.base_url, settings.home, corpus=settings.corpus, rollouts=0, max_steps=2, report_layout="seed")
    runner = CliRunner()
    assert runner.invoke(app, ["run", QUESTION, "--thread-id", "rerun3"], env=env).exit_code == 0
    fake_llm.reset_log()
    result = runner.invoke(app, ["step", "rerun3", "0", "--rerun", "--note", "Shorter."], env=env)
    assert result.exit_code == 0, result.output
    assert calls_by_task(fake_llm) == Counter(question=1, answer=1, evaluate=1)
    nothing = runner.invoke(app, ["step", "rerun3", "0"], env=env)
    assert nothing.exit_code != 0 and "pass --rerun" in nothing.output
