"""Prompts fit small context windows (token estimates, caps, context budgets) and treat retrieved contexts as data."""

from langchain_core.prompts import ChatPromptTemplate

from deepstep import prompts


def test_token_estimate_counts_words_and_cjk():
    assert prompts.approx_tokens("a loss function") == 4
    assert prompts.approx_tokens("什么是损失函数") == 7


def test_cap_text_cuts_and_reports():
    text = " ".join(f"word{i}" for i in range(100))
    capped, cut = prompts.cap_text(text, 20)
    assert cut and prompts.approx_tokens(capped) <= 21 and capped.endswith("...")
    assert prompts.cap_text("short text", 20) == ("short text", False)


def test_fit_contexts_shares_the_budget_and_counts_cuts():
    contexts = [{"ref_id": "a", "text": "x " * 500}, {"ref_id": "b", "text": "tiny"}]
    fitted, cut = prompts.fit_contexts(contexts, 200)
    assert cut == 1 and fitted[1]["text"] == "tiny"
    assert prompts.approx_tokens(fitted[0]["text"]) <= 101
    assert contexts[0]["text"] == "x " * 500  # inputs untouched
    text = prompts.format_contexts(fitted)
    assert text.startswith("[1] ") and "\n[2] " in text


def _templates_showing_contexts() -> dict[str, ChatPromptTemplate]:
    templates = {name: value for name, value in vars(prompts).items() if isinstance(value, ChatPromptTemplate)}
    return {name: template for name, template in templates.items() if "contexts" in template.input_variables}


def test_every_prompt_showing_contexts_says_they_are_data_not_instructions():
    showing = _templates_showing_contexts()
    assert {"ANSWER", "CRITIQUE", "REFINE", "EVALUATE"} <= showing.keys()  # the scan finds the prompts it must check
    for name, template in showing.items():
        messages = template.format_messages(**{variable: f"<{variable}>" for variable in template.input_variables})
        system = [message.content for message in messages if message.type == "system"]
        # In the system message, which no retrieved text can impersonate.
        assert system and prompts.CONTEXTS_ARE_DATA in system[0], f"prompts.{name} shows contexts without prompts.CONTEXTS_ARE_DATA"
