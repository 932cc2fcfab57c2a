"""JSON that every reader accepts: Python's ``json`` writes ``NaN`` and ``Infinity``, which are not
JSON (``jq``, JavaScript and dreamsboard's loaders reject them). A score that is not a finite
number (a damaged import, a critic's ``1e999``) is written as ``null``. And the objects of a JSON
Lines file a user wrote, each bad line one ``InputError`` naming it."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

from deepstep.errors import InputError


def finite(value: Any) -> Any:
    """``value`` with every NaN or infinite float inside lists, tuples and dicts replaced by ``None``."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite(item) for item in value]
    return value


def dumps(value: Any, **options: Any) -> str:
    """``json.dumps`` that writes ``null`` for NaN and infinities instead of invalid JSON."""
    try:
        return json.dumps(value, allow_nan=False, **options)
    except ValueError:  # only walk the value again when it holds a non-finite number
        return json.dumps(finite(value), allow_nan=False, **options)


def objects_by_line(text: str, name: str, example: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """Each non-blank line of JSON Lines ``text`` as (line number, object); a line that is not a JSON object is an
    ``InputError`` naming ``name`` and the line, showing ``example`` (an object as the file should hold)."""
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            fields = json.loads(line)
        except (ValueError, RecursionError) as error:
            raise InputError(f"{name} line {number}: not JSON ({error}); each line must be an object like {example}") from None
        if not isinstance(fields, dict):
            raise InputError(f"{name} line {number}: a {type(fields).__name__}, not an object like {example}")
        yield number, fields


__all__ = ["dumps", "finite", "objects_by_line"]
