"""Structured-output schemas and tolerant parsing of model replies (pure, no I/O).

Small models wrap JSON in code fences, add prose around it, use single quotes or
trailing commas, or give a score as "85/100". ``parse_reply`` recovers what it can and
validates with pydantic; what it cannot recover raises ``ReplyParseError`` with a
message that can be sent back to the model as a repair request. ``require_usable_text``
rejects a free-text reply that is empty or declines the task, so the node retries it.
"""

from __future__ import annotations

import ast
import copy
import functools
import json
import math
import re
from typing import Any, TypeVar

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from deepstep.errors import StructuredOutputError
from deepstep.records import Verdict
from deepstep.step_tree import normalize_level

T = TypeVar("T", bound=BaseModel)


class StepItem(BaseModel):
    name: str = Field(description="Short title of the step")
    description: str = Field(default="", description="One or two sentences on what the step covers")
    level: str = Field(description="Position in the hierarchy: 0, 0>1, 0>1>1, 0>2 ...")

    @field_validator("level", mode="before")
    @classmethod
    def _level_as_text(cls, value: Any) -> str:
        return str(value)


class StepList(BaseModel):
    steps: list[StepItem] = Field(min_length=1)

    @model_validator(mode="after")
    def _some_step_is_usable(self) -> StepList:
        # Single bad steps are dropped later with a warning; a list with none usable is a bad reply.
        if not any(item.name.strip() and normalize_level(item.level) for item in self.steps):
            raise ValueError('no step has both a name and a level like "0" or "0>1"')
        return self


# The plan's generation limits (step_list_schema): a small model asked for "up to 8 steps" writes one or two,
# and without bounds a string field can run on until max_tokens cuts the JSON.
MIN_PLANNED_STEPS = 3
STEP_NAME_CHARS = 80
STEP_DESCRIPTION_CHARS = 240


def step_list_schema(max_steps: int, max_depth: int) -> dict[str, Any]:
    """``StepList``'s JSON schema with the run's limits, for a server that constrains generation by it (llama.cpp
    turns it into a grammar): 3 to ``max_steps`` steps (fewer when ``max_steps`` is smaller), short names and
    descriptions, levels that are paths no deeper than ``max_depth``. ``StepList`` itself stays the validator:
    these limits shape what the model writes, they reject nothing a server sends back."""
    schema = copy.deepcopy(StepList.model_json_schema())
    steps = schema["properties"]["steps"]
    steps.update(minItems=min(MIN_PLANNED_STEPS, max_steps), maxItems=max_steps)
    item = schema["$defs"]["StepItem"]["properties"]
    item["name"].update(minLength=1, maxLength=STEP_NAME_CHARS)
    item["description"]["maxLength"] = STEP_DESCRIPTION_CHARS
    item["level"]["pattern"] = f"^[0-9]{{1,3}}(>[0-9]{{1,3}}){{0,{max_depth - 1}}}$"
    return schema


class RefineResponse(BaseModel):
    """A refined answer and the reasoning that led to it (the MCTSr refine output)."""

    thought: str = Field(default="", description="What was changed and why")
    answer: str = Field(min_length=1, description="The complete improved answer")

    @field_validator("answer")
    @classmethod
    def _answer_has_words(cls, value: str) -> str:
        # SmolLM2 sometimes fills the field with "{": a reply to repair, not an answer to keep.
        if not any(char.isalnum() for char in value):
            raise ValueError(f"the answer {value[:20]!r} has no words")
        return value


class Score(BaseModel):
    score: int = Field(ge=-100, le=100, description="Integer from -100 to 100")

    @field_validator("score", mode="before")
    @classmethod
    def _score_from_text(cls, value: Any) -> Any:
        if isinstance(value, str):
            number = _first_number(value)
            if number is None:
                raise ValueError(f"score {value[:40]!r} is not a number")
            return number
        if isinstance(value, float):
            if not math.isfinite(value):
                raise ValueError(f"score {value} is not a finite number")
            return round(value)
        return value


