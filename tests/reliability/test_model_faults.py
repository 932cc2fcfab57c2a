"""Model faults injected by the fake server (SPEC sections 2 and 5).

A fault that happens once is retried (HTTP client or graph retry) or repaired (structured
output); a fault that never stops fails only its step, with a readable reason, while the
other steps finish; the report names the failed step; `deepstep resume` then re-runs only it.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest
from typer.testing import CliRunner

import deepstep
from deepstep import step_tree
from deepstep.cli import app
from deepstep.mcts import REWARD_MIN, SUPPRESS_ABOVE
from deepstep.testing import FakeLLMServer, Fault
from tests.conftest import fallback_rewards

from .conftest import CORPUS, QUESTION, settings_for

REFUSAL = "I'm sorry, but I can't help with that."
STEPS = 5
DOOMED = "Aspect 3 of"  # the fake server's third step; every prompt of that step contains it


def calls_per_step(rollouts: int) -> int:
    return 3 + 3 * rollouts


def fired(log: list[dict], kind: str) -> int:
    return sum(1 for entry in log if entry["fault"] == kind)


def settled_log(server: FakeLLMServer, fault: Fault) -> list[dict]:
    """The server's log once a timed-out request has been logged too (the server logs it when its sleep ends)."""
    if fault.kind == "timeout":
        time.sleep(fault.seconds + 0.2)
    return server.log()


def assert_all_steps_sound(result: deepstep.RunResult) -> None:
    for step in step_tree.steps(result.tree):
        assert step["status"] == "done", step["error"]
        assert step["answer"].strip() and REFUSAL not in step["answer"]
        for node in step["mcts"]["nodes"]:
            assert node["answer"].strip() and REFUSAL not in node["answer"], node
            assert all(REWARD_MIN <= r <= SUPPRESS_ABOVE for r in node["rewards"])


# (fault, extra settings, what must have happened)
TRANSIENT = [
    pytest.param(Fault("http500", task="question", times=1), {}, {"question": {"retries": 1}}, id="http500"),
    pytest.param(Fault("http429", task="answer", times=1, retry_after=0.3), {"max_retries": 1}, {"answer": {"retries": 0}}, id="http429-retry-after"),
    pytest.param(Fault("timeout", task="critique", times=1, seconds=2), {"timeout": 0.5}, {"critique": {"retries": 1}}, id="read-timeout"),
    pytest.param(Fault("drop_connection", task="evaluate", times=1), {}, {"evaluate": {"retries": 1}}, id="dropped-connection"),
    pytest.param(Fault("malformed_json", task="refine", times=1), {}, {"refine": {"repairs": 1, "fallbacks": 0}}, id="malformed-json"),
    pytest.param(Fault("truncated_json", task="evaluate", times=1), {}, {"evaluate": {"repairs": 1, "fallbacks": 0}}, id="truncated-json"),
    pytest.param(Fault("empty", task="answer", times=1), {}, {"answer": {"retries": 1}}, id="empty-text-reply"),
    pytest.param(Fault("empty", task="refine", times=1), {}, {"refine": {"repairs": 1}}, id="empty-structured-reply"),
    pytest.param(Fault("refusal", task="answer", times=1), {}, {"answer": {"retries": 1}}, id="refusal-answer"),
    pytest.param(Fault("refusal", task="critique", times=1), {}, {"critique": {"retries": 1}}, id="refusal-critique"),
    pytest.param(Fault("refusal", task="refine", times=1), {}, {"refine": {"repairs": 1, "fallbacks": 0}}, id="refusal-refine"),
    pytest.param(Fault("bad_score", task="evaluate", times=2), {}, {"evaluate": {"repairs": 2, "fallbacks": 0}}, id="bad-score"),
]


@pytest.mark.parametrize(("fault", "overrides", "expected"), TRANSIENT)
def test_a_fault_that_happens_once_is_retried_or_repaired(fake_llm, tmp_path, fault, overrides, expected):
    settings = settings_for(fake_llm.base_url, tmp_path / "home", **overrides)
    fake_llm.set_faults([fault])
    started = time.perf_counter()
    result = deepstep.run(QUESTION, thread_id="t", settings=settings)
    elapsed = time.perf_counter() - started

    log = settled_log(fake_llm, fault)
    assert fired(log, fault.kind) == (fault.times or 1)
    assert_all_steps_sound(result)
    assert result.failed_steps == [] and result.status == "done"
    for role, counters in expected.items():
        for name, value in counters.items():
            assert result.usage[role][name] == value, (role, name, result.usage[role])
    # Every regular call was answered once, and nothing else was asked beyond the retries/repairs.
    answered = Counter(e["task"] for e in log if e["status"] == 200 and e["fault"] is None)
    assert answered["question"] == STEPS and answered["answer"] == STEPS
    if fault.kind == "http429":
        assert [e["status"] for e in log if e["task"] == "answer"].count(429) == 1
        assert elapsed >= fault.retry_after  # the client waited as Retry-After asked


# (fault, extra settings, words the step's error must contain)
PERSISTENT = [
    pytest.param(Fault("http500", task="critique", match=DOOMED), {}, "HTTP 500", id="http500"),
    pytest.param(Fault("http429", task="question", match=DOOMED, retry_after=0), {}, "HTTP 429", id="http429"),
    pytest.param(Fault("timeout", task="answer", match=DOOMED, seconds=1.5), {"timeout": 0.4}, "timed out", id="read-timeout"),
    pytest.param(Fault("drop_connection", task="evaluate", match=DOOMED), {}, "cannot reach the model server", id="dropped-connection"),
    pytest.param(Fault("empty", task="question", match=DOOMED), {}, "empty reply", id="empty"),
    pytest.param(Fault("refusal", task="answer", match=DOOMED), {}, "refused", id="refusal"),
]


