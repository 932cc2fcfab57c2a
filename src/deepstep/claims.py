"""Claims of an answer and how well the passages they cite back them, and the evidence gate (pure, model-free).

``split_claims`` cuts an answer into sentences with the citations each carries; ``check_claim`` and
``check_answer`` give every claim a verdict from the content terms it shares with its cited passages;
``evidence_gate`` decides whether retrieved passages cover a research question at all. The rules and
their thresholds are in docs/claims.md; a labelled set (tests/data/claims_sklearn.jsonl) measures them.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Literal, NamedTuple

from typing_extensions import TypedDict

from deepstep.citations import cited_numbers, renumber_citations
from deepstep.corpus import CJK_CHARACTERS
from deepstep.records import Claim, Context, EvidenceCheck, PassageOverlap, Verdict
from deepstep.text_terms import cjk_terms, stem_words, stopwords

TermKind = Literal["word", "name", "identifier", "number", "cjk"]

# A number or a named term says more about what a sentence claims than a common word does.
TERM_WEIGHTS: dict[TermKind, float] = {"word": 1.0, "cjk": 1.0, "name": 2.0, "identifier": 2.0, "number": 2.0}
# A claim naming a figure or a code object its passages do not contain states something they do not say.
EXACT_KINDS: frozenset[TermKind] = frozenset({"number", "identifier"})
SUPPORTED_AT = 0.7  # support from which a cited claim is "supported"
PARTIAL_AT = 0.4  # support from which it is "partial"; below, "unsupported"
GATE_MIN_TERMS = 2  # distinct question terms a passage must share to cover the question (fewer if the question has fewer)
GATE_MIN_OVERLAP = 1 / 3  # share of the question's (weighted) terms a passage must share...
GATE_ENOUGH_WEIGHT = 4.0  # ... or this much term weight: a long question (a paragraph from a small model) is covered by less than a third


class ClaimText(TypedDict):
    """A sentence of an answer without its citation markers, and the numbers it cites."""

    text: str
    citations: list[int]
    start: int  # where the sentence starts in the answer
    end: int  # where it ends there, after its stop and citations (the report marks an unsupported claim here)


# --- content terms ---

_CJK = CJK_CHARACTERS
# A number: optional sign, thousands groups or digits, decimals (several for a version: 1.2.3), exponent, percent.
# Not part of a word (l1, float64, 2D are named terms), but CJK may touch it (值为0.5).
_NUMBER = rf"""
    (?<![^\W{_CJK}])(?<!\.)
    (?P<number>[-\u2212]?(?=\.?\d)(?:\d{{1,3}}(?:,\d{{3}})+(?!\d)|\d*)(?:\.\d+)*(?:[eE][-+]?\d+)?)
    (?![^\W{_CJK}])
    (?P<percent>\s?%|\s+(?i:per\s?cent)\b)?
