"""At most ``max_concurrency`` model calls in flight per model server (base URL + model), in this process.

LangGraph bounds a fan-out only when the caller passes ``max_concurrency``: ``deepstep run`` does, but
``graph.invoke`` without it and ``langgraph dev`` / Studio (which pass none) start every step of a plan
at once. The bound is held here, in the HTTP transport every model request goes through, so it holds
whatever runs the graph. Nodes are synchronous (LangGraph runs them in worker threads under asyncio
too), so one thread-safe limit serves both. A slot is held for one HTTP request: the OpenAI client's
back-off between retries waits outside it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class InFlightLimit:
    """Requests in flight to one model server. Each caller brings its bound, so runs with different
    settings in one process share the server and each waits until fewer than its own bound are in flight."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._in_flight = 0

    @property
    def in_flight(self) -> int:
        with self._changed:
            return self._in_flight

    @contextmanager
    def slot(self, bound: int) -> Iterator[None]:
        with self._changed:
            self._changed.wait_for(lambda: self._in_flight < bound)
            self._in_flight += 1
        try:
            yield
        finally:
            with self._changed:
                self._in_flight -= 1
                self._changed.notify_all()


_limits: dict[tuple[str, str], InFlightLimit] = {}
_limits_lock = threading.Lock()


def limit_for(base_url: str, model: str) -> InFlightLimit:
    """The one limit of the model ``model`` at ``base_url`` in this process."""
    key = (base_url.rstrip("/"), model)
    with _limits_lock:
        return _limits.setdefault(key, InFlightLimit())