@pytest.mark.parametrize(("fault", "overrides", "reason"), PERSISTENT)
def test_a_fault_that_never_stops_fails_only_its_step_and_resume_retries_it(fake_llm, tmp_path, fault, overrides, reason):
    settings = settings_for(fake_llm.base_url, tmp_path / "home", **overrides)
    fake_llm.set_faults([fault])
    result = deepstep.run(QUESTION, thread_id="t", settings=settings)

    assert [f["name"].startswith(DOOMED) for f in result.failed_steps] == [True]
    error = result.failed_steps[0]["error"]
    assert reason in error and "2 attempt" in error, error
    assert "Traceback" not in error and len(error) < 400
    assert Counter(s["status"] for s in step_tree.steps(result.tree)) == Counter(done=STEPS - 1, failed=1)
    assert "Failed steps" in result.markdown and DOOMED in result.markdown and reason in result.markdown
    assert fired(settled_log(fake_llm, fault), fault.kind) == settings.step_attempts

    fake_llm.set_faults([])
    before = len(fake_llm.log())
    retried = deepstep.resume("t", settings=settings)
    assert retried.failed_steps == [] and retried.status == "done"
    assert_all_steps_sound(retried)
    assert len(fake_llm.log()) - before == calls_per_step(settings.rollouts)  # only the failed step ran again


@pytest.mark.parametrize("refine_fault", ["truncated_json", "malformed_json", "refusal", "empty"])
def test_a_structured_reply_that_never_parses_falls_back_and_is_counted(fake_llm, tmp_path, refine_fault):
    settings = settings_for(fake_llm.base_url, tmp_path / "home")
    # No `match`: the repair requests get the same fault, so every structured call ends in its fallback.
    fake_llm.set_faults([Fault(refine_fault, task="refine"), Fault("bad_score", task="evaluate")])
    result = deepstep.run(QUESTION, settings=settings)
    assert result.failed_steps == []
    assert result.usage["evaluate"]["fallbacks"] == STEPS * (1 + settings.rollouts)
    assert result.usage["refine"]["fallbacks"] == STEPS * settings.rollouts
    assert result.usage["refine"]["repairs"] == STEPS * settings.rollouts * settings.max_repairs
    assert_all_steps_sound(result)
    for step in step_tree.steps(result.tree):
        nodes = step["mcts"]["nodes"]
        assert [n["rewards"] for n in nodes] == fallback_rewards(step, QUESTION)  # the neutral score less the claim penalty
        # Nothing unusable became an answer: the refinement kept its parent's answer.
        assert all(n["answer"] == nodes[n["parent"]]["answer"] for n in nodes[1:])


def test_connection_refused_is_one_clear_error(tmp_path):
    with FakeLLMServer() as gone:
        base_url = gone.base_url  # a port that was just free; nothing listens there after the stop
    settings = settings_for(base_url, tmp_path / "home", step_attempts=1)
    with pytest.raises(deepstep.ModelServerError, match="cannot reach the model server at http://127.0.0.1"):
        deepstep.run(QUESTION, settings=settings)


def test_cli_reports_the_failed_step_and_resume_retries_only_it(fake_llm, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", fake_llm.base_url)
    monkeypatch.setenv("DEEPSTEP_CORPUS", str(CORPUS))
    monkeypatch.setenv("DEEPSTEP_ROLLOUTS", "1")
    monkeypatch.setenv("DEEPSTEP_MAX_RETRIES", "0")
    monkeypatch.setenv("DEEPSTEP_STEP_ATTEMPTS", "2")
    runner = CliRunner()
    out = tmp_path / "out"
    fake_llm.set_faults([Fault("http500", task="refine", match=DOOMED)])
    failed = runner.invoke(app, ["run", QUESTION, "--thread-id", "f", "--out", str(out)])
    assert failed.exit_code == 1, failed.output
    assert "4/5 steps done, 1 failed" in failed.output and "HTTP 500" in failed.output and "Traceback" not in failed.output
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "Failed steps" in report and DOOMED in report

    fake_llm.set_faults([])
    before = len(fake_llm.log())
    resumed = runner.invoke(app, ["resume", "f", "--out", str(out)])
    assert resumed.exit_code == 0, resumed.output
    assert "5/5 steps done, 0 failed" in resumed.output
    # The failed step's calls, and the report's opening answer synthesized again from the new step answers.
    assert len(fake_llm.log()) - before == calls_per_step(1) + 1
    assert "Failed steps" not in (out / "report.md").read_text(encoding="utf-8")


def without_ids(result: deepstep.RunResult) -> list[dict]:
    return [{k: v for k, v in step.items() if k != "id"} for step in step_tree.steps(result.tree)]


def test_a_reasoning_models_thinking_is_never_read(fake_llm, tmp_path):
    """Every reply opens with a <think> block holding a score of 100, a plan and an invented answer:
    the run comes out exactly as without the thinking, with the same calls."""
    plain = deepstep.run(QUESTION, thread_id="plain", settings=settings_for(fake_llm.base_url, tmp_path / "plain"))
    plain_calls = len(fake_llm.log())
    fake_llm.set_faults([Fault("thinking")])
    thinking = deepstep.run(QUESTION, thread_id="thinking", settings=settings_for(fake_llm.base_url, tmp_path / "thinking"))
    log = fake_llm.log()[plain_calls:]
    assert fired(log, "thinking") == len(log) == plain_calls  # no repair, no retry
    assert_all_steps_sound(thinking)
    assert without_ids(thinking) == without_ids(plain)  # step ids are new UUIDs per run
    assert "Thought step" not in thinking.markdown and "fruit" not in thinking.markdown and "<think" not in thinking.markdown
