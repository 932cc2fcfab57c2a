"""``deepstep eval``: the question file and its labels, the --set/--compare words, each score computed by hand
from a made-up thread, a run's overall scores and the table (pure); then the command against the fake server:
two runs, their outputs, the calls each made, a labelled question's recall, and a re-run without a call."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from deepstep import evaluation, step_tree
from deepstep.citations import count_citations
from deepstep.cli import app
from deepstep.cli.evaluate import spread_values
from deepstep.configuration import Settings
from deepstep.errors import InputError
from deepstep.mcts import add_reward, backpropagate, expand, new_search
from deepstep.records import Context, EvalQuestion, QuestionScores, Step
from deepstep.testing import FakeLLMServer, crash
from deepstep.threads import RunResult

CORPUS = Path(__file__).parent / "data" / "corpus"


# The question file.


def test_a_question_file_gives_each_question_its_labels():
    text = (
        '{"question": "What is  a loss function?", "pages": ["modules/sgd.md", {"source": "guide.pdf", "page": 3, "phrase": "the loss"}]}\n'
        "\n"
        '{"question": "Who won the 1998 world cup?", "abstain": true}\n'
        '{"question": "What does RidgeCV do?", "chunk_ids": ["c1"], "reference": "It picks alpha by cross-validation."}\n'
        '{"question": "Why?"}\n'
    )
    questions = evaluation.parse_questions(text, "q.jsonl")
    assert [(q["line"], q["question"]) for q in questions] == [
        (1, "What is a loss function?"),
        (3, "Who won the 1998 world cup?"),
        (4, "What does RidgeCV do?"),
        (5, "Why?"),
    ]
    assert questions[0]["pages"] == [{"source": "modules/sgd.md"}, {"source": "guide.pdf", "page": 3, "phrase": "the loss"}]
    assert (questions[2]["chunk_ids"], questions[2]["reference"]) == (["c1"], "It picks alpha by cross-validation.")
    # Labelled answer passages or a reference make a question answerable; abstain says so outright; else unknown.
    assert [evaluation.expected_abstention(q) for q in questions] == [False, True, False, None]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"question": "Why?"}\n{"question": "How?", "pages": "a.md"}\n', "line 2: pages must be a list"),
        ('{"question": "Why?"\n', "line 1: not JSON"),
        ('["Why?"]\n', "line 1: a list, not an object"),
        ('{"question": "Why?", "rollouts": 2}\n', "line 1: unknown field 'rollouts'"),
        ('{"pages": ["a.md"]}\n', "line 1: no question"),
        ('{"question": "Why?", "pages": [{"source": "a.pdf", "page": 0}]}\n', "line 1: a label's page is a page number from 1"),
        ('{"question": "Why?", "pages": [{"page": 2}]}\n', "line 1: each of pages is a document path or an object with a source"),
        ('{"question": "Why?", "pages": [{"source": "a.md", "line": 2}]}\n', "line 1: unknown label field 'line'"),
        ('{"question": "Why?", "chunk_ids": [3]}\n', "line 1: chunk_ids must be a list of chunk ids"),
        ('{"question": "Why?", "abstain": "yes"}\n', "line 1: abstain must be true or false"),
        ('{"question": "Why?", "abstain": true, "pages": ["a.md"]}\n', "line 1: a question the corpus cannot answer"),
        ('{"question": "Why?", "reference": ""}\n', "line 1: reference must be the text"),
        ('{"question": "Why?"}\n\n{"question": " Why? "}\n', "line 3: the same question as line 1"),
        ("\n\n", "holds no question"),
    ],
)
def test_a_bad_line_is_an_input_error_naming_it(text, message):
    with pytest.raises(InputError) as raised:
        evaluation.parse_questions(text, "q.jsonl")
    assert message in str(raised.value) and str(raised.value).startswith("q.jsonl ")


def test_settings_words_are_json_values_of_run_shaping_settings():
    assert evaluation.parse_setting("rollouts=2", "--compare") == ("rollouts", 2)
    assert evaluation.parse_setting("early_stop_q=null", "--set") == ("early_stop_q", None)
    assert evaluation.parse_setting("corpus=docs/a=b", "--set") == ("corpus", "docs/a=b")
    assert evaluation.parse_setting("language=[1]", "--set") == ("language", "[1]")  # a list is no setting: kept as text
    for word, message in [("rollouts", "write KEY=VALUE"), ("review=true", "not a setting that shapes a run"), ("base_url=x", "not a setting")]:
        with pytest.raises(InputError, match=message):
            evaluation.parse_setting(word, "--compare")
    assert evaluation.run_name({"rollouts": 0}) == "rollouts=0" and evaluation.run_name({}) == "default"
    assert evaluation.run_name({"verify": "model", "early_stop_q": None}) == "verify=model early_stop_q=null"


def test_compare_and_set_take_several_values_after_one_option():
    words = ["q.jsonl", "--compare", "rollouts=0", "rollouts=2", "--set", "top_k=3", "max_steps=2", "--out", "dir", "x=y"]
    assert spread_values(words) == [
        *("q.jsonl", "--compare", "rollouts=0", "--compare", "rollouts=2", "--set", "top_k=3", "--set", "max_steps=2"),
        *("--out", "dir", "x=y"),  # after another option, a KEY=VALUE word is that option's business
    ]
    assert spread_values(["--compare=rollouts=0", "rollouts=1"]) == ["--compare=rollouts=0", "--compare", "rollouts=1"]


# Scores of one thread, by hand.


def _context(source: str, text: str = "", chunk_id: str = "", page: int | None = None, page_end: int | None = None) -> Context:
    context: Context = {"ref_id": "r", "chunk_id": chunk_id or source, "score": 1.0, "text": text, "title": source, "source": source}
    if page is not None:
        context["page"] = page
    if page_end is not None:
        context["page_end"] = page_end
    return context


def _question(**labels) -> EvalQuestion:
    return {"line": 1, "question": "Why?", "pages": [], "chunk_ids": [], "abstain": None, "reference": None, **labels}  # type: ignore[typeddict-item]


def test_a_label_matches_its_document_on_its_page_containing_its_phrase():
    passage = _context("guide.pdf", "The  Loss\nfunction measures misfit.", page=3, page_end=4)
    assert evaluation.matches(passage, {"source": "guide.pdf"})
    assert evaluation.matches(passage, {"source": "guide.pdf", "page": 4, "phrase": "the loss function"})  # case, spaces ignored
    assert not evaluation.matches(passage, {"source": "guide.pdf", "page": 5})
    assert not evaluation.matches(passage, {"source": "guide.pdf", "phrase": "hinge loss"})
    assert not evaluation.matches(passage, {"source": "other.pdf"})
    assert not evaluation.matches(_context("notes.md", "x"), {"source": "notes.md", "page": 1})  # a page label needs a paged passage


def _step(status: str = "done", contexts: list[Context] | None = None, **fields) -> Step:
    return {**step_tree.STEP_DEFAULTS, "status": status, "contexts": contexts or [], **fields}  # type: ignore[typeddict-item]


def test_recall_at_k_and_mrr_count_every_steps_first_k_passages():
    a, b, c, d = (_context(name, f"text of {name}") for name in ("a.md", "b.md", "c.md", "d.md"))
    steps = [_step(contexts=[a, b, c]), _step("insufficient_evidence", contexts=[c, d])]
    question = _question(pages=[{"source": "b.md"}, {"source": "d.md", "phrase": "TEXT of"}, {"source": "e.md"}])
    # b is rank 2 of step 1, d rank 2 of step 2: two of three labels found, best rank 2.
    assert evaluation.retrieval_scores(steps, question, k=2) == (2 / 3, 2)
    # With k = 1 only a and c count: nothing found.
    assert evaluation.retrieval_scores(steps, question, k=1) == (0.0, None)
    # A chunk id label: c is rank 1 of step 2.
    assert evaluation.retrieval_scores(steps, _question(chunk_ids=["c.md", "zz"]), k=4) == (1 / 2, 1)
    assert evaluation.retrieval_scores(steps, _question(), k=4) is None


def _finished_search(draft_rewards: list[float], children: list[list[float]]):
    search = new_search("draft [1]. More [9].")
    for reward in draft_rewards:
        search = add_reward(search, 0, reward)
    for number, rewards in enumerate(children):
        search, child = expand(search, 0, critique="c", thought="t", answer=f"refined {number} [1][2]")
        for reward in rewards:
            search = add_reward(search, child, reward)
        search = backpropagate(search, child)
    return search


def test_the_mctsr_gain_is_the_best_final_q_less_the_drafts_own_q():
    # Draft rewards 10 and 30: Q = (10 + 20) / 2 = 15. Child 1 scores 40 (Q 40), child 2 scores 0.
    # Backpropagation lifts the draft to (15 + 40) / 2 = 27.5, then (27.5 + 40) / 2 = 33.75: the best is child 1's 40.
    search = _finished_search([10, 30], [[40], [0]])
    assert [node["q"] for node in search["nodes"]] == [33.75, 40, 0]
    assert evaluation.mctsr_gain(_step(mcts=search)) == 40 - 15
    # No rollout: the draft's Q is the best, no gain.
    assert evaluation.mctsr_gain(_step(mcts=_finished_search([50], []))) == 0
    assert evaluation.mctsr_gain(_step("failed", mcts=search)) is None  # only answered steps count
    assert evaluation.mctsr_gain(_step(mcts={})) is None


def test_valid_citations_count_every_answer_of_the_search_and_the_removed_ones():
    assert count_citations("A [1]. B [1, 3]. `coef_[0]` is code.") == 3
    search = _finished_search([10], [[20]])  # answers "draft [1]. More [9]." and "refined 0 [1][2]"
    # The answers hold 2 + 2 citations; the step removed 3 more (citing passages that do not exist).
    assert evaluation.citation_counts(_step(mcts=search, removed_citations=3)) == (7, 3)
    assert evaluation.citation_counts(_step("insufficient_evidence", answer="")) == (0, 0)


def test_a_thread_abstained_when_no_step_was_answered_and_one_was_not_covered():
    assert evaluation.abstained([_step("insufficient_evidence"), _step("insufficient_evidence")])
    assert evaluation.abstained([_step("insufficient_evidence"), _step("failed")])
    assert not evaluation.abstained([_step("insufficient_evidence"), _step("done")])
    assert not evaluation.abstained([_step("failed")])  # a failure is no abstention
    assert not evaluation.abstained([])


def test_token_f1_counts_shared_words():
    # Answer words: gradient descent minimizes loss (4, "the" dropped); reference: gradient descent minimizes error (4).
    # Shared 3: precision 3/4, recall 3/4, F1 0.75.
    assert evaluation.token_f1("Gradient descent minimizes the loss.", "gradient descent minimizes error") == pytest.approx(0.75)
    assert evaluation.token_f1("Nothing alike", "gradient descent") == 0.0
    assert evaluation.token_f1("", "x") == 0.0


def _claim(verdict: str) -> dict:
    return {"text": "x", "citations": [1], "verdict": verdict, "support": 0.5}


def test_question_scores_read_a_stored_thread():
    tree = step_tree.new_tree("Why?")
    steps = [
        (
            "s1",
            "0",
            _step(
                contexts=[_context("a.md"), _context("b.md")], claims=[_claim("supported"), _claim("partial")], mcts=_finished_search([10], [[40]])
            ),
        ),
        ("s2", "0>1", _step(contexts=[_context("b.md")], answer="B [1].", claims=[_claim("supported")], mcts=_finished_search([20], []))),
        ("s3", "0>2", _step("insufficient_evidence", contexts=[_context("c.md")], claims=[_claim("unsupported")])),
    ]
    for step_id, level, fields in steps:
        tree.add_node(step_id, **{**fields, "name": step_id, "level": level})
        tree.add_edge(step_tree.ROOT_ID, step_id)
    stored = RunResult("t1", tree, "# Why?", {"answer": {"calls": 4, "prompt_tokens": 90, "completion_tokens": 10}}, [])
    question = _question(pages=["b.md"], reference="B is the answer")
    scores = evaluation.question_scores(question, "t1", "done", stored, k=4, cost=0.5, wall_seconds=3.25)
    assert scores == {
        "question": "Why?",
        "thread_id": "t1",
        "status": "done",
        "steps": 3,
        "answered_steps": 2,
        "insufficient_steps": 1,
        "failed_steps": 0,
        "k": 4,
        "recall_at_k": 1.0,
        "mrr": 1.0,  # b.md is step s2's first passage
        "claims": 3,  # s3 is not answered: its claim is not in the report
        "supported_claims": round(2 / 3, 4),
        "abstained": False,
        "expected_abstain": False,
        "scored_steps": 2,
        "mctsr_gain": 15.0,  # s1: 40 - 10 = 30, s2: 0
        "citations": 6,  # s1's answers 2 + 2, s2's draft 2 ("draft [1]. More [9].")
        "valid_citations": 1.0,
        # The report's answer (seed layout: the answered steps' answers, citations out) is " B." (s1's is empty):
        # words [b] against [b, is, answer]: precision 1, recall 1/3, F1 0.5.
        "answer_f1": 0.5,
        "calls": 4,
        "tokens": 100,
        "cost": 0.5,
        "wall_seconds": 3.25,
    }
    assert evaluation.report_answer(tree) == " B."
    never = evaluation.question_scores(question, "t2", "failed", None, k=4, cost=None, wall_seconds=None)
    assert (never["steps"], never["recall_at_k"], never["abstained"], never["calls"], never["valid_citations"]) == (0, None, False, 0, None)


def _scores(**fields) -> QuestionScores:
    base: QuestionScores = {
        "question": "q",
        "thread_id": "t",
        "status": "done",
        "steps": 1,
        "answered_steps": 1,
        "insufficient_steps": 0,
        "failed_steps": 0,
        "k": 4,
        "recall_at_k": None,
        "mrr": None,
        "claims": 0,
        "supported_claims": None,
        "abstained": False,
        "expected_abstain": None,
        "scored_steps": 0,
        "mctsr_gain": None,
        "citations": 0,
        "valid_citations": None,
        "answer_f1": None,
        "calls": 0,
        "tokens": 0,
        "cost": None,
        "wall_seconds": None,
    }
    return {**base, **fields}  # type: ignore[typeddict-item]


def test_overall_scores_average_per_question_measures_and_pool_the_rest():
    questions = [
        _scores(recall_at_k=1.0, mrr=0.5, claims=3, supported_claims=1 / 3, expected_abstain=False, scored_steps=1, mctsr_gain=10.0),
        _scores(recall_at_k=0.5, mrr=0.0, claims=1, supported_claims=1.0, expected_abstain=False, abstained=True, citations=4, valid_citations=0.5),
        _scores(expected_abstain=True, abstained=True, scored_steps=3, mctsr_gain=2.0, citations=6, valid_citations=1.0, calls=5, tokens=50),
        _scores(expected_abstain=True, status="failed", calls=2, tokens=7, wall_seconds=1.5, answer_f1=0.25),
    ]
    overall = evaluation.overall_scores(questions)
    assert overall == {
        "questions": 4,
        "done": 3,
        "retrieval_labelled": 2,
        "recall_at_k": 0.75,
        "mrr": 0.25,
        "claims": 4,
        "supported_claims": 0.5,  # (1 + 1) of 4 claims
        "abstention_labelled": 4,
        "abstained": 2,
        "abstention_precision": 0.5,  # abstained on 2, 1 of them should have
        "abstention_recall": 0.5,  # 2 should have, it did on 1
        "scored_steps": 4,
        "mctsr_gain": 4.0,  # (10 + 3 * 2) / 4 steps
        "citations": 10,
        "valid_citations": 0.8,  # (2 + 6) of 10
        "answer_f1": 0.25,
        "calls": 7,
        "tokens": 57,
        "cost": None,
        "wall_seconds": 1.5,  # only one question was measured
    }
    nothing = evaluation.overall_scores([_scores()])
    assert (nothing["recall_at_k"], nothing["abstention_precision"], nothing["mctsr_gain"], nothing["wall_seconds"]) == (None, None, None, None)
    assert evaluation.overall_scores([_scores(cost=0.25), _scores(cost=0.5)])["cost"] == 0.75


def test_the_ablation_table_has_one_column_per_run():
    runs = [
        {"name": "rollouts=0", "settings": {}, "overall": evaluation.overall_scores([_scores(recall_at_k=0.5, mrr=0.5, calls=17)]), "questions": []},
        {
            "name": "rollouts=2",
            "settings": {},
            "overall": evaluation.overall_scores([_scores(recall_at_k=1.0, mrr=1 / 3, calls=47)]),
            "questions": [],
        },
    ]
    lines = evaluation.ablation_table(runs).splitlines()  # type: ignore[arg-type]
    assert lines[0] == "| metric | rollouts=0 | rollouts=2 |"
    assert "| questions done | 1/1 | 1/1 |" in lines
    assert "| retrieval recall@k | 0.5 | 1 |" in lines and "| retrieval MRR | 0.5 | 0.333 |" in lines
    assert "| model calls | 17 | 47 |" in lines and "| cost (USD) | n/a | n/a |" in lines


# The command against the fake server.

# Questions of the test corpus. The retriever ranks photosynthesis.txt first and gradient-descent.md second for
# every step of the second question (checked below), so its labels' recall@4 is 1/2 (volcanoes.rst never found)
# and its MRR 1/2 (the gradient-descent label's passage is rank 2).
QUESTIONS = [
    {"question": "What is gradient descent?", "pages": [{"source": "gradient-descent.md", "phrase": "minimizes a loss function"}]},
    {"question": "How do plants make glucose?", "pages": [{"source": "gradient-descent.md", "phrase": "MINIMIZES a loss"}, "volcanoes.rst"]},
    {"question": "Who won the 1998 football world cup final?", "abstain": True},
]
MAX_SEARCHES = 2


def _eval(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    command = crash.cli_command("eval", str(tmp_path / "questions.jsonl"), *args, "--out", str(tmp_path / "out"))
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)


def test_eval_compares_two_settings_writes_json_table_and_plot_and_a_rerun_makes_no_call(fake_llm: FakeLLMServer, tmp_path):
    (tmp_path / "questions.jsonl").write_text("\n".join(json.dumps(q) for q in QUESTIONS) + "\n", encoding="utf-8")
    env = crash.cli_env(
        fake_llm.base_url,
        tmp_path / "home",
        corpus=CORPUS,
        max_concurrency=4,
        max_retries=0,
        step_attempts=1,
        report_layout="seed",
        max_searches=MAX_SEARCHES,
    )
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(evaluation.__file__).parents[1]), os.environ.get("PYTHONPATH")]))
    # The issue's spelling: several values after one --compare.
    first = _eval(tmp_path, env, "--compare", "rollouts=0", "rollouts=2")
    assert first.returncode == 0, first.stderr
    out = tmp_path / "out"
    runs = json.loads((out / "eval.json").read_text(encoding="utf-8"))["runs"]
    assert [run["name"] for run in runs] == ["rollouts=0", "rollouts=2"]
    assert [run["settings"]["rollouts"] for run in runs] == [0, 2] and all(run["settings"]["corpus"] == str(CORPUS) for run in runs)
    for run in runs:
        assert set(run) == {"name", "settings", "overall", "questions"}
        assert set(run["overall"]) == set(evaluation.OverallScores.__annotations__)
        assert [q["question"] for q in run["questions"]] == [q["question"] for q in QUESTIONS]
        assert all(q["status"] == "done" for q in run["questions"])
    assert len({q["thread_id"] for run in runs for q in run["questions"]}) == 6  # each question x setting its own thread

    # The calls: 2 for planning, 3 + 3R per answered step, and per step the corpus does not cover its research
    # question plus the follow-up searches it may make; the fake server answered exactly these.
    for run in runs:
        rollouts = run["settings"]["rollouts"]
        for q in run["questions"]:
            assert q["calls"] == 2 + q["answered_steps"] * (3 + 3 * rollouts) + q["insufficient_steps"] * (1 + MAX_SEARCHES), q
        assert run["overall"]["calls"] == sum(q["calls"] for q in run["questions"])
    answerable = [q for run in runs for q in run["questions"][:2]]
    assert all(q["answered_steps"] == q["steps"] > 0 for q in answerable)
    assert len(fake_llm.log()) == sum(run["overall"]["calls"] for run in runs)

    # A labelled question's retrieval, by hand (see QUESTIONS), and the abstention.
    from deepstep.threads import load

    for run in runs:
        glucose = run["questions"][1]
        stored = load(glucose["thread_id"], settings=Settings.build(home=tmp_path / "home"))
        assert all(
            [c["source"] for c in step["contexts"][:4]] == ["photosynthesis.txt", "gradient-descent.md"] for step in step_tree.steps(stored.tree)
        )
        assert (glucose["recall_at_k"], glucose["mrr"]) == (0.5, 0.5)
        assert (run["questions"][0]["recall_at_k"], run["questions"][0]["mrr"]) == (1.0, 1.0)
        assert run["overall"]["recall_at_k"] == 0.75 and run["overall"]["mrr"] == 0.75
        assert [q["abstained"] for q in run["questions"]] == [False, False, True]
        assert (run["overall"]["abstention_precision"], run["overall"]["abstention_recall"]) == (1.0, 1.0)
    assert runs[0]["overall"]["mctsr_gain"] == 0 and runs[1]["overall"]["scored_steps"] > 0

    table = (out / "eval.md").read_text(encoding="utf-8")
    assert "| metric | rollouts=0 | rollouts=2 |" in table and "| retrieval recall@k | 0.75 | 0.75 |" in table
    assert "![scores per run](eval.png)" in table and (out / "eval.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert "| metric | rollouts=0 | rollouts=2 |" in first.stdout  # the table, printed
    page = (out / "eval.html").read_text(encoding="utf-8")
    assert "<th>metric</th>" in page and '<img alt="scores per run" src="data:image/png;base64,' in page and "EVALUATION-PLOT" not in page

    calls = len(fake_llm.log())
    again = _eval(tmp_path, env, "--compare", "rollouts=0", "--compare", "rollouts=2")
    assert again.returncode == 0, again.stderr
    assert len(fake_llm.log()) == calls and "6 done already" in again.stderr  # every thread finished: no model call
    rerun = json.loads((out / "eval.json").read_text(encoding="utf-8"))["runs"]
    assert [[q["wall_seconds"] for q in run["questions"]] for run in rerun] == [[q["wall_seconds"] for q in run["questions"]] for run in runs]
    assert [run["overall"] for run in rerun] == [run["overall"] for run in runs]


def test_bad_input_is_one_line_exit_2_before_any_call(fake_llm, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", fake_llm.base_url)
    monkeypatch.setenv("DEEPSTEP_CORPUS", str(CORPUS))
    good = tmp_path / "questions.jsonl"
    good.write_text('{"question": "What is gradient descent?"}\n', encoding="utf-8")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "What is gradient descent?"}\n{"question": "Why?", "abstain": 1}\n', encoding="utf-8")
    cases = [
        ([str(bad)], f"{bad} line 2: abstain must be true or false"),
        ([str(good), "--compare", "rollouts=-1"], "--compare rollouts=-1: invalid settings: rollouts"),
        ([str(good), "--set", "colour=red"], "'colour' is not a setting that shapes a run"),
        ([str(good), "--compare", "rollouts=1", "rollouts=1"], "--compare rollouts=1 and rollouts=1 give the same settings"),
        ([str(good), "--compare", "rollouts=2", "top_k=4"], "--compare rollouts=2 and top_k=4 give the same settings"),  # both defaults
        ([str(tmp_path / "none.jsonl")], "cannot read the evaluation file"),
        ([str(good), "--workers", "0"], "--workers must be 1 to 64"),
    ]
    for args, message in cases:
        result = CliRunner().invoke(app, ["eval", *args, "--out", str(tmp_path / "out")])
        assert result.exit_code == 2, result.output
        assert result.output.strip().count("\n") == 0 and message in result.output, result.output
    assert fake_llm.log() == [] and not (tmp_path / "out").exists()


def test_the_shipped_scikit_learn_set_is_the_benchmarks_questions_plus_ones_the_guide_cannot_answer():
    root = Path(__file__).parent.parent / "benchmarks" / "data"
    questions = evaluation.parse_questions((root / "sklearn_eval.jsonl").read_text(encoding="utf-8"), "sklearn_eval.jsonl")
    benchmark = json.loads((root / "sklearn_questions.json").read_text(encoding="utf-8"))["questions"]
    labelled = [q for q in questions if q["abstain"] is None]
    assert [(q["question"], q["pages"]) for q in labelled] == [(b["question"], b["expected"]) for b in benchmark]
    assert len([q for q in questions if q["abstain"]]) >= 5 and len(questions) == len(labelled) + len([q for q in questions if q["abstain"]])


def test_a_failed_thread_exits_1_with_its_scores_written_and_is_retried_on_rerun(fake_llm: FakeLLMServer, tmp_path):
    from deepstep.testing import Fault

    (tmp_path / "questions.jsonl").write_text(json.dumps(QUESTIONS[0]) + "\n", encoding="utf-8")
    env = crash.cli_env(fake_llm.base_url, tmp_path / "home", corpus=CORPUS, max_retries=0, step_attempts=1, report_layout="seed")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(evaluation.__file__).parents[1]), os.environ.get("PYTHONPATH")]))
    fake_llm.set_faults([Fault(kind="http500", task="answer", times=1)])
    first = _eval(tmp_path, env, "--set", "rollouts=0")
    assert first.returncode == 1, first.stderr
    [run] = json.loads((tmp_path / "out" / "eval.json").read_text(encoding="utf-8"))["runs"]
    assert run["name"] == "rollouts=0" and run["overall"]["done"] == 0
    assert (run["questions"][0]["status"], run["questions"][0]["failed_steps"]) == ("failed", 1)
    again = _eval(tmp_path, env, "--set", "rollouts=0")
    assert again.returncode == 0, again.stderr
    assert "1 to retry" in again.stderr
    [run] = json.loads((tmp_path / "out" / "eval.json").read_text(encoding="utf-8"))["runs"]
    assert run["overall"]["done"] == 1 and run["questions"][0]["failed_steps"] == 0
