"""The claim check and the evidence gate (deepstep.claims): splitting, content terms, verdicts, the gate,
and precision/recall of ``unsupported`` on a hand-labelled set of scikit-learn guide passages."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from deepstep.bm25_index import BM25Index, passage_context
from deepstep.claims import apply_verdicts, carry_verdicts, check_answer, check_claim, content_terms, evidence_gate, split_claims
from deepstep.records import Claim, Context, Verdict

DATA = Path(__file__).parent / "data"
LABELLED_SET = DATA / "claims_sklearn.jsonl"

GRADIENT_DESCENT = (
    "Gradient descent minimizes a loss function by moving the parameters against the gradient. "
    "The size of each step is set by the learning rate. A learning rate of 0.01 is common."
)


def context(text: str, title: str = "") -> Context:
    return {"ref_id": "r", "chunk_id": f"c{hash(text)}", "score": 1.0, "text": text, "title": title, "source": "s.md"}


# --- splitting ---


def without_spans(claims: list) -> list[dict]:
    return [{k: v for k, v in claim.items() if k not in ("start", "end")} for claim in claims]


def test_each_claim_knows_its_sentence_in_the_answer() -> None:
    answer = "# Losses\n\n> MSE [1] and MAE [2] are\n> regression losses. They measure errors.\n[3]\n\n- 损失函数衡量差距。[1]它有用吗？\n"
    spans = [answer[claim["start"] : claim["end"]] for claim in split_claims(answer)]
    assert spans == ["MSE [1] and MAE [2] are\n> regression losses.", "They measure errors.\n[3]", "损失函数衡量差距。[1]", "它有用吗？"]


def texts(answer: str) -> list[str]:
    return [claim["text"] for claim in split_claims(answer)]


def test_sentences_keep_abbreviations_decimals_and_versions_whole() -> None:
    answer = (
        "Common losses (e.g. squared error) suit regression, i.e. real targets. "
        "A rate of 3.14 or 1e-3 works in version 1.2.3 of the U.S. edition. "
        "Dr. Smith compared Fig. 2 vs. Fig. 3, etc. and more. "
        "J. Smith agreed!"
    )
    assert texts(answer) == [
        "Common losses (e.g. squared error) suit regression, i.e. real targets.",
        "A rate of 3.14 or 1e-3 works in version 1.2.3 of the U.S. edition.",
        "Dr. Smith compared Fig. 2 vs. Fig. 3, etc. and more.",
        "J. Smith agreed!",
    ]


def test_etc_and_us_end_a_sentence_before_a_capital() -> None:
    assert texts("Use MSE, MAE, etc. Then compare them.") == ["Use MSE, MAE, etc.", "Then compare them."]
    assert texts("It was made in the U.S. It sells well.") == ["It was made in the U.S.", "It sells well."]


def test_citations_mid_sentence_and_after_the_stop_belong_to_their_sentence() -> None:
    answer = "MSE [1] and MAE [2] are regression losses. They measure errors. [3] Cross-entropy [1][4] suits classification [2, 5]."
    assert without_spans(split_claims(answer)) == [
        {"text": "MSE and MAE are regression losses.", "citations": [1, 2]},
        {"text": "They measure errors.", "citations": [3]},
        {"text": "Cross-entropy suits classification.", "citations": [1, 4, 2, 5]},
    ]


def test_markdown_headings_bullets_and_empty_lines() -> None:
    answer = """# Loss functions

Regression uses squared error [1].

- Ridge adds an L2 penalty [2].
* Lasso adds an L1 penalty
  and selects features [3].
1. Scale the features first.

