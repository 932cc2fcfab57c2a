"""Answers you can trust, over real HTTP with the fake model server: every claim checked against the
passages it cites, the reward lowered by unsupported claims, and no answer when the corpus is silent."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

import deepstep
from deepstep import mcts, step_tree
from deepstep.citations import cited_sentences_grammar
from deepstep.testing import Fault
from deepstep.testing.fake_llm import FABRICATED
from tests.conftest import calls_by_task, with_settings

QUESTION = "What is a loss function?"
OFF_TOPIC_CORPUS = Path(__file__).parent / "data" / "offtopic_corpus"


def test_a_copied_sentence_is_supported_and_an_invented_claim_is_not(settings, fake_llm):
    fake_llm.set_faults([Fault("fabricate")])
    result = deepstep.run(QUESTION, settings=with_settings(settings, rollouts=0, max_steps=2, report_layout="seed"))
    for step in step_tree.steps(result.tree):
        copied, invented = step["claims"]
        assert copied["text"].rstrip(".") in " ".join(step["contexts"][0]["text"].split())  # copied from passage [1]
        assert (copied["verdict"], copied["support"], copied["citations"]) == ("supported", 1.0, [1])
        assert invented["text"] == FABRICATED.replace(" [1]", "") and invented["citations"] == [1]
        assert invented["verdict"] == "unsupported"
        assert step["confidence"]["supported_share"] == 0.5 and step["confidence"]["level"] == "medium"
    table = result.table()
    assert list(table.columns[-2:]) == ["confidence", "unsupported_claims"]  # after the seed's columns
    assert list(table["confidence"]) == ["medium", "medium"] and list(table["unsupported_claims"]) == [1, 1]


def test_the_claim_penalty_changes_which_answer_mctsr_keeps(settings, fake_llm):
    """The critic scores the draft with the invented claim 60 and its refinement without it 50: by the
    critic alone the draft would be kept; less 50 x its unsupported share (1 of 2 claims) it scores 35."""
    fake_llm.set_faults([Fault("fabricate")])
    result = deepstep.run(QUESTION, settings=with_settings(settings, rollouts=1, max_steps=1, report_layout="seed"))
    (step,) = step_tree.steps(result.tree)
    draft, refinement = step["mcts"]["nodes"]
    assert FABRICATED in draft["answer"] and FABRICATED not in refinement["answer"]
    assert draft["rewards"] == [mcts.claim_adjusted_score(60, 0.5)] == [35.0]
    assert refinement["rewards"] == [50.0]
    assert step["mcts"]["best"] == refinement["id"] and step["answer"] == refinement["answer"]
    assert [c["verdict"] for c in step["claims"]] == ["supported"]
    evaluations = [entry for entry in fake_llm.log() if entry["task"] == "evaluate"]
    assert len(evaluations) == 2  # the claim check itself makes no model call


def test_drop_removes_unsupported_sentences_and_counts_them(settings, fake_llm):
    fake_llm.set_faults([Fault("fabricate")])
    result = deepstep.run(QUESTION, settings=with_settings(settings, rollouts=0, max_steps=1, unsupported_claims="drop", report_layout="seed"))
    (step,) = step_tree.steps(result.tree)
    assert FABRICATED not in step["answer"] and step["dropped_claims"] == 1
    assert [c["verdict"] for c in step["claims"]] == ["supported"]


@pytest.mark.parametrize("layout", ["seed", "answer_first"])
def test_an_off_topic_corpus_answers_no_step(settings, fake_llm, layout):
    result = deepstep.run(QUESTION, corpus=OFF_TOPIC_CORPUS, settings=with_settings(settings, report_layout=layout))
    steps = step_tree.steps(result.tree)
    assert [s["status"] for s in steps] == ["insufficient_evidence"] * 5
    assert all(s["answer"] == "" and s["contexts"] and not s["evidence"]["answerable"] for s in steps)
    # Planning, one research question per step and its max_searches (2) follow-up queries; no answer, critique,
    # refine or evaluate call.
    assert calls_by_task(fake_llm) == Counter(outline=1, steps=1, question=5, search=10)
    assert all([s["reason"] for s in step["searches"]] == ["gate", "gate"] for step in steps)
    assert result.failed_steps == [] and result.status == "done"
    if layout == "answer_first":
        assert "_5 steps: 0 answered, 5 not covered by the corpus._" in result.markdown
        assert result.markdown.count("The corpus does not cover this. Closest passages:") == 5


def test_an_on_topic_corpus_answers_every_step(settings, fake_llm):
    result = deepstep.run(QUESTION, settings=with_settings(settings, rollouts=0, report_layout="seed"))
    assert [s["status"] for s in step_tree.steps(result.tree)] == ["done"] * 5


# --- the model verifier (verify = model) ---


@pytest.mark.parametrize("verify", ["off", "model"])
def test_the_verifier_makes_one_call_per_answer_and_refinement(settings, fake_llm, verify):
    result = deepstep.run(QUESTION, settings=with_settings(settings, rollouts=1, max_steps=2, verify=verify))
    calls = calls_by_task(fake_llm)
    # Per step: question, answer, evaluate, then per rollout critique, refine, evaluate (3 + 3R); the verifier
    # adds one call after the answer and one after each refinement (4 + 4R).
    verify_calls = 4 if verify == "model" else 0
    assert calls == Counter(outline=1, steps=1, question=2, answer=2, evaluate=4, critique=2, refine=2, verify=verify_calls) - Counter()
    assert result.usage.get("verify", {}).get("calls", 0) == verify_calls
    assert all(s["status"] == "done" and s["claims"] for s in step_tree.steps(result.tree))


def test_a_verdict_the_verifier_overturns_is_the_one_the_run_keeps(settings, fake_llm):
    """The answer copies a sentence of passage [1] (lexically supported) and invents one (unsupported); the
    verifier turns the copied sentence's verdict around. The step keeps the verifier's verdict, and the critic's
    60 loses 50 x the share of claims unsupported after verification (2 of 2), not the lexical 1 of 2."""
    fake_llm.set_faults([Fault("overturn", task="verify"), Fault("fabricate")])
    result = deepstep.run(QUESTION, settings=with_settings(settings, rollouts=0, max_steps=1, verify="model"))
    (step,) = step_tree.steps(result.tree)
    copied, invented = step["claims"]
    assert (copied["verdict"], copied["support"], copied["lexical_verdict"]) == ("unsupported", 0.3999, "supported")
    assert invented["verdict"] == "unsupported" and "lexical_verdict" not in invented
    assert step["mcts"]["nodes"][0]["rewards"] == [mcts.claim_adjusted_score(60, 1.0)] == [10.0]
    assert step["confidence"]["supported_share"] == 0.0 and step["confidence"]["level"] == "low"
    assert calls_by_task(fake_llm)["verify"] == 1


def test_an_unparsable_verdict_keeps_the_lexical_ones(settings, fake_llm):
    fake_llm.set_faults([Fault("malformed_json", task="verify")])
    lexical = deepstep.run(QUESTION, thread_id="lexical", settings=with_settings(settings, rollouts=0, max_steps=2))
    verified = deepstep.run(QUESTION, thread_id="verified", settings=with_settings(settings, rollouts=0, max_steps=2, verify="model"))
    assert [s["claims"] for s in step_tree.steps(verified.tree)] == [s["claims"] for s in step_tree.steps(lexical.tree)]
    # Each answer's verification: the call and its two repairs, then the fallback.
    assert verified.usage["verify"]["calls"] == 6 and verified.usage["verify"]["repairs"] == 4
    assert verified.usage["verify"]["fallbacks"] == 2


def test_drop_keeps_what_the_verifier_backs_with_its_verdict(settings, fake_llm):
    """The fake's draft opens with a sentence citing nothing (lexically unsupported) that the verifier turns to
    supported. ``drop`` removes the other, unsupported sentences; what is left is checked again and the sentence
    keeps the verifier's verdict."""
    fake_llm.set_faults([Fault("overturn", task="verify")])
    result = deepstep.run(QUESTION, settings=with_settings(settings, rollouts=0, max_steps=1, verify="model", unsupported_claims="drop"))
    (step,) = step_tree.steps(result.tree)
    (kept,) = step["claims"]
    assert step["answer"] == kept["text"] and kept["citations"] == [] and step["dropped_claims"] >= 1
    assert (kept["verdict"], kept["support"], kept["lexical_verdict"]) == ("supported", 0.7, "unsupported")