# How models word a verdict besides the three names: read as the verdict they mean.
_VERDICT_WORDS: dict[str, Verdict] = {
    "supported": "supported",
    "support": "supported",
    "fully supported": "supported",
    "partial": "partial",
    "partially supported": "partial",
    "partly supported": "partial",
    "unsupported": "unsupported",
    "not supported": "unsupported",
    "contradicted": "unsupported",
}


class ClaimVerdict(BaseModel):
    """The verifier's verdict on one numbered claim."""

    claim: int = Field(description="The claim's number, as listed")
    verdict: Verdict = Field(description="supported, partial or unsupported by the contexts the claim cites")

    @field_validator("claim", mode="before")
    @classmethod
    def _number_from_text(cls, value: Any) -> Any:
        # "2", "Claim 2", "[2]": the number the prompt gave it.
        if isinstance(value, str):
            number = _first_number(value)
            return value if number is None else number
        return value

    @field_validator("verdict", mode="before")
    @classmethod
    def _verdict_from_words(cls, value: Any) -> Any:
        if isinstance(value, str):
            words = " ".join(re.sub(r"[^a-z]+", " ", value.lower()).split())
            return _VERDICT_WORDS.get(words, value)
        return value


class ClaimVerdicts(BaseModel):
    """The verify role's reply: a verdict per numbered claim of one answer (the MCTSr verifier output)."""

    verdicts: list[ClaimVerdict] = Field(description="One entry per claim")


class ReplyParseError(ValueError):
    """The reply does not contain a valid object of the expected schema."""


_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")
# No score, level or count needs more digits. Python refuses int() of more than 4300 digits, so
# a longer integer in JSON is read as a float (out of every range, or infinite) instead.
MAX_INT_DIGITS = 100


def _rounded(number: str) -> int | None:
    """``number`` rounded to an int; ``None`` when it is too large to be a number we can use."""
    value = float(number)
    return round(value) if math.isfinite(value) else None


def _first_number(text: str) -> int | None:
    match = _NUMBER.search(text)
    return _rounded(match.group()) if match else None


def _bounded_int(digits: str) -> int | float:
    return int(digits) if len(digits) <= MAX_INT_DIGITS else float(digits)


def load_json(text: str) -> Any:
    """``json.loads`` for untrusted text: a ``ValueError`` (``json.JSONDecodeError`` for bad syntax)
    also for nesting too deep to parse, and integers too long for Python read as floats."""
    try:
        return json.loads(text, parse_int=_bounded_int)
    except RecursionError:
        raise ValueError("the JSON is nested too deeply") from None


def _balanced_objects(text: str) -> list[str]:
    """Every top-level ``{...}`` span, respecting quoted strings."""
    spans, depth, start, quote, escaped = [], 0, -1, "", False
    for index, char in enumerate(text):
        if quote:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == quote:
                quote = ""
            continue
        if char in "\"'" and depth > 0:
            quote = char
        elif char == "{":
            if depth == 0:
                start = index
            depth += 1
        elif char == "}" and depth > 0:
            depth -= 1
            if depth == 0:
                spans.append(text[start : index + 1])
    return spans


def _loads_lenient(candidate: str) -> Any:
    try:
        return load_json(candidate)
    except json.JSONDecodeError:
        pass
    except ValueError:  # nested too deeply: no repair makes it usable
        raise ReplyParseError("the reply is not valid JSON") from None
    without_trailing_commas = re.sub(r",\s*([}\]])", r"\1", candidate)
    try:
        return load_json(without_trailing_commas)
    except json.JSONDecodeError:
        pass
    except ValueError:
        raise ReplyParseError("the reply is not valid JSON") from None
    # A reply cut off by max_tokens: close the open string and brackets. A cut-off number is
    # ambiguous (4 may have been 40), so such a reply is not completed.
    if candidate.lstrip().startswith("{") and not re.search(r"[\d.+-]$", candidate.rstrip()):
        for suffix in ('"}', "}", '"]}', "]}", '"}]}', "}]}"):
            try:
                return load_json(without_trailing_commas + suffix)
            except ValueError:
                continue
    # Single-quoted dicts are valid Python literals; literal_eval never executes code.
    pythonish = re.sub(r"\btrue\b", "True", re.sub(r"\bfalse\b", "False", re.sub(r"\bnull\b", "None", without_trailing_commas)))
    try:
        value = ast.literal_eval(pythonish)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise ReplyParseError("the reply is not valid JSON") from None
    return value


