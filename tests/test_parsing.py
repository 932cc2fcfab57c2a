"""Tolerant parsing of structured replies, and the json_schema -> json_object -> prompt fallback."""

import json
import re

import pytest

from deepstep.citations import cited_numbers, remove_invalid_citations
from deepstep.parsing import (
    ClaimVerdict,
    ClaimVerdicts,
    RefineResponse,
    ReplyParseError,
    Score,
    StepList,
    extract_json,
    parse_reply,
    parse_score,
    step_list_schema,
    without_thinking,
)


@pytest.mark.parametrize(
    "text",
    [
        '{"thought": "t", "answer": "a"}',
        'Sure! ```json\n{"thought": "t", "answer": "a"}\n``` Hope this helps.',
        "Here: {'thought': 't', 'answer': 'a'} done",
        '{"thought": "t", "answer": "a",}',
        '```\n{"thought": "t", "answer": "a"}\n```',
        '{"thought": "t", "refined_answer": "a"}',
    ],
)
def test_refine_response_recovered(text):
    assert parse_reply(text, RefineResponse) == RefineResponse(thought="t", answer="a")


@pytest.mark.parametrize(
    ("text", "score"),
    [('{"score": 85}', 85), ("Score: 85/100", 85), ("85", 85), ('{"score": "72"}', 72), ("I give it -20.", -20), ('{"score": 61.6}', 62)],
)
def test_scores_recovered(text, score):
    assert parse_score(text) == Score(score=score)


@pytest.mark.parametrize("text", ["", "excellent answer", '{"score": 250}', "Score: 101"])
def test_bad_scores_raise(text):
    with pytest.raises(ReplyParseError):
        parse_score(text)


def test_step_list_accepts_bare_list_and_numeric_levels():
    parsed = parse_reply('[{"name": "a", "description": "d", "level": 0}]', StepList)
    assert parsed.steps[0].level == "0"


@pytest.mark.parametrize("text", ['{"thought": "x", "answer": ', "I'm sorry, but I can't help with that.", '{"steps": []}'])
def test_unrecoverable_replies_raise_with_a_reason(text):
    with pytest.raises(ReplyParseError) as info:
        parse_reply(text, StepList if "steps" in text else RefineResponse)
    assert str(info.value)


def test_extract_json_ignores_braces_in_strings():
    assert extract_json('note {"a": "}{"} tail') == {"a": "}{"}


def test_citations_outside_contexts_are_removed_and_counted():
    text, removed = remove_invalid_citations("Loss [1] and risk [2] but not [7] or [0].", 2)
    assert text == "Loss [1] and risk [2] but not or." and removed == 2
    assert cited_numbers("a [2] b [1] c [2]") == [2, 1]


def test_which_errors_are_retried():
    import httpx
    import openai

    from deepstep.errors import StructuredOutputError
    from deepstep.models import is_transient

    def status_error(code):
        response = httpx.Response(code, request=httpx.Request("POST", "http://127.0.0.1/v1/chat/completions"))
        return openai.APIStatusError("x", response=response, body=None)

    assert all(is_transient(status_error(code)) for code in (408, 429, 500, 503))
    assert not any(is_transient(status_error(code)) for code in (400, 401, 403, 404, 422))
    assert is_transient(openai.APIConnectionError(request=httpx.Request("POST", "http://127.0.0.1")))
    assert is_transient(StructuredOutputError("unparsable"))
    assert not is_transient(ValueError("a bug"))


def test_reply_cut_off_by_max_tokens_is_closed():
    assert parse_reply('{"thought": "t", "answer": "A loss function measures', RefineResponse).answer == "A loss function measures"
    assert parse_reply('{"steps": [{"name": "a", "description": "d", "level": "0"}', StepList).steps[0].name == "a"
    with pytest.raises(ReplyParseError):
        parse_reply('{"score": 4', Score)  # 4, or 40 cut off? ask again


@pytest.mark.parametrize(
    ("reply", "kept"),
    [
        ('<think>Score: 100, {"score": 100}</think>\n{"score": 40}', '{"score": 40}'),
        ("<THINKING>plan</THINKING>The answer [1].", "The answer [1]."),
        ("Before. <think>a</think> Middle. <think>b</think> After.", "Before.  Middle.  After."),
        ('<think>I would give {"score": 100}', ""),  # cut off while thinking: nothing usable
        ('thought opened by the chat template</think>{"score": 12}', '{"score": 12}'),
        ("No thinking at all.", "No thinking at all."),
    ],
)
def test_thinking_is_never_read(reply, kept):
    assert without_thinking(reply) == kept