"""
_PIECE = re.compile(rf"{_NUMBER}|(?P<cjk>[{_CJK}]+)|(?P<word>[^\W{_CJK}]+)", re.VERBOSE)
_SENTENCE_BREAK = re.compile(r"[.!?\n。！？；]")
_NUMBER_WORDS = dict(
    zip(
        "zero one two three four five six seven eight nine ten eleven twelve twenty hundred thousand million".split(),
        ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "20", "100", "1000", "1000000"],
        strict=True,
    )
)


def _normal_number(digits: str, percent: bool) -> str:
    """``0.5`` and ``.5``, ``1,000`` and ``1000``, ``1e-3`` and ``0.001`` alike; versions (``1.2.3``) as written."""
    digits = digits.replace(",", "").replace("\u2212", "-")
    if digits.count(".") <= 1:
        try:
            value = Decimal(digits).normalize()
        except InvalidOperation:
            pass
        else:
            # A huge exponent would print thousands of zeros.
            digits = format(value, "f") if abs(value.adjusted()) < 30 else str(value)
            digits = "0" if digits == "-0" else digits
    return digits + ("%" if percent else "")


# camelCase or a capitalized word after capitals: GridSearchCV, KFold, SGDClassifier (not SVMs, DTs).
_CAMEL_CASE = re.compile(r"[a-z][A-Z]|[A-Z]{2}[a-z]{2}")


def _word_kind(token: str, at_sentence_start: bool) -> TermKind:
    """An identifier (``log_loss``, ``GridSearchCV``), another named term (an acronym such as ``MSE``, letters
    with digits such as ``l1``, a capitalized word not at the start of a sentence such as ``Ridge``), or a plain word."""
    if "_" in token or _CAMEL_CASE.search(token):
        return "identifier"
    # l1/l2 are no identifiers: the guide often writes them in LaTeX (\ell_1), so they would miss for no fault of the claim.
    if any(c.isdigit() for c in token) or any(c.isupper() for c in token[1:]) or (token[0].isupper() and not at_sentence_start):
        return "name"
    return "word"


def _pieces(text: str) -> Iterator[tuple[TermKind | Literal["token"], str]]:
    """``(kind, term)`` of every piece of ``text``; kind "token" is a lowercased word that is no content term
    (a stop word, one letter), still useful for matching named terms."""
    text = unicodedata.normalize("NFKC", text)
    previous_end = 0
    for match in _PIECE.finditer(text):
        at_start = previous_end == 0 or bool(_SENTENCE_BREAK.search(text, previous_end, match.start()))
        previous_end = match.end()
        if match.group("number") is not None:
            yield "number", _normal_number(match.group("number"), match.group("percent") is not None)
        elif match.group("cjk") is not None:
            for term in cjk_terms(match.group("cjk")):
                yield "cjk", term
        else:
            token = match.group("word")
            lowered = token.lower()
            if len(token) < 2 or not any(c.isalpha() for c in token) or lowered in stopwords():
                yield "token", lowered
            else:
                yield _word_kind(token, at_start), lowered


def content_terms(text: str) -> dict[str, TermKind]:
    """The content terms of ``text`` and their kinds: stemmed English words without stop words, CJK characters
    and bigrams, normalized numbers, identifiers and other named terms (lowercased, unstemmed).
    A term seen as a name and as a word is a name."""
    pieces = list(_pieces(text))
    words = [term for kind, term in pieces if kind == "word"]
    stems = iter(stem_words(words))
    terms: dict[str, TermKind] = {}
    for kind, term in pieces:
        if kind == "token":
            continue
        key = next(stems) if kind == "word" else term
        if terms.get(key) not in ("name", "identifier"):
            terms[key] = kind
    return terms


@dataclass(frozen=True)
class _Vocabulary:
    """What a passage (or question) says, in every form a claim's term may take."""

    stems: frozenset[str]  # stems of every word, named terms and identifier parts included
    tokens: frozenset[str]  # every word lowercased, unstemmed
    numbers: frozenset[str]  # normalized numbers, also without sign or percent, and number words
    cjk: frozenset[str]

    def union(self, other: _Vocabulary) -> _Vocabulary:
        return _Vocabulary(self.stems | other.stems, self.tokens | other.tokens, self.numbers | other.numbers, self.cjk | other.cjk)


@functools.lru_cache(maxsize=1024)
def _vocabulary(text: str) -> _Vocabulary:
    tokens: set[str] = set()
    numbers: set[str] = set()
    cjk: set[str] = set()
    for kind, term in _pieces(text):
        if kind == "number":
            bare = term.removesuffix("%")
            numbers.update({term, bare, bare.removeprefix("-")})
        elif kind == "cjk":
            cjk.add(term)
        else:
            tokens.add(term)
    numbers.update(_NUMBER_WORDS[token] for token in tokens if token in _NUMBER_WORDS)
    # log_loss also says "log" and "loss".
    words = {part for token in tokens for part in token.split("_") if len(part) > 1 and part not in stopwords()}
    return _Vocabulary(frozenset(stem_words(sorted(words | tokens))), frozenset(tokens), frozenset(numbers), frozenset(cjk))


def _passage_vocabulary(passages: Sequence[Context]) -> _Vocabulary:
    vocabulary = _Vocabulary(frozenset(), frozenset(), frozenset(), frozenset())
    for passage in passages:
        # The title belongs to every chunk of its document, as in the retrieval index.
        vocabulary = vocabulary.union(_vocabulary(f"{passage.get('title', '')}\n{passage['text']}"))
    return vocabulary


def _found(term: str, kind: TermKind, vocabulary: _Vocabulary) -> bool:
    if kind == "word":
        return term in vocabulary.stems
    if kind == "name":
        return term in vocabulary.tokens or stem_words([term])[0] in vocabulary.stems
    if kind == "identifier":
        return term in vocabulary.tokens
    if kind == "number":
        return term in vocabulary.numbers
    return term in vocabulary.cjk


def _shared(terms: dict[str, TermKind], vocabulary: _Vocabulary) -> tuple[float, list[str]]:
    """The weighted share of ``terms`` found in ``vocabulary`` and the terms found."""
    found = [term for term, kind in terms.items() if _found(term, kind, vocabulary)]
    total = sum(TERM_WEIGHTS[kind] for kind in terms.values())
    return (sum(TERM_WEIGHTS[terms[term]] for term in found) / total if total else 1.0), found


