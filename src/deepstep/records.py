"""The records deepstep passes between state, nodes, the step tree, rendering and the store.

TypedDicts, not classes: they are the plain JSON-like values LangGraph checkpoints and Studio
shows, and a type checker still catches a misspelt key. Their dreamsboard names are in
``dreamsboard_fields``. Pure: imports nothing from deepstep but the MCTSr search record.
"""

from __future__ import annotations

from typing import Literal

# typing_extensions' TypedDict: pydantic builds Studio's JSON schemas from these on Python 3.11.
from typing_extensions import NotRequired, TypedDict

from deepstep.mcts import Search

StepStatus = Literal["pending", "done", "failed", "insufficient_evidence"]
Verdict = Literal["supported", "partial", "unsupported"]


class Context(TypedDict):
    """A retrieved passage, as a step's state and ``deepstep corpus search --json`` hold it."""

    ref_id: str  # the document: a hash of its path in the corpus
    chunk_id: str  # the passage: a hash of the document and its position
    score: float  # the retriever's score, rounded (BM25 scores are corpus-relative)
    text: str
    title: str  # the document's title (its first heading, else its file name)
    source: str  # the document's path in the corpus
    page: NotRequired[int]  # paged documents (PDF, slides): the 1-based physical page where the passage starts
    page_end: NotRequired[int]  # ... and where it ends, when that is another page
    sheet: NotRequired[str]  # workbooks: the sheet's name


class FollowUpSearch(TypedDict):
    """One follow-up retrieval of a step: why it ran, the query the model wrote, and what it added."""

    reason: Literal["gate", "critique"]  # the evidence gate found no covering passage, or the critique found something missing
    missing: str  # what was missing, in the gate's or the critique's words
    query: str
    new_passages: NotRequired[int]  # passages it added to the step's contexts (set once it retrieved)


class Claim(TypedDict):
    """One sentence of an answer with the passages it cites and how well they support it."""

    text: str  # the sentence without its citation markers
    citations: list[int]  # 1-based numbers of the step's contexts
    verdict: Verdict
    support: float  # in [0, 1]
    start: NotRequired[int]  # where the sentence starts in the answer, its citations included
    end: NotRequired[int]  # where it ends (after its citations): the report marks an unsupported claim there
    lexical_verdict: NotRequired[Verdict]  # what the lexical check said, when the model verifier (verify = model) overturned it


ConfidenceLevel = Literal["high", "medium", "low"]


class Confidence(TypedDict):
    """How far a step's answer can be trusted, with the inputs the level was read from."""

    level: ConfidenceLevel
    best_q: float | None  # Q of the kept answer in the MCTSr search (-100..100); None without a score
    supported_share: float | None  # share of its claims the cited passages support; None without claims
    cited_passages: int  # distinct passages the answer cites
    retrieval_strength: float  # share of the research question's terms the best passage covers (0..1)


class PlannedStep(TypedDict):
    """What the fan-out tells a step about itself."""

    id: str
    name: str
    description: str
    level: str  # a level path: 0, 0>1, 0>1>1, ...
    note: NotRequired[str]  # a reviewer's note on an earlier answer, when the step is researched again
    research_question: NotRequired[str]  # a reviewer's own research question: the step asks the model for none


class Ancestor(TypedDict):
    """A step above the current one, shown in its prompts for context."""

    name: str
    level: str


class FinishedSearch(Search):
    """A step's MCTSr search once the step is done: ``best`` is the id of the answer kept."""

    best: int


class StepResult(TypedDict):
    """What a finished step reports to the run: ``collect`` merges it into the step's tree node."""

    id: str
    question: str  # the step's research question
    contexts: list[Context]
    removed_citations: int  # citations of passages that do not exist, removed from the answers
    truncated_contexts: int  # passages cut to fit the prompt budget
    status: StepStatus
    error: str  # why the step failed ("" when done)
    answer: str  # the best-Q answer of the MCTSr search
    mcts: FinishedSearch | Search | dict[str, object]  # the whole search; as far as it got, or {}, when the step failed
    claims: NotRequired[list[Claim]]  # the kept answer's claims with their verdicts
    dropped_claims: NotRequired[int]  # unsupported sentences removed from the answer (unsupported_claims = drop)
    confidence: NotRequired[Confidence]
    evidence: NotRequired[EvidenceCheck]  # insufficient_evidence: the gate's decision
    searches: NotRequired[list[FollowUpSearch]]  # the step's follow-up retrievals, in order
    search_query: NotRequired[str]  # the research question in the corpus's language (cross-language search)


