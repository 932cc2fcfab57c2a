"""Settings: environment, overrides, RunnableConfig, and readable validation errors."""

import pytest

from deepstep.configuration import Settings
from deepstep.errors import ConfigError


def test_environment_and_overrides(monkeypatch):
    monkeypatch.setenv("DEEPSTEP_ROLLOUTS", "1")
    monkeypatch.setenv("DEEPSTEP_MAX_STEPS", "3")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:1/v1")
    settings = Settings.build(max_steps=4)
    assert (settings.rollouts, settings.max_steps, settings.base_url) == (1, 4, "http://127.0.0.1:1/v1")
    resolved = Settings.for_run({"configurable": {"thread_id": "t", "rollouts": 3, "unknown": 1}})
    assert resolved.rollouts == 3 and resolved.max_steps == 3


def test_roles_resolve_with_overrides():
    settings = Settings.build(base_url="http://a/v1", model="big", roles={"evaluate": {"model": "small", "base_url": "http://b/v1"}})
    assert settings.resolve_model("answer").model == "big"
    evaluate = settings.resolve_model("evaluate")
    assert (evaluate.model, evaluate.base_url, evaluate.temperature) == ("small", "http://b/v1", 0.0)


def test_the_claim_verifier_is_a_role_of_its_own():
    settings = Settings.build(base_url="http://a/v1", model="big", temperature=0.7, roles={"verify": {"model": "judge"}})
    assert settings.verify == "off"  # opt-in: the default run makes the calls it always made
    verify = settings.resolve_model("verify")
    assert (verify.model, verify.temperature) == ("judge", 0.0)  # a judge, like the critic: evaluate_temperature
    assert settings.resolve_model("answer").model == "big"
    with pytest.raises(ConfigError, match="verify"):
        Settings.build(verify="always")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"rollouts": -1}, "rollouts: Input should be greater than or equal to 0"),
        ({"exploration_c": -0.5}, "exploration_c"),
        ({"roles": {"writer": {"model": "x"}}}, "unknown model role(s) writer"),
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"structured_output": "xml"}, "structured_output"),
    ],
)
def test_invalid_settings_give_one_readable_error(overrides, message):
    with pytest.raises(ConfigError) as info:
        Settings.build(**overrides)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_no_server_configured_says_what_to_do():
    with pytest.raises(ConfigError, match="set OPENAI_BASE_URL"):
        Settings.build().resolve_model("answer")


def test_settings_hold_no_secrets(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-marker-123")
    assert "sk-marker-123" not in str(Settings.build(base_url="http://x/v1").run_settings())


def test_cost_estimate_from_the_price_table():
    usage = {"answer": {"calls": 2, "prompt_tokens": 1_000_000, "completion_tokens": 500_000}, "evaluate": {"calls": 0}}
    priced = Settings.build(model="m", prices={"m": {"prompt": 0.5, "completion": 2.0}})
    assert priced.estimate_cost(usage) == pytest.approx(0.5 + 1.0)
    assert Settings.build(model="unpriced").estimate_cost(usage) is None
