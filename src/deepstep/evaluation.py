"""Evaluating settings on your own corpus (``deepstep eval``): the question file with its labels, the
``--set`` / ``--compare`` words, each question's scores from its finished thread, a run's overall scores
and the ablation table. Pure: no I/O, no model call (tests/test_evaluation.py computes them by hand).

How each score is read off a thread (docs/evaluation.md says the same for users):

- Retrieval (questions with ``pages`` or ``chunk_ids`` labels): every step's own retrieval counts, the
  first ``k`` (the run's ``top_k``) passages of its contexts, as a step's sub-question may be the one that
  finds the evidence; the passages a follow-up search appended after them do not. recall@k is the share
  of the question's labels some step found there; MRR is 1 / the best rank of a labelled passage over the
  steps (0 when none). A label matches a passage of its document (``source``), on its ``page`` when given,
  containing its ``phrase`` when given (case and whitespace ignored); a chunk id matches that passage.
- Supported claims: the share of the report's claims (the opening answer's and the answered steps') whose
  cited passages back them; partly backed ones do not count as supported.
- Abstention: a thread abstained when no step was answered and at least one step was found not covered
  by the corpus (``insufficient_evidence``): the report then says the corpus does not cover the question.
  A question is labelled when it says ``abstain``, and counts as answerable (``abstain: false``) when it
  labels answer passages or a reference answer.
- MCTSr gain: per answered step, the best Q of the finished search minus the first draft's own Q (its
  rewards before any backpropagation): 0 with ``rollouts = 0``; the mean over the steps.
- Valid citations: the share of the citation numbers the answers of the search (the draft and every
  refinement) made that point at a passage; deepstep removes the others (``removed_citations``).
- Answer F1: the token overlap of the report's answer (the opening answer, else the answered steps'
  answers) with the reference answer, SQuAD style. Crude: a long report against a short reference scores
  low on precision, and a paraphrase scores as a miss.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, cast

from deepstep import json_text, step_tree
from deepstep.citations import count_citations, renumber_citations
from deepstep.claims import count_verdict
from deepstep.configuration import RUN_SHAPING_FIELDS, Settings
from deepstep.errors import ConfigError, InputError
from deepstep.mcts import SearchNode, q_value
from deepstep.records import BatchStatus, Claim, Context, EvalQuestion, EvalRun, OverallScores, PassageLabel, QuestionScores, Step

if TYPE_CHECKING:
    from deepstep.threads import RunResult

# The settings --set and --compare may change: those that shape a run, but review (an evaluation never pauses).
EVAL_SETTINGS = tuple(name for name in RUN_SHAPING_FIELDS if name != "review")
QUESTION_FIELDS = ("question", "pages", "chunk_ids", "abstain", "reference")
_LABEL_FIELDS = ("source", "page", "phrase")
DIGITS = 4  # scores are rounded to this many decimals in eval.json and the tables


# The --set and --compare words.


def parse_setting(word: str, option: str) -> tuple[str, object]:
    """``rollouts=2`` -> ``("rollouts", 2)``: the value is read as JSON when it is JSON (``2``, ``null``,
    ``true``), else kept as text (``corpus=docs``). Only run-shaping settings, checked by the caller."""
    key, equals, text = word.partition("=")
    key = key.strip()
    if not equals or not key:
        raise InputError(f"{option} {word!r}: write KEY=VALUE, e.g. {option} rollouts=2")
    if key not in EVAL_SETTINGS:
        raise InputError(f"{option} {word!r}: {key!r} is not a setting that shapes a run; use one of {', '.join(EVAL_SETTINGS)}")
    try:
        value: object = json.loads(text)
    except ValueError:
        value = text
    if isinstance(value, (list, dict)):
        value = text
    return key, value


def run_settings(base: Settings, changes: dict[str, object], where: str) -> Settings:
    """``base`` with ``changes``, validated; never a review pause. A bad value is an ``InputError`` naming ``where``."""
    try:
        return Settings.build(**{**base.model_dump(), **changes, "review": False})
    except ConfigError as error:
        raise InputError(f"{where}: {str(error).split(' (see the command')[0]}") from None


def run_name(changes: dict[str, object]) -> str:
    """What a run is called in the table: its --compare value, e.g. ``rollouts=0``."""
    return " ".join(f"{key}={json.dumps(value) if not isinstance(value, str) else value}" for key, value in changes.items()) or "default"


# The question file.


def parse_questions(text: str, name: str = "the evaluation file") -> list[EvalQuestion]:
    """The questions of a JSONL evaluation file with their labels; a bad line is an ``InputError`` naming it."""
    questions: list[EvalQuestion] = []
    seen: dict[str, int] = {}
    for number, fields in json_text.objects_by_line(text, name, '{"question": "...", "abstain": true}'):
        where = f"{name} line {number}"
        question = _checked_question(fields, where)
        if (first := seen.setdefault(question["question"], number)) != number:
            raise InputError(f"{where}: the same question as line {first}; remove one")
        questions.append({**question, "line": number})
    if not questions:
        raise InputError(f'{name} holds no question: one JSON object per line, e.g. {{"question": "What is a loss function?"}}')
    return questions


def _checked_question(fields: dict[str, Any], where: str) -> EvalQuestion:
    from deepstep.api import question_field  # the API's own check: a question it would refuse fails here, before any run

    unknown = [str(key) for key in fields if key not in QUESTION_FIELDS]
    if unknown:
        raise InputError(f"{where}: unknown field {', '.join(map(repr, unknown))}; use {', '.join(QUESTION_FIELDS)}")
    question = question_field(fields, where)
    pages = fields.get("pages", [])
    if not isinstance(pages, list):
        raise InputError(f'{where}: pages must be a list, e.g. [{{"source": "modules/sgd.md", "page": 3}}] or ["modules/sgd.md"]')
    labels = [_page_label(label, where) for label in pages]
    chunk_ids = fields.get("chunk_ids", [])
    if not isinstance(chunk_ids, list) or not all(isinstance(chunk, str) and chunk.strip() for chunk in chunk_ids):
        raise InputError(f"{where}: chunk_ids must be a list of chunk ids (text), as `deepstep corpus search --json` shows them")
    abstain = fields.get("abstain")
    if abstain is not None and not isinstance(abstain, bool):
        raise InputError(f"{where}: abstain must be true or false, not {abstain!r}")
    if abstain and (labels or chunk_ids):
        raise InputError(f"{where}: a question the corpus cannot answer (abstain: true) has no answer passages; remove pages/chunk_ids or abstain")
    reference = fields.get("reference")
    if reference is not None and (not isinstance(reference, str) or not reference.strip()):
        raise InputError(f"{where}: reference must be the text of a reference answer")
    return {"line": 0, "question": question, "pages": labels, "chunk_ids": [c.strip() for c in chunk_ids], "abstain": abstain, "reference": reference}


def _page_label(label: object, where: str) -> PassageLabel:
    if isinstance(label, str) and label.strip():
        return {"source": label.strip()}
    if not isinstance(label, dict) or not isinstance(label.get("source"), str) or not label["source"].strip():
        raise InputError(f'{where}: each of pages is a document path or an object with a source, e.g. {{"source": "guide.pdf", "page": 3}}')
    unknown = [str(key) for key in label if key not in _LABEL_FIELDS]
    if unknown:
        raise InputError(f"{where}: unknown label field {', '.join(map(repr, unknown))}; a page label has source, page and phrase")
    checked: PassageLabel = {"source": label["source"].strip()}
    page = label.get("page")
    if page is not None:
        if isinstance(page, bool) or not isinstance(page, int) or page < 1:
            raise InputError(f"{where}: a label's page is a page number from 1, not {page!r}")
        checked["page"] = page
    phrase = label.get("phrase")
    if phrase is not None:
        if not isinstance(phrase, str) or not _normalized(phrase):
            raise InputError(f"{where}: a label's phrase is text from the answering sentence")
        checked["phrase"] = phrase
    return checked


def expected_abstention(question: EvalQuestion) -> bool | None:
    """Whether the corpus cannot answer the question: its ``abstain`` label, else False when it labels
    answer passages or a reference answer (then it is answerable), else unknown (None)."""
    if question["abstain"] is not None:
        return question["abstain"]
    return False if question["pages"] or question["chunk_ids"] or question["reference"] else None


# Scores of one thread.


def _normalized(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def matches(context: Context, label: PassageLabel) -> bool:
    """Whether a retrieved passage is the labelled one: its document, on its page, containing its phrase."""
    if context.get("source") != label["source"]:
        return False
    page = label.get("page")
    if page is not None:
        first = context.get("page")
        if first is None or not first <= page <= context.get("page_end", first):
            return False
    phrase = label.get("phrase")
    return phrase is None or _normalized(phrase) in _normalized(context.get("text", ""))


def retrieval_scores(steps: Sequence[Step], question: EvalQuestion, k: int) -> tuple[float, int | None] | None:
    """(recall@k, best rank of a labelled passage or None) over the steps' first ``k`` passages; None when
    the question labels no passage."""
    labels: list[Any] = [*question["pages"], *question["chunk_ids"]]
    if not labels:
        return None

    def relevant(context: Context, label: Any) -> bool:
        return context.get("chunk_id") == label if isinstance(label, str) else matches(context, label)

    found: set[int] = set()
    best: int | None = None
    for step in steps:
        for rank, context in enumerate((step.get("contexts") or [])[:k], start=1):
            hits = {index for index, label in enumerate(labels) if relevant(context, label)}
            if hits and (best is None or rank < best):
                best = rank
            found |= hits
    return len(found) / len(labels), best


def report_claims(tree: Any) -> list[Claim]:
    """The claims the report makes: the opening answer's (answer-first layout) and the answered steps'."""
    root = tree.nodes[step_tree.ROOT_ID]
    claims: list[Claim] = list(root.get("claims") or [])
    for step in step_tree.steps(tree):
        if step["status"] == "done":
            claims.extend(step.get("claims") or [])
    return claims


def _search_nodes(step: Step) -> list[SearchNode]:
    # A failed step's search is as far as it got, or {}: no nodes.
    return cast(list[SearchNode], (step.get("mcts") or {}).get("nodes") or [])


def mctsr_gain(step: Step) -> float | None:
    """The best Q of an answered step's finished search minus its first draft's own Q; None without scores."""
    nodes = _search_nodes(step)
    if step["status"] != "done" or not nodes or not nodes[0].get("rewards"):
        return None
    best = max(node["q"] for node in nodes if node["q"] is not None)
    return best - q_value(nodes[0]["rewards"])


def citation_counts(step: Step) -> tuple[int, int]:
    """(citations the step's answers made, those that pointed at no passage and were removed)."""
    nodes = _search_nodes(step)
    answers = [node.get("answer") or "" for node in nodes] if nodes else [step.get("answer") or ""]
    removed = int(step.get("removed_citations", 0) or 0)
    return sum(count_citations(answer) for answer in answers) + removed, removed


def abstained(steps: Sequence[Step]) -> bool:
    """No step answered, and at least one the corpus did not cover."""
    statuses = [step["status"] for step in steps]
    return "done" not in statuses and "insufficient_evidence" in statuses


def report_answer(tree: Any) -> str:
    """The report's answer: the opening answer (answer-first layout), else the answered steps' answers; no citations."""
    answer = tree.nodes[step_tree.ROOT_ID].get("answer") or " ".join(step["answer"] for step in step_tree.steps(tree) if step["status"] == "done")
    return renumber_citations(answer, {})[0]


def token_f1(answer: str, reference: str) -> float:
    """SQuAD-style token F1: the words two texts share (with repeats), lower-cased, punctuation ignored."""
    predicted, expected = _words(answer), _words(reference)
    shared = sum((Counter(predicted) & Counter(expected)).values())
    if not shared:
        return 0.0
    precision, recall = shared / len(predicted), shared / len(expected)
    return 2 * precision * recall / (precision + recall)


def _words(text: str) -> list[str]:
    return [word for word in re.findall(r"\w+", text.lower()) if word not in ("a", "an", "the")]


def question_scores(
    question: EvalQuestion,
    thread_id: str,
    status: BatchStatus,
    stored: RunResult | None,
    *,
    k: int,
    cost: float | None,
    wall_seconds: float | None,
) -> QuestionScores:
    """One question's scores from its thread as stored (None: never started)."""
    steps = step_tree.steps(stored.tree) if stored is not None else []
    usage = stored.usage if stored is not None else {}
    finished = stored is not None and stored.status == "done"
    retrieval = retrieval_scores(steps, question, k) if finished else None
    claims = report_claims(stored.tree) if stored is not None and finished else []
    gains = [gain for step in steps if (gain := mctsr_gain(step)) is not None]
    counts = [citation_counts(step) for step in steps]
    made, removed = sum(count[0] for count in counts), sum(count[1] for count in counts)
    return {
        "question": question["question"],
        "thread_id": thread_id,
        "status": status,
        "steps": len(steps),
        "answered_steps": sum(1 for step in steps if step["status"] == "done"),
        "insufficient_steps": sum(1 for step in steps if step["status"] == "insufficient_evidence"),
        "failed_steps": sum(1 for step in steps if step["status"] == "failed"),
        "k": k,
        "recall_at_k": _rounded(retrieval[0]) if retrieval is not None else None,
        "mrr": _rounded(1 / retrieval[1] if retrieval[1] else 0.0) if retrieval is not None else None,
        "claims": len(claims),
        "supported_claims": _rounded(count_verdict(claims, "supported") / len(claims)) if claims else None,
        "abstained": finished and abstained(steps),
        "expected_abstain": expected_abstention(question),
        "scored_steps": len(gains),
        "mctsr_gain": _rounded(sum(gains) / len(gains)) if gains else None,
        "citations": made,
        "valid_citations": _rounded((made - removed) / made) if made else None,
        "answer_f1": _rounded(token_f1(report_answer(stored.tree), question["reference"]))
        if stored is not None and finished and question["reference"]
        else None,
        "calls": int(sum(fields.get("calls", 0) for fields in usage.values())),
        "tokens": int(sum(fields.get("prompt_tokens", 0) + fields.get("completion_tokens", 0) for fields in usage.values())),
        "cost": None if cost is None else round(cost, 6),
        "wall_seconds": None if wall_seconds is None else round(wall_seconds, 2),
    }


# A run's overall scores.


def overall_scores(questions: Sequence[QuestionScores]) -> OverallScores:
    """A run's scores over its questions. Retrieval and answer F1: the mean over the questions that have a
    value (recall@k and MRR are per-question measures). Claims, MCTSr gain and citations: pooled over all
    claims, scored steps and citations, so a question with many weighs more. Abstention precision: of the
    labelled questions it abstained on, the share labelled abstain; recall: of those labelled abstain, the
    share it abstained on (a question not finished counts as not abstained). Calls, tokens, cost, wall: sums
    (cost None when any question's is unknown; wall the sum of the questions measured)."""
    retrieval = [q for q in questions if q["recall_at_k"] is not None]
    labelled = [q for q in questions if q["expected_abstain"] is not None]
    said = [q for q in labelled if q["abstained"]]
    expected = [q for q in labelled if q["expected_abstain"]]
    claims = sum(q["claims"] for q in questions)
    scored = sum(q["scored_steps"] for q in questions)
    citations = sum(q["citations"] for q in questions)
    walls = [q["wall_seconds"] for q in questions if q["wall_seconds"] is not None]
    costs = [q["cost"] for q in questions]
    return {
        "questions": len(questions),
        "done": sum(1 for q in questions if q["status"] == "done"),
        "retrieval_labelled": len(retrieval),
        "recall_at_k": _mean(q["recall_at_k"] for q in retrieval),
        "mrr": _mean(q["mrr"] for q in retrieval),
        "claims": claims,
        "supported_claims": _rounded(sum((q["supported_claims"] or 0.0) * q["claims"] for q in questions) / claims) if claims else None,
        "abstention_labelled": len(labelled),
        "abstained": sum(1 for q in questions if q["abstained"]),
        "abstention_precision": _rounded(sum(1 for q in said if q["expected_abstain"]) / len(said)) if said else None,
        "abstention_recall": _rounded(sum(1 for q in expected if q["abstained"]) / len(expected)) if expected else None,
        "scored_steps": scored,
        "mctsr_gain": _rounded(sum((q["mctsr_gain"] or 0.0) * q["scored_steps"] for q in questions) / scored) if scored else None,
        "citations": citations,
        "valid_citations": _rounded(sum((q["valid_citations"] or 0.0) * q["citations"] for q in questions) / citations) if citations else None,
        "answer_f1": _mean(q["answer_f1"] for q in questions if q["answer_f1"] is not None),
        "calls": sum(q["calls"] for q in questions),
        "tokens": sum(q["tokens"] for q in questions),
        "cost": None if not costs or any(cost is None for cost in costs) else round(sum(cost for cost in costs if cost is not None), 6),
        "wall_seconds": round(sum(walls), 2) if walls else None,
    }


def _mean(values: Iterable[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return _rounded(sum(known) / len(known)) if known else None


def _rounded(value: float) -> float:
    return round(value, DIGITS)


# The ablation table.

# The metrics of the table and the plot, in order, with their labels.
TABLE_METRICS: tuple[tuple[str, str], ...] = (
    ("recall_at_k", "retrieval recall@k"),
    ("mrr", "retrieval MRR"),
    ("supported_claims", "supported claims"),
    ("abstention_precision", "abstention precision"),
    ("abstention_recall", "abstention recall"),
    ("mctsr_gain", "MCTSr gain (Q)"),
    ("valid_citations", "valid citations"),
    ("answer_f1", "answer F1 (crude)"),
    ("calls", "model calls"),
    ("tokens", "tokens"),
    ("cost", "cost (USD)"),
    ("wall_seconds", "wall time (s)"),
)

# The metrics that are shares, in [0, 1].
SHARE_METRICS = frozenset(("recall_at_k", "mrr", "supported_claims", "abstention_precision", "abstention_recall", "valid_citations", "answer_f1"))


def format_value(value: object) -> str:
    """A score as the tables show it: "n/a" for no value, integers as they are, fractions to 3 decimals."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".") if value != int(value) else f"{value:.0f}"
    return str(value)


def ablation_table(runs: Sequence[EvalRun]) -> str:
    """The Markdown table: one row per metric, one column per run."""
    header = "| metric | " + " | ".join(run["name"].replace("|", "\\|") for run in runs) + " |"
    rule = "|---|" + "---:|" * len(runs)
    counts = ("| questions done | " + " | ".join(f"{run['overall']['done']}/{run['overall']['questions']}" for run in runs) + " |",)
    rows = [f"| {label} | " + " | ".join(format_value(run["overall"][key]) for run in runs) + " |" for key, label in TABLE_METRICS]  # type: ignore[literal-required]
    return "\n".join([header, rule, *counts, *rows])


QUESTION_COLUMNS: tuple[tuple[str, str], ...] = (
    ("status", "status"),
    ("recall_at_k", "recall@k"),
    ("mrr", "MRR"),
    ("supported_claims", "supported"),
    ("abstained", "abstained"),
    ("expected_abstain", "should abstain"),
    ("mctsr_gain", "gain"),
    ("valid_citations", "valid cit."),
    ("answer_f1", "F1"),
    ("calls", "calls"),
    ("wall_seconds", "wall s"),
)


def questions_table(run: EvalRun) -> str:
    """The Markdown table of one run's questions."""
    header = "| question | thread | " + " | ".join(label for _, label in QUESTION_COLUMNS) + " |"
    rule = "|---|---|" + "---|" * len(QUESTION_COLUMNS)
    rows = [
        f"| {_cell(q['question'])} | {q['thread_id']} | " + " | ".join(format_value(q[key]) for key, _ in QUESTION_COLUMNS) + " |"  # type: ignore[literal-required]
        for q in run["questions"]
    ]
    return "\n".join([header, rule, *rows])


def _cell(text: str, limit: int = 80) -> str:
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return text.replace("|", "\\|")


PLOT_ALT = "scores per run"


def summary_markdown(runs: Sequence[EvalRun], *, source: str, plot: str | None) -> str:
    """``eval.md``: the ablation table, the plot (``plot``: its file name beside it), and each run's questions."""
    parts = [
        "# Evaluation",
        f"Questions: `{source}`. One thread per question and run; docs/evaluation.md says how each score is computed.",
        ablation_table(runs),
        f"![{PLOT_ALT}]({plot})" if plot else "_No plot: matplotlib is not installed (pip install 'deepstep[notebooks]')._",
    ]
    for run in runs:
        parts.append(f"## {run['name']}")
        parts.append(questions_table(run))
    return "\n\n".join(parts) + "\n"


__all__ = [
    "EVAL_SETTINGS",
    "PLOT_ALT",
    "SHARE_METRICS",
    "TABLE_METRICS",
    "ablation_table",
    "abstained",
    "citation_counts",
    "expected_abstention",
    "format_value",
    "matches",
    "mctsr_gain",
    "overall_scores",
    "parse_questions",
    "parse_setting",
    "question_scores",
    "questions_table",
    "report_answer",
    "report_claims",
    "retrieval_scores",
    "run_name",
    "run_settings",
    "summary_markdown",
    "token_f1",
]
