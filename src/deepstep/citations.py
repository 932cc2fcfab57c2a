"""Citation checking (pure): answers cite contexts by position as ``[n]`` (or grouped, ``[1, 3]``).

Text inside code (```fenced``` blocks and `inline` spans) is never a citation: ``coef_[0]`` stays intact.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

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


def remove_invalid_citations(text: str, context_count: int) -> tuple[str, int]:
    """Drop citation numbers that point at no context; return the text and how many were dropped."""
    removed = 0

    def keep_valid(match: re.Match[str]) -> str:
        nonlocal removed
        numbers = _numbers(match)
        valid = [n for n in numbers if 1 <= n <= context_count]
        removed += len(numbers) - len(valid)
        if len(valid) == len(numbers):
            return match.group(0)
        if not valid:
            return ""
        space = " " if match.group(0)[0].isspace() else ""
        return f"{space}[{', '.join(map(str, valid))}]"

    return _sub_citations(text, keep_valid), removed


def cited_numbers(text: str) -> list[int]:
    """Distinct citation numbers in order of first appearance."""
    seen: dict[int, None] = {}
    for prose, part in _prose_parts(text):
        if prose:
            for match in _CITATION.finditer(part):
                for number in _numbers(match):
                    seen.setdefault(number, None)
    return list(seen)
