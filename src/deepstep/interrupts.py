"""Ctrl-C during a run: no model call starts after it, and every answered call stays checkpointed.

LangGraph runs the fanned-out steps in worker threads, while Python delivers SIGINT to the main
thread only. A plain ``KeyboardInterrupt`` there leaves the workers alone: LangGraph's executor
waits for every step already submitted, so each remaining step would make all its model calls
before the interrupt surfaced. So while a run streams (``stop_on_ctrl_c``), Ctrl-C only marks the
run as stopping; every model call of the run (``unless_stopped``) checks that mark first, and a
call in flight gets ``GRACE_SECONDS`` to finish (its answer is then checkpointed by its node)
before it is abandoned. The run then unwinds with ``RunInterrupted`` from whichever thread sees
the mark; a second Ctrl-C raises it in the main thread at once.

The call runs in the node's own thread: the model HTTP client (``model_http``, ``call_limits``)
waits for a free slot and for the reply in slices of ``POLL_SECONDS`` and asks ``check_stop``
between them. (A thread per call, waited on from the node's thread, cost about 0.3 ms of CPU per
call.) The OpenAI client's back-off between two attempts is not sliced: a stop during it takes
effect when the next attempt would start, or at a second Ctrl-C.

A process that runs its runs outside the main thread (a queue worker: ``deepstep worker``) stops
them all with ``stop_every_run`` (on SIGTERM), with a grace long enough for the calls in flight to
finish; a run that starts after it is stopped before its first model call.
"""

from __future__ import annotations

import contextvars
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")

GRACE_SECONDS = 0.5  # a call in flight at Ctrl-C may finish within this, else it is abandoned
POLL_SECONDS = 0.25  # the longest a model call's wait goes without looking at the stop mark (half the grace)


class RunInterrupted(KeyboardInterrupt):
    """The run stopped at Ctrl-C; resuming its thread continues it.

    A ``KeyboardInterrupt``: node wrappers and retry policies (``except Exception``) let it through,
    so an interrupted step is neither retried nor recorded as failed."""


class _Stop:
    # Plain attributes, set by the signal handler: taking a lock there could deadlock the main thread.
    requested = False
    stopped_at = 0.0  # time.monotonic() when requested was set
    grace_seconds = GRACE_SECONDS  # how long a call in flight at the stop may still take

    def request(self, grace_seconds: float) -> None:
        if not self.requested:
            self.stopped_at = time.monotonic()
        self.grace_seconds = grace_seconds if not self.requested else min(self.grace_seconds, grace_seconds)
        self.requested = True


_current: contextvars.ContextVar[_Stop | None] = contextvars.ContextVar("deepstep_stop", default=None)
# The runs of this process, for stop_every_run; a set of their marks (adding and removing are atomic under the GIL).
_active: set[_Stop] = set()
_every_run_stopped: _Stop | None = None  # set by stop_every_run: runs that start later stop at once


def stop_every_run(grace_seconds: float) -> None:
    """Stop every run of this process, as Ctrl-C stops one, from any thread: no model call starts after
    this, and a call in flight may take ``grace_seconds`` more to finish (its answer is then kept)."""
    global _every_run_stopped
    mark = _Stop()
    mark.request(grace_seconds)
    _every_run_stopped = mark
    for stop in list(_active):
        stop.request(grace_seconds)


@contextmanager
def stop_on_ctrl_c() -> Iterator[None]:
    """For the duration of a run: Ctrl-C stops its model calls (see the module docstring).

    The mark travels in a context variable, which LangGraph copies into its worker threads.
    The SIGINT handler is installed only in the main thread, and not when SIGINT is ignored."""
    stop = _Stop()
    if _every_run_stopped is not None:
        stop.request(_every_run_stopped.grace_seconds)
    _active.add(stop)
    token = _current.set(stop)
    install = threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN
    previous: Any = None

    def on_sigint(signum: int, frame: Any) -> None:
        if stop.requested:
            _quiet_abandoned_workers()
            raise RunInterrupted("interrupted again while stopping")
        stop.request(GRACE_SECONDS)  # no lock taken: the mark's attributes are plain

    if install:
        previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        if install:
            # None: the handler was not set from Python; Python's own is the closest to restore.
            signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
        _current.reset(token)
        _active.discard(stop)


def _quiet_abandoned_workers() -> None:
    """A second Ctrl-C tears the run down under its worker threads: a step finishing then cannot save
    its writes into the shut executor, and Python would print that as a traceback. The answers in
    flight are lost either way (the resume repeats them); the traceback would only alarm the user."""
    logging.getLogger("concurrent.futures").disabled = True  # "exception calling callback for <Future>"
    threading.excepthook = lambda args: None


def unless_stopped(call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``call(*args, **kwargs)`` (one model request), unless the run is stopping: then ``RunInterrupted``.

    Outside ``stop_on_ctrl_c`` (a graph driven directly, Studio) this is just the call. Inside, the
    request's waits end through ``check_stop`` when the run stops."""
    stop = _current.get()
    if stop is None:
        return call(*args, **kwargs)
    if stop.requested:
        raise RunInterrupted("stopped before a model call")
    try:
        return call(*args, **kwargs)
    except Exception as error:
        if stop.requested:
            # Failing after Ctrl-C is part of stopping, not a model fault to retry or record.
            raise RunInterrupted("a model call in flight failed while stopping") from error
        raise


def check_stop(*, sent: bool) -> None:
    """For a model request's waits, every ``POLL_SECONDS`` at most: ``RunInterrupted`` when the run is
    stopping, at once if the request is not ``sent`` yet, else once the stop's grace has passed."""
    stop = _current.get()
    if stop is None or not stop.requested:
        return
    if not sent:
        raise RunInterrupted("stopped before a model call")
    if time.monotonic() - stop.stopped_at > stop.grace_seconds:
        raise RunInterrupted("abandoned a model call in flight")


def watched() -> bool:
    """Whether this thread's model requests must look at a stop mark while they wait."""
    return _current.get() is not None


__all__ = ["GRACE_SECONDS", "POLL_SECONDS", "RunInterrupted", "check_stop", "stop_every_run", "stop_on_ctrl_c", "unless_stopped", "watched"]
