"""Citation checking (pure): answers cite contexts by position as ``[n]`` (or grouped, ``[1, 3]``).

Text inside code (```fenced``` blocks and `inline` spans) is never a citation: ``coef_[0]`` stays intact.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence

from deepstep.records import Context

_CITATION = re.compile(r"\s?\[(\d+(?:\s*,\s*\d+)*)\]")
_CODE = re.compile(r"```.*?(?:```|\Z)|`[^`\n]*`", re.DOTALL)


def _numbers(match: re.Match[str]) -> list[int]:
    return [int(part) for part in match.group(1).split(",")]


def _prose_parts(text: str) -> Iterator[tuple[bool, str]]:
    """``(is_prose, part)`` pieces of ``text`` in order, code spans marked as not prose."""
    position = 0
    for code in _CODE.finditer(text):
        yield True, text[position : code.start()]
        yield False, code.group(0)
        position = code.end()
    yield True, text[position:]


def _sub_citations(text: str, replace: Callable[[re.Match[str]], str]) -> str:
    return "".join(_CITATION.sub(replace, part) if prose else part for prose, part in _prose_parts(text))


def renumber_citations(text: str, numbers: Mapping[int, int]) -> tuple[str, int]:
    """``text`` with each citation number ``n`` replaced by ``numbers[n]`` (a group keeps its order,
    without repeats); numbers missing from ``numbers`` are dropped, and their count returned.
    A citation whose numbers all stay the same is left exactly as written."""
    dropped = 0

    def renumber(match: re.Match[str]) -> str:
        nonlocal dropped
        old = _numbers(match)
        new = list(dict.fromkeys(numbers[n] for n in old if n in numbers))
        dropped += sum(1 for n in old if n not in numbers)
        if new == old:
            return match.group(0)
        space = " " if match.group(0)[0].isspace() else ""
        if not new:  # keep the space when a citation follows: "see [3][2]" -> "see [1]"
            return space if match.string.startswith("[", match.end()) else ""
        return f"{space}[{', '.join(map(str, new))}]"

    return _sub_citations(text, renumber), dropped


def remove_invalid_citations(text: str, context_count: int) -> tuple[str, int]:
    """Drop citation numbers that point at no context; return the text and how many were dropped."""
    return renumber_citations(text, {n: n for n in range(1, context_count + 1)})


def cited_contexts(text: str, context_count: int) -> list[int]:
    """The distinct citation numbers of ``text`` that point at one of ``context_count`` contexts, in order."""
    return [number for number in cited_numbers(text) if 1 <= number <= context_count]


def cited_numbers(text: str) -> list[int]:
    """Distinct citation numbers in order of first appearance."""
    seen: dict[int, None] = {}
    for prose, part in _prose_parts(text):
        if prose:
            for match in _CITATION.finditer(part):
                for number in _numbers(match):
                    seen.setdefault(number, None)
    return list(seen)


def count_citations(text: str) -> int:
    """How many citation numbers ``text`` holds, repeats included (``[1, 3] ... [1]`` is 3), as
    ``remove_invalid_citations`` counts the ones it drops."""
    return sum(len(_numbers(match)) for prose, part in _prose_parts(text) if prose for match in _CITATION.finditer(part))


def merge_contexts(contexts: Sequence[Context], found: Sequence[Context]) -> list[Context]:
    """``contexts`` followed by the passages of ``found`` they do not hold yet (by ``chunk_id``): a follow-up
    search only appends, so every citation ``[n]`` an answer already made keeps pointing at the same passage."""
    merged = list(contexts)
    held = {context["chunk_id"] for context in contexts}
    for context in found:
        if context["chunk_id"] not in held:
            merged.append(context)
            held.add(context["chunk_id"])
    return merged


# Sentence ends: Latin and CJK.
_SENTENCE_ENDS = ".!?。！？"
CITED_SENTENCE_CHARS = 200  # a longer sentence is where a small model loses the thread of its passage
CITED_SENTENCES = 6


def cited_sentences_grammar(passages: int) -> str:
    """A llama.cpp grammar (GBNF) for an answer whose every sentence ends with a citation of one of ``passages``:
    ``Sentence text. [2] Next sentence. [1]``: the model ends a sentence where it wants to, and the citation must
    follow. Inside a sentence a full stop may only be a decimal point (``0.5``) or go on into a name
    (``sklearn.linear_model``), so a model cannot run sentences together before their citation (SmolLM2 wrote
    footnote numbers, ``models.1 It is ...``, when a digit could follow any full stop)."""
    numbers = " | ".join(f'"{n}"' for n in range(1, max(passages, 1) + 1))
    return "\n".join(
        [
            f'root ::= sentence (" " sentence){{0,{CITED_SENTENCES - 1}}}',
            f'sentence ::= [^ \\n\\[\\]] text [{_SENTENCE_ENDS}] " [" number "]"',
            f'text ::= ([^{_SENTENCE_ENDS}\\[\\]\\n] | [0-9] "." [0-9] | "." [a-z_(]){{10,{CITED_SENTENCE_CHARS}}}',
            f"number ::= {numbers}",
        ]
    )