# --- claims ---

_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^\s{0,3}#{1,6}(\s|$)")
_UNDERLINE = re.compile(r"^\s{0,3}(=+|-+)\s*$")  # a setext heading's underline, or a rule after a blank line
_RULE = re.compile(r"^\s{0,3}([-*_])(\s*\1){2,}\s*$")
_ITEM = re.compile(r"^\s*(?:[-*+\u2022]|\d{1,9}[.)])\s+")
_QUOTE = re.compile(r"^\s*(?:>\s?)+")
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_CITES = r"(?:\s*\[\d+(?:\s*,\s*\d+)*\])*"
# A sentence end: its stop, closing quotes or brackets, the citations that follow it, then a space (Latin)
# or anything (CJK, written without spaces).
_END = re.compile(rf"""(?:[.!?]+["'\u201d\u2019)]*{_CITES}(?:\s+|$))|(?:[。！？；]+["'\u201d\u2019)\u300d\u300f]*{_CITES}\s*)""")
# A full stop after these is no sentence end...
_ABBREVIATIONS = frozenset("e.g i.e cf vs fig figs eq eqs sec ch no dr mr mrs ms prof st al approx resp".split())
# ... nor after these, unless a capital letter follows.
_MAYBE_FINAL_ABBREVIATIONS = frozenset("etc u.s u.k inc ltd jr sr".split())
_SPACE_BEFORE_STOP = re.compile(r"\s+([.,;:!?。！？；，])")
_WORD_BEFORE = re.compile(r"[^\s(\[\"'\u201c]*$")


class _Block(NamedTuple):
    """A paragraph or list item as one line, and where each of its characters is in the answer."""

    text: str
    positions: list[int]


def _blocks(answer: str) -> Iterator[_Block]:
    """Paragraphs and list items of a Markdown answer, each as one line; headings and code blocks left out."""
    block: list[tuple[int, str]] = []  # (where the line starts in the answer, the line)
    fenced = False
    offset = 0
    for raw in answer.splitlines(keepends=True):
        line_start, offset = offset, offset + len(raw)
        line = raw.rstrip("\r\n")
        if _FENCE.match(line):
            fenced = not fenced
            yield from _flush(block)
            continue
        if fenced:
            continue
        if _UNDERLINE.match(line) and block and not _ITEM.match(block[0][1]):
            block.clear()  # the paragraph above was a setext heading
            continue
        if not line.strip() or _HEADING.match(line) or _RULE.match(line):
            yield from _flush(block)
            continue
        quote = _QUOTE.match(line)
        if quote:
            line_start, line = line_start + quote.end(), line[quote.end() :]
        if _ITEM.match(line):
            yield from _flush(block)
        block.append((line_start, line))
    yield from _flush(block)


def _flush(block: list[tuple[int, str]]) -> Iterator[_Block]:
    if not block:
        return
    text = ""
    positions: list[int] = []  # where each character of text stands in the answer
    for line_start, line in block:
        lead = len(line) - len(line.lstrip())
        stripped = line.strip()
        if text:
            text, positions = text + " ", [*positions, positions[-1] + 1]
        text += stripped
        positions += range(line_start + lead, line_start + lead + len(stripped))
    item = _ITEM.match(text)
    if item:
        text, positions = text[item.end() :], positions[item.end() :]
    yield _Block(text, positions)
    block.clear()


def _is_sentence_end(block: str, end: re.Match[str], start: int) -> bool:
    if end.group(0)[0] != "." or end.group(0).startswith(".."):
        return True
    before = _WORD_BEFORE.search(block, start, end.start())
    word = before.group(0).lower() if before else ""
    if word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha() and block[end.start() - 1].isupper()):
        return False  # an abbreviation or an initial (J. Smith)
    if word in _MAYBE_FINAL_ABBREVIATIONS:
        following = block[end.end() : end.end() + 1]
        return following.isupper()
    return True


def _sentences(block: str) -> Iterator[tuple[int, int]]:
    """Where each sentence of ``block`` starts and ends (its stop, closing quotes and citations included)."""
    code = [span.span() for span in _CODE_SPAN.finditer(block)]
    start = 0
    for end in _END.finditer(block):
        if any(left <= end.start() < right for left, right in code) or not _is_sentence_end(block, end, start):
            continue
        yield start, len(block[: end.end()].rstrip())
        start = end.end()
    if start < len(block):
        yield start, len(block.rstrip())