def extract_json(text: str) -> Any:
    """The first JSON value found in a reply: whole text, fenced block, or a ``{...}`` span."""
    stripped = text.strip()
    if not stripped:
        raise ReplyParseError("the reply is empty")
    candidates = [stripped, *(m.strip() for m in _FENCE.findall(stripped)), *_balanced_objects(stripped)]
    for candidate in candidates:
        try:
            return _loads_lenient(candidate)
        except ReplyParseError:
            continue
    raise ReplyParseError("the reply contains no valid JSON object")


def parse_reply(text: str, schema: type[T]) -> T:
    """Parse and validate a reply into ``schema``, tolerating the usual small-model slips."""
    if schema is Score:
        return parse_score(text)  # type: ignore[return-value]
    data = extract_json(text)
    if schema is StepList and isinstance(data, list):
        data = {"steps": data}
    if schema is ClaimVerdicts:
        data = _verdict_list(data)
    if schema is RefineResponse and isinstance(data, dict) and "answer" not in data:
        for alias in ("refined_answer", "improved_answer", "response", "text"):
            if isinstance(data.get(alias), str):
                data = {**data, "answer": data[alias]}
                break
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        details = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in exc.errors()[:5])
        raise ReplyParseError(f"the JSON does not match the schema ({details})") from None


def _verdict_list(data: Any) -> Any:
    """``{"verdicts": [...]}`` from what a small model sends instead: a bare list, or the list under ``claims``."""
    if isinstance(data, list):
        return {"verdicts": data}
    if isinstance(data, dict) and "verdicts" not in data and isinstance(data.get("claims"), list):
        return {**data, "verdicts": data["claims"]}
    return data


def parse_score(text: str) -> Score:
    """A score from JSON (``{"score": 85}``) or text (``Score: 85/100``, ``85``)."""
    try:
        data = extract_json(text)
    except ReplyParseError:
        data = None
    if isinstance(data, dict):
        for key in ("score", "reward", "rating", "value"):
            if key in data:
                try:
                    return Score.model_validate({"score": data[key]})
                except ValidationError:
                    raise ReplyParseError(f"score {str(data[key])[:40]!r} is not an integer from -100 to 100") from None
    if isinstance(data, (int, float)) and not isinstance(data, bool):
        return _score_in_range(round(data) if math.isfinite(data) else None)
    if data is None and text.strip().startswith("{"):
        raise ReplyParseError('the JSON reply is incomplete: answer with {"score": n}')
    match = re.search(r"(?i)(?:score|reward|rating)\s*[:=]?\s*([-+]?\d+(?:\.\d+)?)", text) or _NUMBER.search(text)
    if match is None:
        raise ReplyParseError("the reply has no score: answer with an integer from -100 to 100")
    return _score_in_range(_rounded(match.group(1) if match.groups() else match.group()))


def _score_in_range(value: int | None) -> Score:
    """``None`` stands for a number too large to use (e.g. ``1e999``)."""
    if value is None or not -100 <= value <= 100:
        raise ReplyParseError(f"score {'too large' if value is None else value} is outside -100..100")
    return Score(score=value)


@functools.cache  # generating a pydantic JSON schema costs more than the rest of a call's preparation
def schema_instructions(schema: type[BaseModel]) -> str:
    """The JSON schema as text, for prompts when the server cannot enforce it."""
    return "Reply with one JSON object only, no prose and no code fences, matching this JSON schema:\n" + json.dumps(
        schema.model_json_schema(), ensure_ascii=False
    )