def test_a_score_inside_thinking_is_not_the_score():
    assert parse_score(without_thinking('<think>{"score": 100}</think>Score: 35')).score == 35


def test_a_refinement_without_words_is_a_parse_error():
    with pytest.raises(ReplyParseError):
        parse_reply('{"thought": "t", "answer": "{"}', RefineResponse)
    assert parse_reply('{"thought": "t", "answer": "MSE [1]."}', RefineResponse).answer == "MSE [1]."


@pytest.mark.parametrize(
    "text",
    [
        '{"verdicts": [{"claim": 1, "verdict": "supported"}, {"claim": 2, "verdict": "unsupported"}]}',
        '[{"claim": "1", "verdict": "Supported"}, {"claim": "Claim 2", "verdict": "not supported."}]',  # a bare list, words
        'Verdicts: ```json\n{"claims": [{"claim": "[1]", "verdict": "fully supported"}, {"claim": 2, "verdict": "Contradicted"}]}\n```',
    ],
)
def test_claim_verdicts_recovered(text):
    expected = [ClaimVerdict(claim=1, verdict="supported"), ClaimVerdict(claim=2, verdict="unsupported")]
    assert parse_reply(text, ClaimVerdicts).verdicts == expected


def test_a_verdict_of_no_known_kind_is_a_parse_error():
    assert parse_reply('[{"claim": 1, "verdict": "Partially supported"}]', ClaimVerdicts).verdicts[0].verdict == "partial"
    with pytest.raises(ReplyParseError, match="verdict"):
        parse_reply('{"verdicts": [{"claim": 1, "verdict": "maybe"}]}', ClaimVerdicts)
    with pytest.raises(ReplyParseError, match="claim"):
        parse_reply('{"verdicts": [{"claim": "the first", "verdict": "supported"}]}', ClaimVerdicts)


def test_the_plan_schema_carries_the_runs_limits():
    schema = step_list_schema(max_steps=8, max_depth=2)
    steps = schema["properties"]["steps"]
    assert (steps["minItems"], steps["maxItems"]) == (3, 8)
    assert step_list_schema(max_steps=2, max_depth=2)["properties"]["steps"]["minItems"] == 2  # never more than max_steps
    item = schema["$defs"]["StepItem"]["properties"]
    assert (item["name"]["maxLength"], item["description"]["maxLength"]) == (80, 240)
    level = re.compile(item["level"]["pattern"])
    assert [bool(level.match(text)) for text in ("0", "12>3", "0>1>2", "a", "0>", "1>x")] == [True, True, False, False, False, False]
    assert len(parse_reply('{"steps": [{"name": "Only one", "level": "0"}]}', StepList).steps) == 1  # the validator is unchanged


def test_llama_cpp_can_parse_the_plan_schema_and_the_citation_grammar():
    """llama.cpp's server crashes (SIGSEGV) on a grammar it cannot parse, so every grammar deepstep sends
    is parsed here by the same library."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    from deepstep.citations import cited_sentences_grammar
    from deepstep.errors import ConfigError
    from deepstep.llm_server import gguf_path

    try:
        model_path = gguf_path()
    except ConfigError:  # the embedded model is an optional extra
        pytest.skip("the embedded model is not installed")
    vocabulary = llama_cpp.Llama(str(model_path), vocab_only=True, verbose=False)

    def parses(grammar: str) -> bool:
        sampler = llama_cpp.llama_sampler_init_grammar(vocabulary._model.vocab, grammar.encode(), b"root")
        if sampler:
            llama_cpp.llama_sampler_free(sampler)
        return bool(sampler)

    assert not parses("root ::= [^\\s]")  # the check can fail: llama.cpp knows no \s
    for max_steps, max_depth in ((1, 1), (8, 3), (40, 6)):
        assert parses(json_schema_to_gbnf(json.dumps(step_list_schema(max_steps, max_depth))))
    for passages in (1, 4, 12):
        assert parses(cited_sentences_grammar(passages))