class PassageOverlap(TypedDict):
    """How much of the research question one retrieved passage shares."""

    index: int  # position in the contexts (0-based; the citation number is index + 1)
    overlap: float  # weighted share of the question's terms found in the passage, in [0, 1]
    shared_terms: list[str]
    title: str
    source: str


class EvidenceCheck(TypedDict):
    """The evidence gate's decision for one step, with what a report needs to list the closest passages."""

    answerable: bool
    best_overlap: float
    closest: list[int]  # indexes of the contexts, highest overlap first (ties keep retrieval order)
    passages: list[PassageOverlap]  # in the order of ``closest``
    question_terms: list[str]


class FailedStep(TypedDict):
    """A step that failed for good, as the run lists it."""

    id: str
    level: str
    name: str
    error: str


class PendingExpansion(TypedDict):
    """The answer ``critique`` selected for refinement (a search node id) and its critique, kept
    in state so a run killed before ``refine`` resumes on the same answer."""

    parent: int
    critique: str


class StaleStep(TypedDict):
    """A step of a finished thread that a corpus change made out of date, and why (``freshness.stale_steps``)."""

    id: str
    level: str
    name: str
    reasons: list[str]  # e.g. "cited passage [2] changed", "retrieval now returns 2 new passages"


class Step(TypedDict):
    """A step node of the step tree (``step_tree.steps`` adds its ``id``)."""

    id: NotRequired[str]
    kind: Literal["step"]
    name: str
    description: str
    level: str
    question: str
    contexts: list[Context]
    answer: str
    status: StepStatus
    error: str
    mcts: FinishedSearch | Search | dict[str, object]
    removed_citations: NotRequired[int]
    truncated_contexts: NotRequired[int]
    dreamsboard_fields: NotRequired[dict[str, object]]  # an imported step's store fields deepstep does not map
    claims: NotRequired[list[Claim]]  # the kept answer's claims with their verdicts
    dropped_claims: NotRequired[int]
    confidence: NotRequired[Confidence]
    evidence: NotRequired[EvidenceCheck]
    searches: NotRequired[list[FollowUpSearch]]
    search_query: NotRequired[str]
    review_note: NotRequired[str]  # the note a rerun of the step was given ("" when none)
    fixed_question: NotRequired[str]  # a research question the reviewer wrote (``edit_question``); "" when the model writes it
    answer_source: NotRequired[Literal["model", "reviewer"]]  # who wrote the answer kept ("model" when absent)
    approved: NotRequired[bool]  # a reviewer approved the answer as it stands


StepActionName = Literal["rerun", "reject", "refresh", "edit_question", "edit_answer", "approve", "add", "remove"]


class StepAction(TypedDict):
    """One change a reviewer asks of a finished run (``deepstep.revise``, Studio's ``actions`` input)."""

    action: StepActionName
    step: str  # the step's id or level; for ``add``, the parent step ("" adds a top-level step)
    note: NotRequired[str]  # rerun, reject, edit_question: what the model should do better
    text: NotRequired[str]  # edit_question: the research question; edit_answer: the answer (cite passages as [n])
    name: NotRequired[str]  # add: the new step's name
    description: NotRequired[str]  # add: what the new step should cover


BatchAction = Literal["run", "resume", "retry", "skip"]
BatchStatus = Literal["done", "failed", "interrupted"]


class BatchQuestion(TypedDict):
    """One question of a batch file (``deepstep batch``), checked: its thread and the settings it runs with."""

    line: int  # where it is in the file (1-based), for messages
    question: str
    thread_id: str
    corpus: str | None  # as the file gives it (None: the environment's)
    settings: dict[str, object]  # the row's run-shaping settings as JSON values, over the environment's


class BatchOutcome(TypedDict):
    """What a worker reports about one question it ran."""

    status: BatchStatus
    error: str  # why it failed or stopped ("" when done)
    wall_seconds: float  # this batch command's time on it


class BatchRow(TypedDict):
    """One row of a batch's summary table (``summary.csv`` and ``summary.parquet``)."""

    question: str
    thread_id: str
    status: BatchStatus
    action: BatchAction  # what this batch command did with it
    steps: int
    failed_steps: int
    insufficient_steps: int  # steps the corpus did not cover (the evidence gate)
    calls: int
    tokens: int
    cost: float | None  # US dollars by the price table; None without prices
    wall_seconds: float  # summed over the batch commands that worked on it (the summary in --out keeps the earlier ones)
    low_confidence_share: float | None  # share of the steps with a confidence level that are low; None when none has one
    unsupported_claims: int  # claims of the report (answer and steps) their passages do not back
    error: str
    report: str  # the report's file name in --out ("" when the thread has none yet)


