"""The budget: the bound of a step's model calls, the estimate of the rest of a run, and caps that pause a run
between steps (exact from the fake server's request log) and let a resume with higher caps finish it."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from typer.testing import CliRunner

import deepstep
from deepstep import budget, step_tree
from deepstep.cli import app
from deepstep.configuration import Settings
from deepstep.errors import ConfigError, InputError
from deepstep.nodes.dispatch import dispatch_steps, next_after_batch
from deepstep.testing.crash import cli_env
from tests.conftest import calls_by_task, with_settings

QUESTION = "What is a loss function?"
# The fake model plans three steps (0, 0>1, 0>1>1) under max_steps=3; without follow-up searches a step then
# makes exactly its bound, 3 + 3R calls, so a cap can be met to the call.
PLANNING = 2
STEP_CALLS = 3 + 3 * 2  # rollouts = 2


def unit_settings(**changes) -> Settings:
    return Settings.build(base_url="http://127.0.0.1:1/v1", **changes)


# --- the bound and the estimate (pure, hand-computed) ---


def test_a_step_makes_at_most_3_plus_3r_calls_at_the_defaults_without_follow_ups():
    calls = budget.step_calls(unit_settings(rollouts=2, max_searches=0))
    # The exact counts test_rerun_step.py sees for one step.
    assert calls == {"question": 1, "answer": 1, "evaluate": 3, "critique": 2, "refine": 2}
    assert sum(budget.step_calls(unit_settings(rollouts=0, max_searches=0)).values()) == 3


def test_the_bound_counts_follow_up_queries_reward_samples_and_model_verification():
    calls = budget.step_calls(unit_settings(rollouts=2, reward_samples=2, max_searches=2, verify="model"))
    # question 1 + answer 1 + evaluate 2*(1+2) + critique 2 + refine 2 + search 2 + verify (1+2)
    assert calls == {"question": 1, "answer": 1, "evaluate": 6, "critique": 2, "refine": 2, "search": 2, "verify": 3}
    assert sum(calls.values()) == 17


def test_the_estimate_of_the_rest_counts_tokens_high_and_prices_them():
    settings = unit_settings(
        rollouts=0,
        max_searches=0,
        max_tokens=100,
        context_tokens=200,
        outline_tokens=50,
        report_layout="seed",
        prices={"gpt-4o-mini": {"prompt": 1.0, "completion": 2.0}},
    )
    # question: prompt 300 + 50 outline; answer: 300 + 200 passages; evaluate: 300 + 200 + 2*100 (answer, claim check);
    # each reply at most 100 tokens: 350 + 500 + 700 + 3*100 = 1850 tokens a step.
    step_cost = (350 + 500 + 700) * 1.0 / 1e6 + 300 * 2.0 / 1e6
    assert budget.estimate(settings, 2) == {"steps": 2, "calls": 6, "tokens": 3700, "cost": pytest.approx(2 * step_cost)}
    # answer_first adds the synthesis: prompt 300 + 2 steps * (100 answer + 200 passages), reply 100.
    first = with_settings(settings, report_layout="answer_first")
    assert budget.estimate(first, 2) == {"steps": 2, "calls": 7, "tokens": 3700 + 900 + 100, "cost": pytest.approx(2 * step_cost + (900 + 200) / 1e6)}
    # No price for the model: no dollars.
    assert budget.estimate(unit_settings(rollouts=0), 1)["cost"] is None


def test_each_role_is_counted_with_its_own_reply_limit_and_model():
    settings = unit_settings(rollouts=0, max_searches=0, max_tokens=100, context_tokens=200, roles={"evaluate": {"max_tokens": 10, "model": "small"}})
    # As a run records it: by role, outline and steps both as decompose, the evaluate reply at most 10 tokens.
    assert budget.need(settings, {"outline": 1, "steps": 1, "evaluate": 2}) == {
        "decompose": {"calls": 2, "prompt_tokens": 300 + 300 + 400, "completion_tokens": 200},
        "evaluate": {"calls": 2, "prompt_tokens": 2 * 700, "completion_tokens": 20},
    }
    with pytest.raises(ConfigError, match="model 'small' has none"):
        budget.check_caps(with_settings(settings, max_cost=1.0, prices={"gpt-4o-mini": {"prompt": 1.0, "completion": 1.0}}))


def test_steps_fit_by_their_worst_case_in_what_each_cap_leaves():
    settings = unit_settings(rollouts=2, max_searches=0, max_calls=20)
    used = {"outline": {"calls": 1}, "steps": {"calls": 1}}
    assert budget.steps_that_fit(settings, used, 3) == 2  # (20 - 2) // 9
    assert budget.steps_that_fit(settings, {"answer": {"calls": 12}}, 3) == 0  # 8 left < 9
    assert budget.steps_that_fit(unit_settings(rollouts=2), used, 3) == 3  # no cap
    tokens = unit_settings(rollouts=0, max_searches=0, max_tokens=100, context_tokens=200, outline_tokens=50, max_run_tokens=4000)
    assert budget.steps_that_fit(tokens, {"steps": {"prompt_tokens": 250, "completion_tokens": 50}}, 5) == 2  # 3700 // 1850
    priced = with_settings(tokens, max_run_tokens=None, max_cost=0.005, prices={"gpt-4o-mini": {"prompt": 1.0, "completion": 2.0}})
    assert budget.steps_that_fit(priced, {}, 5) == 2  # a step: 1550 prompt and 300 completion tokens, $0.00215
    assert budget.steps_that_fit(priced, {"steps": {"calls": 1, "prompt_tokens": 1000}}, 5) == 1  # $0.001 used
    assert budget.synthesis_fits(with_settings(settings, report_layout="answer_first"), {"answer": {"calls": 19}}, 3)
    assert not budget.synthesis_fits(with_settings(settings, report_layout="answer_first"), {"answer": {"calls": 20}}, 3)
    assert budget.synthesis_fits(with_settings(settings, report_layout="seed"), {"answer": {"calls": 20}}, 3)  # no synthesis call


def test_caps_a_run_can_never_keep_are_refused_before_any_call():
    with pytest.raises(ConfigError, match=r"does not cover planning \(2 model calls"):
        budget.check_caps(unit_settings(max_calls=1))
    budget.check_caps(unit_settings(max_calls=1), planning=False)  # a resume or a rerun: planning is done
    with pytest.raises(ConfigError, match="max_cost needs a price for every model the run uses, and model 'gpt-4o-mini' has none"):
        budget.check_caps(unit_settings(max_cost=1.0))


def three_step_state(**statuses: str) -> dict:
    specs = [step_tree.StepSpec(name=f"Step {n}", description="", level=level) for n, level in enumerate(("0", "0>1", "1"))]
    tree = step_tree.build_tree(QUESTION, "", specs, max_steps=5, max_depth=3, ids={"0": "a", "0>1": "b", "1": "c"}).tree
    return {"question": QUESTION, "tree": step_tree.with_step_updates(tree, [{"id": i, "status": s} for i, s in statuses.items()])}


def test_the_fan_out_sends_the_first_steps_that_fit_and_pauses_when_none_does():
    settings = unit_settings(rollouts=0, max_searches=0, report_layout="answer_first", max_calls=9)  # 3 calls a step
    planned = {**three_step_state(), "usage": {"outline": {"calls": 1}, "steps": {"calls": 1}}}
    assert [send.arg["step"]["id"] for send in dispatch_steps(planned, settings)] == ["a", "b"]  # (9 - 2) // 3
    assert len(dispatch_steps(planned)) == 3  # no settings: every step, as a direct call always did
    assert dispatch_steps({**planned, "usage": {"answer": {"calls": 7}}}, settings) == "budget"
    # After the batch: the step never started, then the synthesis, each when it fits.
    batch_done = {**three_step_state(a="done", b="done"), "usage": {"answer": {"calls": 6}}}
    assert [send.arg["step"]["id"] for send in next_after_batch(batch_done, settings)] == ["c"]
    assert next_after_batch({**batch_done, "usage": {"answer": {"calls": 7}}}, settings) == "budget"
    all_done = three_step_state(a="done", b="failed", c="done")  # a failed step is not sent again here
    assert next_after_batch({**all_done, "usage": {"answer": {"calls": 8}}}, settings) == "synthesize"
    assert next_after_batch({**all_done, "usage": {"answer": {"calls": 9}}}, settings) == "budget"


# --- caps over real HTTP ---


def test_a_capped_run_pauses_at_the_cap_and_a_resume_with_a_higher_cap_finishes_it_like_an_uncapped_run(settings, fake_llm):
    plain = with_settings(settings, max_steps=3, max_searches=0)
    uncapped = deepstep.run(QUESTION, thread_id="free", settings=plain)
    total = sum(calls_by_task(fake_llm).values())
    assert total == PLANNING + 3 * STEP_CALLS
    fake_llm.reset_log()

    cap = PLANNING + 2 * STEP_CALLS  # room for two steps, not the third
    paused = deepstep.run(QUESTION, thread_id="capped", settings=with_settings(plain, max_calls=cap))
    assert sum(calls_by_task(fake_llm).values()) == cap  # no call beyond the cap
    assert paused.status == "awaiting_budget" and paused.review_request is None
    assert paused.budget_pause == {
        "paused": "budget",
        "caps": {"max_calls": cap},
        "used": {"calls": cap, "tokens": paused.budget_pause["used"]["tokens"], "cost": None},
        "rest": {"steps": 1, "calls": STEP_CALLS, "tokens": paused.budget_pause["rest"]["tokens"], "cost": None},
    }
    assert [s["status"] for s in step_tree.steps(paused.tree)] == ["done", "done", "pending"]  # no half-written step
    assert deepstep.load("capped", settings=plain).status == "awaiting_budget"

    fake_llm.reset_log()
    again = deepstep.resume("capped", settings=plain, max_calls=cap)  # the same cap: paused again, no call
    assert sum(calls_by_task(fake_llm).values()) == 0 and again.status == "awaiting_budget"

    done = deepstep.resume("capped", settings=plain, max_calls=total)
    assert done.status == "done"
    assert sum(calls_by_task(fake_llm).values()) == STEP_CALLS  # the third step only: no call repeated
    assert sum(int(fields["calls"]) for fields in done.usage.values()) == total
    assert step_tree.signature(done.tree) == step_tree.signature(uncapped.tree)


def test_the_synthesis_call_waits_for_room_too(settings, fake_llm):
    first = with_settings(settings, max_steps=3, max_searches=0, report_layout="answer_first")
    cap = PLANNING + 3 * STEP_CALLS  # every step, not the opening answer
    paused = deepstep.run(QUESTION, thread_id="synth", settings=with_settings(first, max_calls=cap))
    assert sum(calls_by_task(fake_llm).values()) == cap and paused.status == "awaiting_budget"
    assert paused.budget_pause is not None and paused.budget_pause["rest"]["steps"] == 0 and paused.budget_pause["rest"]["calls"] == 1
    fake_llm.reset_log()
    done = deepstep.resume("synth", settings=first, max_calls=cap + 1)
    assert calls_by_task(fake_llm) == Counter(synthesize=1) and done.status == "done"


def test_the_review_pause_shows_the_estimate_of_the_rest(settings, fake_llm):
    reviewing = with_settings(settings, max_steps=3, max_searches=0, review=True)
    paused = deepstep.run(QUESTION, thread_id="est", settings=reviewing)
    assert paused.status == "awaiting_review"
    estimate = paused.review_request["estimate"]
    assert (estimate["steps"], estimate["calls"]) == (3, 3 * STEP_CALLS)
    assert estimate == budget.estimate(reviewing, 3)


def test_the_cli_shows_the_estimate_exits_3_at_the_cap_and_resume_goes_on(settings, fake_llm, tmp_path):
    env = cli_env(fake_llm.base_url, settings.home, corpus=settings.corpus, max_steps=3, max_searches=0, report_layout="seed")
    runner = CliRunner()
    cap = PLANNING + 2 * STEP_CALLS
    paused = runner.invoke(app, ["run", QUESTION, "--thread-id", "clicap", "--max-calls", str(cap)], env=env)
    assert paused.exit_code == 3, paused.output
    assert f"3 steps to research: at most {3 * STEP_CALLS} model calls" in paused.output
    assert f"continue with `deepstep resume clicap --max-calls {PLANNING + 3 * STEP_CALLS}`" in paused.output
    assert sum(calls_by_task(fake_llm).values()) == cap
    pause = json.loads(paused.stdout)
    assert pause["paused"] == "budget" and pause["used"]["calls"] == cap
    still = runner.invoke(app, ["resume", "clicap", "--max-calls", str(cap)], env=env)
    assert still.exit_code == 3 and sum(calls_by_task(fake_llm).values()) == cap
    steps = tmp_path / "steps.json"
    steps.write_text('[{"name": "Losses", "description": "", "level": "0"}]', encoding="utf-8")
    wrong = runner.invoke(app, ["resume", "clicap", "--steps", str(steps)], env=env)
    assert wrong.exit_code == 2 and "paused by its budget, not waiting for review" in wrong.output
    done = runner.invoke(app, ["resume", "clicap", "--max-calls", str(PLANNING + 3 * STEP_CALLS), "--out", str(tmp_path / "out")], env=env)
    assert done.exit_code == 0, done.output
    assert sum(calls_by_task(fake_llm).values()) == PLANNING + 3 * STEP_CALLS
    assert (tmp_path / "out" / "report.md").exists()


def test_a_review_answer_for_a_run_paused_by_its_budget_is_refused(settings, fake_llm):
    plain = with_settings(settings, max_steps=3, max_searches=0, max_calls=PLANNING + STEP_CALLS)
    deepstep.run(QUESTION, thread_id="notreview", settings=plain)
    with pytest.raises(InputError, match="paused by its budget, not waiting for review"):
        deepstep.resume("notreview", settings=plain, review={"steps": [{"name": "x", "description": "", "level": "0"}]})


def test_a_token_cap_holds_the_steps_back_by_their_estimate_and_never_passes(settings, fake_llm):
    plain = with_settings(settings, max_steps=3, max_searches=0)
    step_tokens = budget.spending(plain, budget.need(plain, budget.step_calls(plain)))["tokens"]
    cap = budget.planning_estimate(plain)["tokens"] + step_tokens  # room for planning and one step's estimate
    paused = deepstep.run(QUESTION, thread_id="tokens", settings=with_settings(plain, max_run_tokens=cap))
    assert paused.status == "awaiting_budget" and paused.budget_pause is not None
    assert paused.budget_pause["caps"] == {"max_run_tokens": cap}
    statuses = Counter(s["status"] for s in step_tree.steps(paused.tree))
    assert statuses["done"] >= 1 and statuses["pending"] >= 1
    answered = [entry for entry in fake_llm.log() if entry["status"] == 200]
    used = sum(entry["prompt_tokens"] + entry["completion_tokens"] for entry in answered)
    assert used == paused.budget_pause["used"]["tokens"] <= cap
    done = deepstep.resume("tokens", settings=plain, max_run_tokens=cap + statuses["pending"] * step_tokens)
    assert done.status == "done"


def test_a_step_rerun_is_held_to_the_cap_too(settings, fake_llm):
    plain = with_settings(settings, max_steps=3, max_searches=0)
    deepstep.run(QUESTION, thread_id="rerun", settings=plain)
    total = PLANNING + 3 * STEP_CALLS
    fake_llm.reset_log()
    # The rerun's fan-out is decided in the run (update_state has no run settings): the thread has used 29 calls.
    paused = deepstep.rerun_step("rerun", "0>1", settings=with_settings(plain, max_calls=total + STEP_CALLS - 1))
    assert paused.status == "awaiting_budget" and sum(calls_by_task(fake_llm).values()) == 0
    assert paused.budget_pause is not None and paused.budget_pause["rest"]["calls"] == STEP_CALLS
    done = deepstep.resume("rerun", settings=plain, max_calls=total + STEP_CALLS)
    assert done.status == "done" and sum(calls_by_task(fake_llm).values()) == STEP_CALLS


def test_steps_go_out_in_batches_while_what_they_really_used_leaves_room(settings, fake_llm):
    # With two follow-up queries allowed a step may make 11 calls; here each makes 9 (the gate is satisfied).
    searching = with_settings(settings, max_steps=3, max_searches=2)
    assert sum(budget.step_calls(searching).values()) == STEP_CALLS + 2
    cap = PLANNING + (STEP_CALLS + 2) + STEP_CALLS  # 22: one step's worst case fits, then another's after it used 9
    paused = deepstep.run(QUESTION, thread_id="batches", settings=with_settings(searching, max_calls=cap))
    assert calls_by_task(fake_llm)["question"] == 2  # two steps, one batch each
    assert sum(calls_by_task(fake_llm).values()) == PLANNING + 2 * STEP_CALLS <= cap
    assert [s["status"] for s in step_tree.steps(paused.tree)] == ["done", "done", "pending"]
    done = deepstep.resume("batches", settings=searching, max_calls=100)
    assert done.status == "done" and sum(calls_by_task(fake_llm).values()) == PLANNING + 3 * STEP_CALLS
