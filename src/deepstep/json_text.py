"""JSON that every reader accepts: Python's ``json`` writes ``NaN`` and ``Infinity``, which are not
JSON (``jq``, JavaScript and dreamsboard's loaders reject them). A score that is not a finite
number (a damaged import, a critic's ``1e999``) is written as ``null``."""

from __future__ import annotations

import json
import math
from typing import Any


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


__all__ = ["dumps", "finite"]