class Spending(TypedDict):
    """Model calls, tokens (prompt + completion) and dollars: what a run used, or what a part of it needs."""

    calls: int
    tokens: int
    cost: float | None  # None: a model the run uses has no price in ``prices``


class Estimate(Spending):
    """What the rest of a run needs after planning: ``calls`` is an upper bound (one request per call, no
    repair or retry), ``tokens`` and ``cost`` an estimate that errs high (``deepstep.budget`` says how)."""

    steps: int  # steps still to research


class BudgetCaps(TypedDict, total=False):
    """The caps a run was given (only those set): ``max_calls``, ``max_run_tokens``, ``max_cost`` (USD)."""

    max_calls: int
    max_run_tokens: int
    max_cost: float


class BudgetPause(TypedDict):
    """What a run paused by its budget says (the interrupt's payload): the caps, what was used, what the rest needs."""

    paused: Literal["budget"]
    caps: BudgetCaps
    used: Spending
    rest: Estimate


class PassageLabel(TypedDict):
    """A labelled answer passage of an evaluation question: a document, optionally narrowed to a page and/or a
    phrase from the answering sentence (so labels survive re-chunking, as in benchmarks/data)."""

    source: str  # the document's path in the corpus
    page: NotRequired[int]  # paged documents: the 1-based page the passage is on
    phrase: NotRequired[str]  # text the passage contains (case and whitespace ignored)


class EvalQuestion(TypedDict):
    """One question of an evaluation file (``deepstep eval``), checked, with its labels."""

    line: int  # where it is in the file (1-based), for messages
    question: str
    pages: list[PassageLabel]  # answer passages by document (and page, phrase)
    chunk_ids: list[str]  # answer passages by chunk id
    abstain: bool | None  # the corpus cannot answer it (True), can (False); None: not labelled
    reference: str | None  # a reference answer, for the crude token-overlap F1


class QuestionScores(TypedDict):
    """How one question's thread did in one evaluation run; None where the question has no label for it
    (or the thread no value: no claim, no scored step, not finished)."""

    question: str
    thread_id: str
    status: BatchStatus
    steps: int
    answered_steps: int
    insufficient_steps: int
    failed_steps: int
    k: int  # the run's top_k: how many passages of each step's own retrieval count
    recall_at_k: float | None  # share of the question's passage labels found in some step's first k passages
    mrr: float | None  # 1 / rank of the first labelled passage in some step's first k passages (0: none)
    claims: int  # claims of the report: the opening answer's and the answered steps'
    supported_claims: float | None  # share of them their cited passages back
    abstained: bool  # no step answered and at least one the corpus did not cover
    expected_abstain: bool | None
    scored_steps: int  # answered steps with a scored first draft
    mctsr_gain: float | None  # mean over those of (best final Q - the first draft's Q)
    citations: int  # citations the answers made, removed ones (pointing at no passage) included
    valid_citations: float | None  # share of them that point at a passage
    answer_f1: float | None  # token-overlap F1 of the report's answer with the reference (crude)
    calls: int
    tokens: int
    cost: float | None
    wall_seconds: float | None  # None: the thread finished before this output folder's evaluations measured it


class OverallScores(TypedDict):
    """One evaluation run summed up over its questions (``deepstep.evaluation.overall_scores`` says how)."""

    questions: int
    done: int
    retrieval_labelled: int
    recall_at_k: float | None
    mrr: float | None
    claims: int
    supported_claims: float | None
    abstention_labelled: int
    abstained: int
    abstention_precision: float | None
    abstention_recall: float | None
    scored_steps: int
    mctsr_gain: float | None
    citations: int
    valid_citations: float | None
    answer_f1: float | None
    calls: int
    tokens: int
    cost: float | None
    wall_seconds: float | None


class EvalRun(TypedDict):
    """One run of ``deepstep eval``: the whole question set under one ``--compare`` value (``DIR/eval.json``)."""

    name: str  # the --compare value ("rollouts=0"); without --compare, the --set values, or "default"
    settings: dict[str, object]  # the run-shaping settings every thread of the run used, as JSON values
    overall: OverallScores
    questions: list[QuestionScores]
