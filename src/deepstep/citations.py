"""Citation checking (pure): answers cite contexts by position as ``[n]``."""

from __future__ import annotations

import re

_CITATION = re.compile(r"\s?\[(\d+)\]")


def remove_invalid_citations(text: str, context_count: int) -> tuple[str, int]:
    """Drop citations that point at no context; return the text and how many were dropped."""
    removed = 0

    def keep_or_drop(match: re.Match[str]) -> str:
        nonlocal removed
        if 1 <= int(match.group(1)) <= context_count:
            return match.group(0)
        removed += 1
        return ""

    return _CITATION.sub(keep_or_drop, text), removed


def cited_numbers(text: str) -> list[int]:
    """Distinct citation numbers in order of first appearance."""
    seen: dict[int, None] = {}
    for match in _CITATION.finditer(text):
        seen.setdefault(int(match.group(1)), None)
    return list(seen)
