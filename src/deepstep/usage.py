"""Model usage accounting: per role, the calls, tokens, retries, repairs, fallbacks and seconds a run spent.

Pure: the graph state sums step updates with ``add_usage`` (its reducer), and the model layer counts with it."""

from __future__ import annotations

USAGE_FIELDS = ("calls", "prompt_tokens", "completion_tokens", "retries", "repairs", "fallbacks", "seconds")

# Role (e.g. "answer") -> field of USAGE_FIELDS -> total.
Usage = dict[str, dict[str, float]]


def add_usage(left: Usage | None, right: Usage | None) -> Usage:
    """Sum usage per role and field."""
    total = {role: dict(fields) for role, fields in (left or {}).items()}
    for role, fields in (right or {}).items():
        merged = dict(total.get(role, {}))
        for field, value in fields.items():
            merged[field] = merged.get(field, 0) + value
        total[role] = merged
    return total


__all__ = ["USAGE_FIELDS", "Usage", "add_usage"]
