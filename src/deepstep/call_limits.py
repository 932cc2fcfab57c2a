"""At most ``max_concurrency`` model calls in flight per model server (base URL + model), in this process.

LangGraph bounds a fan-out only when the caller passes ``max_concurrency``: ``deepstep run`` does, but
``graph.invoke`` without it and ``langgraph dev`` / Studio (which pass none) start every step of a plan
at once. The bound is held here, in the HTTP transport every model request goes through, so it holds
whatever runs the graph. Nodes are synchronous (LangGraph runs them in worker threads under asyncio
too), so one thread-safe limit serves both. A slot is held for one HTTP request: the OpenAI client's
back-off between retries waits outside it. A rate-limited server makes the limit adapt (``InFlightLimit``).
With ``database_url`` set, the limit is shared by every worker process on that database instead
(``shared_call_limits.SharedInFlightLimit``, the same ``CallLimit`` interface); without it nothing here
touches a database.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol

from deepstep.interrupts import POLL_SECONDS, check_stop

# Additive increase: one more call allowed in flight after this many successes per call allowed in a row.
INCREASE_AFTER = 16


class CallLimit(Protocol):
    """What the model transport needs of a limit: a slot per request, and what the server said."""

    def slot(self, bound: int) -> AbstractContextManager[float]: ...

    def rate_limited(self, started: float, retry_after: float | None, bound: int) -> None: ...

    def succeeded(self, bound: int) -> None: ...


class InFlightLimit:
    """Requests in flight to one model server. Each caller brings its bound, so runs with different
    settings in one process share the server and each waits until fewer than its own bound are in flight.

    When the server says it is rate-limited (HTTP 429, or 503 with Retry-After) the limit adapts (AIMD):
    every call to it waits until its Retry-After, and the calls allowed in flight halve, once per such
    event (rejections of calls sent before the last decrease are the same event); after
    ``INCREASE_AFTER`` successes per allowed call in a row, one more is allowed, up to the bound.
    Below one call in flight (a server that answers faster than its rate allows) calls are paced
    instead: the time between their starts doubles on each event (at least the Retry-After) and
    shrinks by ``1 / (2 * INCREASE_AFTER)`` on each success, until pacing ends.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._in_flight = 0
        self._allowed: int | None = None  # None: no rate limit met since the bound was last reached
        self._paused_until = 0.0  # time.monotonic() before which no call starts (the server's Retry-After)
        self._last_decrease = float("-inf")
        self._successes = 0
        self._interval = 0.0  # seconds between call starts, when one call in flight is still too many
        self._next_start = 0.0

    @property
    def in_flight(self) -> int:
        with self._changed:
            return self._in_flight

    @property
    def allowed(self) -> int | None:
        """Calls allowed in flight since the server rate-limited us, or None (the caller's bound)."""
        with self._changed:
            return self._allowed

    def _ceiling(self, bound: int) -> int:
        return bound if self._allowed is None else min(bound, self._allowed)

    @contextmanager
    def slot(self, bound: int) -> Iterator[float]:
        """Hold one of the calls allowed in flight; gives the time the call started, for ``rate_limited``."""
        with self._changed:
            while True:
                pause = max(self._paused_until, self._next_start) - time.monotonic()
                if pause <= 0 and self._in_flight < self._ceiling(bound):
                    break
                # Woken by a freed slot, or after a slice: a stopped run gives up its place.
                self._changed.wait(min(pause, POLL_SECONDS) if pause > 0 else POLL_SECONDS)
                check_stop(sent=False)
            self._in_flight += 1
            started = time.monotonic()
            self._next_start = started + self._interval
        try:
            yield started
        finally:
            with self._changed:
                self._in_flight -= 1
                self._changed.notify_all()

    def rate_limited(self, started: float, retry_after: float | None, bound: int) -> None:
        """The call started at ``started`` was refused for the rate: pause, and halve the calls in flight."""
        with self._changed:
            now = time.monotonic()
            if retry_after is not None:
                self._paused_until = max(self._paused_until, now + min(retry_after, MAX_PAUSE))
            if started > self._last_decrease:
                if self._ceiling(bound) == 1:
                    self._interval = max(2 * self._interval, retry_after or 0.0, MIN_INTERVAL)
                self._allowed = max(1, self._ceiling(bound) // 2)
                self._last_decrease = now
                self._successes = 0
            self._changed.notify_all()

    def succeeded(self, bound: int) -> None:
        with self._changed:
            if self._allowed is None:
                return
            if self._interval:
                self._interval *= 1 - 1 / (2 * INCREASE_AFTER)
                self._interval = 0.0 if self._interval < MIN_INTERVAL else self._interval
                return
            self._successes += 1
            if self._successes >= INCREASE_AFTER * self._allowed:
                self._successes = 0
                self._allowed = None if self._allowed + 1 >= bound else self._allowed + 1
                self._changed.notify_all()


# A Retry-After past this is not waited for by every call: the OpenAI client's own retries take over.
MAX_PAUSE = 60.0
MIN_INTERVAL = 0.01  # seconds: pacing starts here and ends below it


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """The server's Retry-After (``retry-after-ms``, or ``retry-after`` in seconds), or None."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) * scale
        except ValueError:
            continue  # an HTTP date: rare from model servers; the OpenAI client still honours it
        if seconds >= 0 and seconds == seconds:  # not NaN
            return seconds
    return None


_limits: dict[tuple[str, str], InFlightLimit] = {}
_limits_lock = threading.Lock()


def limit_for(base_url: str, model: str) -> InFlightLimit:
    """The one limit of the model ``model`` at ``base_url`` in this process."""
    key = (base_url.rstrip("/"), model)
    with _limits_lock:
        return _limits.setdefault(key, InFlightLimit())