def split_claims(answer: str) -> list[ClaimText]:
    """The sentences of ``answer`` (Markdown) with the citations each carries, markers removed from the text.

    Citations after a sentence's full stop belong to it; a line of citations alone goes to the sentence before."""
    claims: list[ClaimText] = []
    for block in _blocks(answer):
        for start, end in _sentences(block.text):
            sentence = block.text[start:end]
            citations = cited_numbers(sentence)
            # Every marker dropped, and the space a marker leaves before a stop ("penalty [1]." -> "penalty .").
            text = _SPACE_BEFORE_STOP.sub(r"\1", " ".join(renumber_citations(sentence, {})[0].split()))
            span = {"start": block.positions[start], "end": block.positions[end - 1] + 1} if end > start else None
            if any(c.isalnum() for c in text) and span:
                claims.append({"text": text, "citations": citations, **span})  # type: ignore[typeddict-item]
            elif claims and citations:
                claims[-1]["citations"] = list(dict.fromkeys(claims[-1]["citations"] + citations))
                if span:
                    claims[-1]["end"] = span["end"]  # a line of citations alone belongs to the sentence before
    return claims


def check_claim(text: str, cited: Sequence[Context], question: str) -> tuple[Verdict, float]:
    """The verdict and support of one claim (text without citation markers) against the passages it cites.

    support = weighted share of the claim's content terms found in the cited passages (titles included);
    a number or identifier found in none of them makes the claim unsupported. A claim citing nothing is supported only
    when all its terms come from the question (it restates it). See docs/claims.md."""
    terms = content_terms(text)
    if not terms:
        return "supported", 1.0  # nothing the passages could back or contradict ("Yes.", "In short:")
    if not cited:
        restated, _ = _shared(terms, _vocabulary(question))
        return ("supported", 1.0) if restated == 1.0 else ("unsupported", 0.0)
    vocabulary = _passage_vocabulary(cited)
    support, found = _shared(terms, vocabulary)
    support = round(support, 4)
    missing_exact_term = any(kind in EXACT_KINDS and term not in found for term, kind in terms.items())
    if missing_exact_term or support < PARTIAL_AT:
        return "unsupported", support
    return ("supported" if support >= SUPPORTED_AT else "partial"), support


def check_answer(answer: str, contexts: Sequence[Context], question: str) -> list[Claim]:
    """Every claim of ``answer`` with its verdict; a citation outside 1..len(contexts) counts as none."""
    claims: list[Claim] = []
    for claim in split_claims(answer):
        citations = [n for n in claim["citations"] if 1 <= n <= len(contexts)]
        verdict, support = check_claim(claim["text"], [contexts[n - 1] for n in citations], question)
        claims.append(
            {"text": claim["text"], "citations": citations, "verdict": verdict, "support": support, "start": claim["start"], "end": claim["end"]}
        )
    return claims


# Where each verdict's support lies: [low, high] (a band's upper edge is the next band's start, less the last decimal).
VERDICT_BANDS: dict[Verdict, tuple[float, float]] = {
    "supported": (SUPPORTED_AT, 1.0),
    "partial": (PARTIAL_AT, round(SUPPORTED_AT - 0.0001, 4)),
    "unsupported": (0.0, round(PARTIAL_AT - 0.0001, 4)),
}


def apply_verdicts(claims: Sequence[Claim], verdicts: Sequence[tuple[int, Verdict]]) -> list[Claim]:
    """``claims`` (checked lexically) with a model's verdicts, given as (claim number from 1, verdict).

    The lexical check runs first and stands wherever the model says nothing usable: a claim the model skips,
    a number outside 1..len(claims), a second verdict for the same claim (the first counts). A verdict that
    differs from the lexical one replaces it; the claim keeps its lexical support moved to the nearest value in
    the new verdict's band (VERDICT_BANDS), so verdict and support never disagree, and records the
    lexical verdict it overturned (``lexical_verdict``). See docs/claims.md."""
    chosen: dict[int, Verdict] = {}
    for number, verdict in verdicts:
        if 1 <= number <= len(claims):
            chosen.setdefault(number - 1, verdict)
    merged: list[Claim] = []
    for index, claim in enumerate(claims):
        verdict = chosen.get(index, claim["verdict"])
        if verdict == claim["verdict"]:
            merged.append(claim)
            continue
        low, high = VERDICT_BANDS[verdict]
        merged.append({**claim, "verdict": verdict, "support": min(max(claim["support"], low), high), "lexical_verdict": claim["verdict"]})
    return merged


