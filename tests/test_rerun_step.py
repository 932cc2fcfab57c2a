"""Change one step, not the whole report: a step of a finished thread is researched again over real HTTP
with the fake server, exactly its own calls are made, every other step is kept, and the earlier report
stays in the thread's history."""

from __future__ import annotations

from collections import Counter

import pytest
from typer.testing import CliRunner

import deepstep
from deepstep import step_tree
from deepstep.api import run_tree
from deepstep.cli import app
from deepstep.errors import InputError
from deepstep.testing.crash import cli_env
from tests.conftest import calls_by_task, with_settings

QUESTION = "What is a loss function?"


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


def test_a_step_the_corpus_does_not_cover_is_kept_when_another_step_is_researched_again(settings, fake_llm):
    # Over the test corpus, the volcano and photosynthesis passages (each step's top one) do not cover the research question.
    names = ("Volcanoes: lava, magma and the crust", "Photosynthesis: chlorophyll and sunlight in leaves", "Gradient descent and the learning rate")
    specs = [step_tree.StepSpec(name=name, description="", level=str(i)) for i, name in enumerate(names)]
    tree = step_tree.build_tree(QUESTION, "", specs, max_steps=5, max_depth=3).tree
    run_settings = with_settings(settings, rollouts=1, top_k=1, max_searches=0)
    first = run_tree(tree, thread_id="rerun4", settings=run_settings)
    assert [s["status"] for s in step_tree.steps(first.tree)] == ["insufficient_evidence", "insufficient_evidence", "done"]
    fake_llm.reset_log()
    deepstep.rerun_step("rerun4", "2", settings=run_settings)
    # Finished is finished: the fan-out sends only the rerun step, not the two the corpus does not cover.
    assert calls_by_task(fake_llm) == Counter(question=1, answer=1, evaluate=2, critique=1, refine=1)


def test_a_step_is_named_by_its_id_or_level_and_a_wrong_one_says_which_exist(settings, fake_llm):
    run_settings = with_settings(settings, rollouts=0, max_steps=2)
    first = deepstep.run(QUESTION, thread_id="rerun2", settings=run_settings)
    step_id = step_tree.step_ids(first.tree)[0]
    fake_llm.reset_log()
    deepstep.rerun_step("rerun2", step_id, settings=run_settings)
    assert calls_by_task(fake_llm) == Counter(question=1, answer=1, evaluate=1)
    with pytest.raises(InputError, match=r"no step '7>7': give a step id or one of the levels 0, 0>1"):
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
    assert nothing.exit_code == 2 and "pass one of --rerun" in nothing.output


# --- report history and diff ---


def test_every_report_version_stays_and_the_diff_shows_exactly_the_changed_step(settings, fake_llm):
    run_settings = with_settings(settings, rollouts=0, max_steps=3)
    first = deepstep.run(QUESTION, thread_id="hist1", settings=run_settings)
    deepstep.rerun_step("hist1", "0>1", note="Name the loss.", settings=run_settings)
    versions = first.versions(settings=run_settings)
    assert [(v["number"], v["action"], v["calls"]) for v in versions] == [(1, "run", 2 + 3 * 3), (2, "rerun 0>1", 3)]
    assert versions[0]["steps"] == ["0", "0>1", "0>1>1"] and versions[1]["steps"] == ["0>1"]
    assert versions[0]["cost"] is None  # no price table
    text = deepstep.diff("hist1", settings=run_settings)
    assert text.startswith("```diff\n--- version 1\n+++ version 2\n") and text.endswith("```\n")
    changed = [line for line in text.splitlines()[3:-1] if line.startswith(("-", "+"))]
    before = {s["level"]: s for s in step_tree.steps(first.tree)}
    # Only the rerun step's answer lines differ (the fake model's rerun answer differs, or the diff is empty).
    assert all("Aspect 2 of" in line or line[1:].strip() in before["0>1"]["answer"] for line in changed)
    with pytest.raises(InputError, match="has report versions 1 to 2, not 5"):
        deepstep.diff("hist1", 1, 5, settings=run_settings)


def test_history_and_diff_on_the_command_line(settings, fake_llm):
    env = cli_env(fake_llm.base_url, settings.home, corpus=settings.corpus, rollouts=0, max_steps=2, report_layout="seed")
    runner = CliRunner()
    assert runner.invoke(app, ["run", QUESTION, "--thread-id", "hist2"], env=env).exit_code == 0
    assert runner.invoke(app, ["step", "hist2", "0>1", "--rerun", "--note", "Shorter."], env=env).exit_code == 0
    listed = runner.invoke(app, ["history", "hist2"], env=env)
    assert listed.exit_code == 0, listed.output
    assert "rerun" in listed.output and "0>1" in listed.output
    compared = runner.invoke(app, ["diff", "hist2", "--from", "1", "--to", "2"], env=env)
    assert compared.exit_code == 0 and (compared.output.startswith("```diff") or "are the same" in compared.output)
    wrong = runner.invoke(app, ["diff", "hist2", "--to", "9"], env=env)
    assert wrong.exit_code == 2 and "versions 1 to 2" in wrong.output