Summary
=======
A lone line of citations goes to the sentence before.
[4]
"""
    assert without_spans(split_claims(answer)) == [
        {"text": "Regression uses squared error.", "citations": [1]},
        {"text": "Ridge adds an L2 penalty.", "citations": [2]},
        {"text": "Lasso adds an L1 penalty and selects features.", "citations": [3]},
        {"text": "Scale the features first.", "citations": []},
        {"text": "A lone line of citations goes to the sentence before.", "citations": [4]},
    ]


def test_code_is_no_sentence_end_and_no_citation() -> None:
    answer = "Read `coef_[0]. Then` after fitting [1].\n\n```python\nmodel.fit(X, y). Done [2]\n```\nIt works [3]."
    assert without_spans(split_claims(answer)) == [
        {"text": "Read `coef_[0]. Then` after fitting.", "citations": [1]},
        {"text": "It works.", "citations": [3]},
    ]


def test_chinese_sentences_end_at_cjk_stops() -> None:
    answer = "损失函数衡量预测值与真实值之间的差距。[1]回归问题常用均方误差；分类问题常用交叉熵[2]！它有用吗？"
    assert without_spans(split_claims(answer)) == [
        {"text": "损失函数衡量预测值与真实值之间的差距。", "citations": [1]},
        {"text": "回归问题常用均方误差；", "citations": []},
        {"text": "分类问题常用交叉熵！", "citations": [2]},
        {"text": "它有用吗？", "citations": []},
    ]


def test_an_empty_answer_has_no_claims() -> None:
    assert split_claims("") == []
    assert split_claims("\n\n# Only a heading\n\n") == []


# --- content terms ---


def test_words_are_lowercased_stemmed_without_stop_words() -> None:
    assert content_terms("The learning rates are minimized by the optimizers.") == {
        "learn": "word",
        "rate": "word",
        "minim": "word",
        "optim": "word",
    }


def test_numbers_are_normalized() -> None:
    same = [("0.5", ".5"), ("1,000", "1000"), ("1e-3", "0.001"), ("50%", "50 percent"), ("2.50", "2.5"), ("１２", "12")]
    for left, right in same:
        assert content_terms(f"rate {left}") == content_terms(f"rate {right}"), (left, right)
    assert content_terms("version 1.2.3 and n_jobs=-1")["1.2.3"] == "number"
    assert content_terms("n_jobs=-1")["-1"] == "number"
    assert content_terms("值为0.5")["0.5"] == "number"  # CJK may touch a number


def test_named_terms() -> None:
    terms = content_terms("Ridge and GridSearchCV use log_loss, MSE and Lasso with l1.")
    names = {"gridsearchcv": "identifier", "log_loss": "identifier", "mse": "name", "lasso": "name", "l1": "name"}
    assert terms == {"ridg": "word", "use": "word", **names}
    # Capitalized at the start of a sentence is a plain word, elsewhere a name.
    assert content_terms("Lasso. Then Ridge")["ridge"] == "name"


def test_cjk_characters_and_bigrams() -> None:
    # 的 is a stop character alone, not inside a bigram.
    assert content_terms("损失的函数") == dict.fromkeys(["损", "失", "函", "数", "损失", "失的", "的函", "函数"], "cjk")


# --- the check ---


def test_a_sentence_copied_from_its_passage_is_supported() -> None:
    copied = GRADIENT_DESCENT.split(". ")[0] + "."
    assert check_claim(copied, [context(GRADIENT_DESCENT)], "") == ("supported", 1.0)


def test_a_claim_sharing_no_content_term_is_unsupported() -> None:
    assert check_claim("Volcanoes erupt molten rock.", [context(GRADIENT_DESCENT)], "") == ("unsupported", 0.0)


def test_support_weighs_named_terms_and_numbers_double() -> None:
    # gradient, descent, minim, loss found (4 x 1); Adam, a name, missing (2): 4/6.
    assert check_claim("Gradient descent minimizes the loss with Adam.", [context(GRADIENT_DESCENT)], "") == ("partial", 0.6667)
    # learn, rate, common found (3); the number 0.1 missing (2): 3/5, and a missing number makes it unsupported.
    assert check_claim("A learning rate of 0.1 is common.", [context(GRADIENT_DESCENT)], "") == ("unsupported", 0.6)
    # .01 is the passage's 0.01: gradient, descent, learn, rate, each, step (6) and 0.01 (2) found; "use" missing: 8/9.
    assert check_claim("Gradient descent uses a learning rate of .01 for each step.", [context(GRADIENT_DESCENT)], "") == ("supported", 0.8889)


def test_an_identifier_missing_from_the_passages_makes_the_claim_unsupported() -> None:
    # set, learn, rate, gradient, descent found (5); SGDRegressor, an identifier, missing (2): 5/7 would be supported.
    assert check_claim("SGDRegressor sets the learning rate of gradient descent.", [context(GRADIENT_DESCENT)], "") == ("unsupported", 0.7143)


def test_verdict_thresholds() -> None:
    passage = [context("Magma that reaches the surface is called lava.")]
    assert check_claim("Lava is magma that reaches the surface.", passage, "") == ("supported", 1.0)
    # lava, magma, reach, surfac found; Mars (a name, 2) missing: 4/6 -> partial (0.4 <= support < 0.7).
    assert check_claim("Lava is magma that reaches the surface of Mars.", passage, "") == ("partial", 0.6667)
    # magma, lava found; cool, slowli, form, basalt missing: 2/6 -> unsupported.
    assert check_claim("Magma cools slowly to form basalt, not lava.", passage, "") == ("unsupported", 0.3333)


def test_support_counts_every_cited_passage_and_titles() -> None:
    passages = [context("Plants convert sunlight into glucose.", title="Photosynthesis"), context("Leaves look green.")]
    # photosynthesi (the first passage's title), glucos (the first), green, leav (the second) found; make missing: 4/5.
    assert check_claim("Photosynthesis makes glucose in green leaves.", passages, "") == ("supported", 0.8)
    assert check_claim("Photosynthesis makes glucose in green leaves.", passages[1:], "") == ("partial", 0.4)


def test_an_uncited_claim_is_unsupported_unless_it_restates_the_question() -> None:
    question = "What learning rate makes gradient descent diverge?"
    assert check_claim("Gradient descent can diverge with a learning rate.", [], question) == ("supported", 1.0)
    assert check_claim("Gradient descent diverges with a large learning rate.", [], question) == ("unsupported", 0.0)


def test_a_claim_without_content_terms_is_not_flagged() -> None:
    assert check_claim("That is it.", [], "Why?") == ("supported", 1.0)  # stop words only
    assert check_claim("Yes, it is.", [], "Why?") == ("unsupported", 0.0)


def test_check_answer_drops_citations_of_no_passage() -> None:
    answer = (
        "Gradient descent minimizes a loss function by moving the parameters against the gradient [1]. "
        "Gradient descent was invented in 1990 by Adam [1]. Volcanoes erupt lava [3]."
    )
    assert without_spans(check_answer(answer, [context(GRADIENT_DESCENT)], "What is gradient descent?")) == [
        {
            "text": "Gradient descent minimizes a loss function by moving the parameters against the gradient.",
            "citations": [1],
            "verdict": "supported",
            "support": 1.0,
        },
        # gradient, descent found (2); invent (1), 1990 (2), Adam (2) missing: 2/7; the missing year alone makes it unsupported.
        {"text": "Gradient descent was invented in 1990 by Adam.", "citations": [1], "verdict": "unsupported", "support": 0.2857},
        {"text": "Volcanoes erupt lava.", "citations": [], "verdict": "unsupported", "support": 0.0},
    ]


# --- the model verifier's verdicts ---


def claim(text: str, verdict: Verdict, support: float, citations: tuple[int, ...] = (1,)) -> Claim:
    return {"text": text, "citations": list(citations), "verdict": verdict, "support": support, "start": 0, "end": len(text)}


LEXICAL = [
    claim("A.", "supported", 0.9),
    claim("B.", "partial", 0.5),
    claim("C.", "unsupported", 0.2),
    claim("D.", "unsupported", 0.8),  # a number missing from the passage: unsupported whatever the share
]


def test_the_models_verdict_replaces_the_lexical_one_and_support_moves_into_its_band() -> None:
    merged = apply_verdicts(LEXICAL, [(1, "unsupported"), (2, "supported"), (3, "partial"), (4, "unsupported")])
    assert merged == [
        # 0.9 -> below 0.4 (PARTIAL_AT): the highest support an unsupported claim can have at 4 decimals.
        {**LEXICAL[0], "verdict": "unsupported", "support": 0.3999, "lexical_verdict": "supported"},
        {**LEXICAL[1], "verdict": "supported", "support": 0.7, "lexical_verdict": "partial"},  # 0.5 -> up to SUPPORTED_AT
        {**LEXICAL[2], "verdict": "partial", "support": 0.4, "lexical_verdict": "unsupported"},  # 0.2 -> up to PARTIAL_AT
        LEXICAL[3],  # the model agrees: the claim stays as the lexical check left it, support 0.8 included
    ]
    assert apply_verdicts([claim("E.", "supported", 0.95)], [(1, "partial")])[0]["support"] == 0.6999  # below SUPPORTED_AT
    assert apply_verdicts([claim("F.", "partial", 0.55)], [(1, "partial")]) == [claim("F.", "partial", 0.55)]


def test_the_lexical_verdict_stands_where_the_model_says_nothing_usable() -> None:
    # Claims 2-4 skipped, numbers 0 and 7 out of range, a second verdict for claim 1 ignored (the first counts).
    merged = apply_verdicts(LEXICAL, [(0, "supported"), (1, "partial"), (7, "supported"), (1, "unsupported")])
    assert merged == [{**LEXICAL[0], "verdict": "partial", "support": 0.6999, "lexical_verdict": "supported"}, *LEXICAL[1:]]
    assert apply_verdicts(LEXICAL, []) == LEXICAL  # an unparsable reply: every lexical verdict kept
    assert apply_verdicts([], [(1, "supported")]) == []


def test_a_sentence_an_edit_left_alone_keeps_its_verdict() -> None:
    earlier = [
        {**claim("Kept.", "supported", 0.7), "lexical_verdict": "unsupported"},
        claim("Dropped.", "unsupported", 0.1),
        claim("Kept.", "partial", 0.5),
    ]
    # Checked again after "Dropped." went: positions changed, the lexical check says unsupported again.
    rechecked = [
        {**claim("Kept.", "unsupported", 0.2), "start": 0, "end": 9},
        {**claim("Kept.", "partial", 0.5), "start": 10, "end": 19},
        claim("Kept.", "unsupported", 0.0, citations=(2,)),  # other citations: another claim
    ]
    assert carry_verdicts(rechecked, earlier) == [
        {**rechecked[0], "verdict": "supported", "support": 0.7, "lexical_verdict": "unsupported"},
        rechecked[1],  # matched with the third earlier claim, each earlier claim used once
        rechecked[2],
    ]


# --- the evidence gate ---


@pytest.fixture(scope="module")
def test_corpus() -> BM25Index:
    return BM25Index.from_directory(DATA / "corpus")


def gate(index: BM25Index, question: str) -> dict:
    return dict(evidence_gate(question, [passage_context(passage, score) for passage, score in index.search(question, 4)]))


ON_TOPIC = [
    "What learning rate makes gradient descent diverge?",
    "How does stochastic gradient descent estimate the gradient?",
    "Why do leaves look green?",
    "How do plants convert sunlight into glucose?",
    "How are stratovolcanoes built?",
    "What is lava?",
    "什么是损失函数？",
    "回归问题常用什么损失函数？",
]
# Each shares a word or two with some passage (so BM25 retrieves it), but is not about it.
OFF_TOPIC = [
    "What rate of inflation did France have in 1990?",
    "How do volcanoes affect the stock market?",
    "What is the best learning management system for schools?",
    "How do I bake sourdough bread with green olives?",
    "What is the capital of France?",
    "火山是怎么形成的？",
]


@pytest.mark.parametrize("question", ON_TOPIC)
def test_the_gate_answers_on_topic_questions(test_corpus: BM25Index, question: str) -> None:
    assert gate(test_corpus, question)["answerable"]


@pytest.mark.parametrize("question", OFF_TOPIC)
def test_the_gate_abstains_on_off_topic_questions(test_corpus: BM25Index, question: str) -> None:
    assert not gate(test_corpus, question)["answerable"]


def test_the_gate_lists_the_closest_passages_first() -> None:
    passages = [context("Volcanoes erupt lava."), context("Gradient descent follows the gradient."), context("The learning rate sets the step size.")]
    check = evidence_gate("How does the learning rate change gradient descent?", passages)
    # learn, rate, chang, gradient, descent: passage 2 shares learn, rate (2/5), passage 1 gradient, descent (2/5), passage 0 none.
    assert check["closest"] == [1, 2, 0]
    assert check["best_overlap"] == 0.4
    assert check["answerable"]
    assert [p["shared_terms"] for p in check["passages"]] == [["gradient", "descent"], ["learn", "rate"], []]
    assert check["passages"][0]["index"] == 1 and check["passages"][0]["source"] == "s.md"


def test_the_gate_needs_two_shared_terms_and_a_third_of_the_question() -> None:
    passage = [context("The learning rate sets the step size.")]
    assert not evidence_gate("How do glaciers rate?", passage)["answerable"]  # half the question, but one term only
    assert not evidence_gate("Which learning rate suits glaciers, rivers, lakes, oceans and deserts?", passage)["answerable"]  # 2 of 8
    assert evidence_gate("What learning rate suits deep networks?", passage)["answerable"]  # 2 of 5


def test_a_long_question_needs_a_weight_of_four_not_a_third() -> None:
    passage = [context("Gradient descent lowers the loss by moving the weights against the gradient; the learning rate sets the step.")]
    # 3 of its 14 terms shared (gradient, descent, learn): a weight of 3 < 4, not covered although over 2 terms.
    three = "gradient descent and learning in lakes, rivers, oceans, glaciers, deserts, forests, mountains, caves, islands, valleys, plains?"
    check = evidence_gate(three, passage)
    assert not check["answerable"] and check["passages"][0]["shared_terms"] == ["gradient", "descent", "learn"]
    # A paragraph on the passage's subject (a small model's research question): 7 of 27 terms shared, a
    # weight of 7 >= 4, though under a third (0.2593): covered.
    paragraph = (
        "gradient descent lowers loss moving weights against gradient while lakes rivers oceans glaciers deserts forests "
        "mountains caves islands valleys plains harbours bridges castles towers gardens meadows orchards vineyards"
    )
    check = evidence_gate(paragraph, passage)
    assert check["answerable"] and check["best_overlap"] == 0.2593 and len(check["question_terms"]) == 27


def test_the_gate_without_passages_abstains() -> None:
    check = evidence_gate("What is gradient descent?", [])
    assert check == {"answerable": False, "best_overlap": 0.0, "closest": [], "passages": [], "question_terms": ["gradient", "descent"]}


# --- the labelled set ---


def labelled_pairs() -> list[dict]:
    return [json.loads(line) for line in LABELLED_SET.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_the_labelled_set_covers_every_kind() -> None:
    pairs = labelled_pairs()
    assert len(pairs) >= 60
    assert {pair["label"] for pair in pairs} == {"supported", "partial", "unsupported"}
    kinds = Counter(pair["kind"] for pair in pairs)
    assert {"copied", "paraphrase", "partial", "unrelated", "wrong_number", "wrong_entity"} <= set(kinds)
    assert all(80 <= len(pair["passage"].split()) <= 210 for pair in pairs)


def test_precision_and_recall_of_unsupported_on_the_labelled_set() -> None:
    """Floors below the measured figures (0.905 / 0.633 on all 91 pairs). The thresholds were fixed before the set
    was scored, the identifier rule after: docs/claims.md says how, so the test split is not held-out for it."""
    counts: dict[str, Counter[str]] = {"dev": Counter(), "test": Counter(), "all": Counter()}
    for pair in labelled_pairs():
        verdict, support = check_claim(pair["claim"], [context(pair["passage"])], "")
        if pair["kind"] == "copied":
            assert (verdict, support) == ("supported", 1.0), pair["claim"]
        flagged, truly = verdict == "unsupported", pair["label"] == "unsupported"
        outcome = "tp" if flagged and truly else "fp" if flagged else "fn" if truly else "tn"
        for split in (pair["split"], "all"):
            counts[split][outcome] += 1
            counts[split]["agree"] += verdict == pair["label"]
    for split, count in counts.items():
        total = sum(count[o] for o in ("tp", "fp", "fn", "tn"))
        precision = count["tp"] / (count["tp"] + count["fp"])
        recall = count["tp"] / (count["tp"] + count["fn"])
        print(f"\n{split}: {total} pairs, unsupported precision {precision:.3f} recall {recall:.3f}, verdict agreement {count['agree'] / total:.3f}")
    everything = counts["all"]
    assert everything["tp"] / (everything["tp"] + everything["fp"]) >= 0.85
    assert everything["tp"] / (everything["tp"] + everything["fn"]) >= 0.55


def test_the_claim_check_imports_nothing_of_the_graph() -> None:
    graph_modules = ("langgraph", "langchain", "deepstep.graph", "deepstep.nodes")
    code = f"import sys, deepstep.claims; print(sorted(m for m in sys.modules if m.startswith({graph_modules!r})))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"