def carry_verdicts(rechecked: Sequence[Claim], earlier: Sequence[Claim]) -> list[Claim]:
    """``rechecked`` (the claims of an edited answer, checked again) with the verdict, support and overturned
    lexical verdict of the earlier claim with the same text and citations, each earlier claim used once, in
    order: a sentence the edit left alone keeps what the verifier said of it."""
    unused = list(earlier)
    carried: list[Claim] = []
    for claim in rechecked:
        same = next((c for c in unused if (c["text"], c["citations"]) == (claim["text"], claim["citations"])), None)
        if same is None:
            carried.append(claim)
            continue
        unused.remove(same)
        verdict = {key: same[key] for key in ("verdict", "support", "lexical_verdict") if key in same}
        carried.append({**claim, **verdict})  # type: ignore[typeddict-item]
    return carried


# Put after a claim its cited passages do not back (unsupported_claims = mark); the report explains it once.
UNSUPPORTED_MARK = "[unsupported]"


def mark_unsupported(answer: str, claims: Sequence[Claim], *, drop: bool = False) -> str:
    """``answer`` with ``[unsupported]`` after each unsupported claim (or, with ``drop``, without those
    sentences). Claims carry where they end in the answer (``end``); ones without are left as they are."""
    for claim in sorted((c for c in claims if c["verdict"] == "unsupported" and "end" in c), key=lambda c: c["end"], reverse=True):
        end = claim["end"]
        if drop:
            answer = answer[: claim["start"]] + answer[end:].lstrip(" ")
        else:
            answer = f"{answer[:end].rstrip()} {UNSUPPORTED_MARK}{answer[end:]}"
    return answer.rstrip() if drop else answer


def count_verdict(claims: Sequence[Claim], verdict: Verdict) -> int:
    """How many of ``claims`` have ``verdict``."""
    return sum(1 for claim in claims if claim["verdict"] == verdict)


def unsupported_share(claims: Sequence[Claim]) -> float:
    """The share of ``claims`` their cited passages do not back (0 for an answer without claims)."""
    return count_verdict(claims, "unsupported") / len(claims) if claims else 0.0


# --- the evidence gate ---


# Words that frame a question rather than name its subject ("how is it used in practice", "what should
# I know about", "explain the role of"): a passage sharing only these says nothing about the subject.
QUESTION_FRAMING = frozenset(
    stem_words(
        "use used uses using practice practical know known work works working role explain describe "
        "example examples important importance purpose main key concept overview basic basics".split()
    )
)


def evidence_gate(research_question: str, contexts: Sequence[Context]) -> EvidenceCheck:
    """Whether any retrieved passage covers ``research_question``: it shares at least GATE_MIN_TERMS distinct
    content terms with it (all of them when the question has fewer) and at least GATE_MIN_OVERLAP of their
    weight (or GATE_ENOUGH_WEIGHT of it, for a long question), the question's framing words (QUESTION_FRAMING)
    left out. BM25 scores are not used: they rank passages within one corpus but say nothing across corpora.
    A question without content terms cannot be judged and passes when there is any passage."""
    terms = {term: kind for term, kind in content_terms(research_question).items() if term not in QUESTION_FRAMING}
    needed_terms = min(GATE_MIN_TERMS, len(terms))
    overlaps: list[PassageOverlap] = []
    answerable = False
    total_weight = sum(TERM_WEIGHTS[kind] for kind in terms.values())
    needed_overlap = min(GATE_MIN_OVERLAP, GATE_ENOUGH_WEIGHT / total_weight) if total_weight else 0.0
    for index, passage in enumerate(contexts):
        overlap, shared = _shared(terms, _passage_vocabulary([passage]))
        answerable = answerable or (len(shared) >= needed_terms and overlap >= needed_overlap)
        title, source = passage.get("title", ""), passage.get("source", "")
        overlaps.append({"index": index, "overlap": round(overlap, 4), "shared_terms": shared, "title": title, "source": source})
    overlaps.sort(key=lambda item: -item["overlap"])  # stable: ties keep retrieval order
    return {
        "answerable": answerable,
        "best_overlap": overlaps[0]["overlap"] if overlaps else 0.0,
        "closest": [item["index"] for item in overlaps],
        "passages": overlaps,
        "question_terms": list(terms),
    }


__all__ = [
    "VERDICT_BANDS",
    "ClaimText",
    "EvidenceCheck",
    "PassageOverlap",
    "apply_verdicts",
    "carry_verdicts",
    "check_answer",
    "check_claim",
    "content_terms",
    "evidence_gate",
    "split_claims",
]