def test_drop_removes_the_opening_answers_unsupported_sentences_and_counts_them(settings, fake_llm):
    """The fake's opening answer ends with "Together they answer the question.", which cites nothing: marked by
    default, removed and counted with drop, like a step's unsupported sentence."""
    answer_first = with_settings(settings, rollouts=0, max_steps=1, report_layout="answer_first")
    marked = deepstep.run(QUESTION, settings=answer_first)
    root = marked.tree.nodes[step_tree.ROOT_ID]
    assert "Together they answer the question." in [c["text"] for c in root["claims"] if c["verdict"] == "unsupported"]
    assert root["dropped_claims"] == 0 and "Together they answer the question. [unsupported]" in marked.markdown
    dropped = deepstep.run(QUESTION, settings=with_settings(answer_first, unsupported_claims="drop"))
    root = dropped.tree.nodes[step_tree.ROOT_ID]
    assert "Together they answer the question." not in root["answer"] and "Together" not in dropped.markdown
    assert root["dropped_claims"] >= 1 and all(c["verdict"] != "unsupported" for c in root["claims"])
    (step,) = step_tree.steps(dropped.tree)
    total = root["dropped_claims"] + step["dropped_claims"]
    assert "[unsupported]" not in dropped.markdown and f" _{total} claim{'s' * (total != 1)} dropped: " in dropped.markdown


def test_the_plan_schema_and_the_citation_grammar_reach_a_llama_cpp_server(settings, fake_llm):
    """The plan is asked for with the run's limits (3 to max_steps steps); with cited_sentences a llama.cpp
    server gets a grammar for every first answer and the opening answer, and no other server ever gets one."""
    llama = with_settings(settings, llama_cpp=True, cited_sentences=True, rollouts=1, max_steps=4, report_layout="answer_first")
    result = deepstep.run(QUESTION, settings=llama)
    log = fake_llm.log()
    (plan,) = [entry for entry in log if entry["task"] == "steps"]
    assert plan["format"] == "json_object" and plan["schema"]["properties"]["steps"]["minItems"] == 3
    assert plan["schema"]["properties"]["steps"]["maxItems"] == 4
    constrained = [entry for entry in log if entry["grammar"] is not None]
    assert {entry["task"] for entry in constrained} == {"answer", "synthesize"} and len(constrained) == 4 + 1
    answers = sorted(entry["grammar"] for entry in constrained if entry["task"] == "answer")
    assert answers == sorted(cited_sentences_grammar(len(step["contexts"])) for step in step_tree.steps(result.tree))
    for other in (with_settings(llama, llama_cpp=False), with_settings(llama, cited_sentences=None)):
        fake_llm.reset_log()
        deepstep.run(QUESTION, settings=other)
        assert all(entry["grammar"] is None for entry in fake_llm.log())
        (plan,) = [entry for entry in fake_llm.log() if entry["task"] == "steps"]
        assert plan["schema"]["properties"]["steps"]["minItems"] == 3  # a json_schema server gets the limits too