# A short reply that declines the task ("I'm sorry, but I can't help with that.") instead of doing it.
# A reasoning model's thinking (DeepSeek-R1, Qwen3, ...): a <think> block, one left open when the reply
# was cut off, or, when the chat template already opened the block in the prompt, everything up to </think>.
_THINK_BLOCK = re.compile(r"<think(?:ing)?>.*?(?:</think(?:ing)?>|\Z)", re.IGNORECASE | re.DOTALL)
_THINK_OPEN = re.compile(r"<think(?:ing)?>", re.IGNORECASE)
_THINK_CLOSE = re.compile(r"</think(?:ing)?>", re.IGNORECASE)


def without_thinking(text: str) -> str:
    """``text`` without a reasoning model's thinking, so no answer, plan or score is ever read from
    inside it (a model may "think" of a score of 100 before it gives 40)."""
    close = _THINK_CLOSE.search(text)
    opening = _THINK_OPEN.search(text)
    if close and (opening is None or close.start() < opening.start()):
        text = text[close.end() :]  # the block was opened by the chat template, not in the reply
    return _THINK_BLOCK.sub("", text).strip()


_REFUSAL = re.compile(
    r"^\W*(?:(?:(?:I'?m|I am) )?sorry|I apologi[sz]e|as an ai(?: language model)?)\b.{0,120}?\b(?:can(?:no|['’])?t|unable|won['’]t|not able)\b"
    r"|^\W*I (?:can(?:no|['’])?t|won['’]t|am unable to|['’]m unable to|am not able to) (?:help|assist|comply|answer|provide|do that)",
    re.IGNORECASE | re.DOTALL,
)
MAX_REFUSAL_CHARS = 300


def looks_like_refusal(text: str) -> bool:
    return len(text) <= MAX_REFUSAL_CHARS and _REFUSAL.search(text.strip()) is not None


def require_usable_text(task: str, text: str) -> str:
    """``text``, unless it is empty or a refusal: then a ``StructuredOutputError``, retried like an unparsable reply."""
    if not text.strip():
        raise StructuredOutputError(f"{task}: the model returned an empty reply")
    if looks_like_refusal(text):
        raise StructuredOutputError(f"{task}: the model refused the task ({text.strip()[:80]!r})")
    return text


_MISSING_LINE = re.compile(r"^[\s*_>-]*missing[\s*_]*:[\s*_]*(.*?)[\s*_]*$", re.IGNORECASE | re.MULTILINE)
_NOTHING_MISSING = re.compile(r"^(?:none|nothing|n/?a|no|-+|\(none\))\W*$", re.IGNORECASE)


def missing_information(critique: str) -> str | None:
    """What a critique says the contexts lack (its ``Missing: ...`` line, as the prompt asks), or None when
    it has no such line or says nothing is missing."""
    found = [match.group(1).strip() for match in _MISSING_LINE.finditer(critique)]
    wanted = [text for text in found if text and not _NOTHING_MISSING.match(text)]
    return wanted[-1] if wanted else None


_QUERY_LABEL = re.compile(r"^[\W_]*(?:search\s+)?query[*_\s]*:[*_\s]*", re.IGNORECASE)


def first_line(text: str) -> str:
    """The first non-empty line of a reply: a small model may go on with an essay after the one line asked for."""
    return next((line.strip() for line in text.strip().splitlines() if line.strip()), "")


def research_question_and_query(reply: str) -> tuple[str, str]:
    """The research question (the reply's first line) and, when the prompt asked for one, the ``Search query:``
    line after it ("" when the model wrote none)."""
    question = first_line(reply)
    for line in reply.strip().splitlines()[1:]:
        if _QUERY_LABEL.match(line):
            return question, search_query_text(line)
    return question, ""


def search_query_text(reply: str) -> str:
    """One search query from a reply: its first line that is not a preamble ("Here is the query:"), without a
    ``Query:`` label or wrapping quotes."""
    lines = [line.strip() for line in reply.strip().splitlines() if line.strip()]
    query = next((line for line in lines if not line.endswith(":")), lines[0] if lines else "")
    return _QUERY_LABEL.sub("", query).strip().strip("\"'`“”「」").strip()
