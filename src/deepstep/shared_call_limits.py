"""The calls-in-flight limit of a model server shared by every process on one Postgres database.

Without a database each process adapts on its own (``call_limits.InFlightLimit``), so ten workers each
send their own bound to one API key and each learns the rate limit alone. With ``database_url`` set,
``SharedInFlightLimit`` keeps the same AIMD limit in two tables every worker reads and writes:

- ``deepstep_model_limits``: one row per model server (``server_key``: the base URL without user,
  password or query, a space, the model, and the machine's name for a loopback URL; never a key),
  holding the calls allowed in flight (NULL: the callers' bound), the pause until the server's
  Retry-After, the pacing interval and the next start, the time of the last decrease and the successes since.
  Times are seconds by the database's clock, so the workers' clocks need not agree.
- ``deepstep_model_calls``: one lease per call in flight (``holder``: the backend pid of the worker's
  connection, ``expires_at``: the call's deadline plus a margin).

Taking a slot is one transaction holding the server's row lock: wait while paused (or until the next
paced start), count the leases, and insert one if fewer than the ceiling (the caller's bound, or the
allowed count when lower) are in flight. The view is not stale: every slot is decided on the shared
state of that moment. A release deletes the lease and sends ``NOTIFY``; waiters (one thread per process,
the others queue behind it locally) wake on it, or re-check every ``POLL_SECONDS`` at the latest, so a
freed slot is taken at most that late. The one stale view: a process counts a success only if the limit
was below the bound when that call took its slot, so just after a first decrease a few successes may go
uncounted (the recovery starts a few calls later). A 429 seen by any worker halves the shared allowed
count (once per event: rejections of calls started before the last decrease are the same event) and sets
the shared pause; successes add one back per ``INCREASE_AFTER`` x allowed successes, up to the bound, as
in one process.

A worker that dies holding leases: a lease whose holder's session has ended (``pg_stat_activity``) is
reclaimed when the others next find the ceiling reached; the session of a SIGKILLed process ends at once
(its operating system closes the socket). A worker that is alive but stuck, or whose machine vanished
without closing the connection, holds its leases at most until they expire: the request deadline
(``timeout``) plus ``LEASE_MARGIN_SECONDS``, by which its call has run past its deadline. Cost: two
short transactions per model call (0.5 ms wall, 0.3 ms client CPU on a local server; a third while the
server is rate-limited, to count the success), none without ``database_url``.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from deepstep.call_limits import INCREASE_AFTER, MAX_PAUSE, MIN_INTERVAL
from deepstep.errors import ConfigError
from deepstep.interrupts import check_stop

LEASE_MARGIN_SECONDS = 5.0
POLL_SECONDS = 0.1  # a waiter re-checks at least this often, even when no release is announced
NOTIFY_CHANNEL = "deepstep_model_calls"

SCHEMA = """
CREATE TABLE IF NOT EXISTS deepstep_model_limits (
    server_key text PRIMARY KEY,
    allowed integer,
    paused_until double precision NOT NULL DEFAULT 0,
    next_start double precision NOT NULL DEFAULT 0,
    pacing_interval double precision NOT NULL DEFAULT 0,
    last_decrease double precision NOT NULL DEFAULT '-infinity',
    successes integer NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS deepstep_model_calls (
    id bigserial PRIMARY KEY,
    server_key text NOT NULL,
    holder integer NOT NULL,
    started_at double precision NOT NULL,
    expires_at double precision NOT NULL
);
CREATE INDEX IF NOT EXISTS deepstep_model_calls_server ON deepstep_model_calls (server_key);
"""
_NOW = "extract(epoch from clock_timestamp())::double precision"


def server_key(base_url: str, model: str) -> str:
    """What identifies a model server across workers: scheme, host, port and path (no user, password or
    query, which may carry a key), and the model. A loopback address names a different server on each
    machine (e.g. each one's embedded model), so its key also names the machine."""
    parts = urlsplit(base_url.strip())
    host = parts.hostname or ""
    machine = f" on {socket.gethostname()}" if _is_loopback(host) else ""
    host = f"[{host}]" if ":" in host else host
    netloc = f"{host}:{parts.port}" if parts.port else host
    return f"{urlunsplit((parts.scheme.lower(), netloc, parts.path.rstrip('/'), '', ''))} {model}{machine}"


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class LimitState:
    """One server's row of ``deepstep_model_limits`` (times in seconds by the database's clock)."""

    allowed: int | None = None  # None: no rate limit met since the bound was last reached
    paused_until: float = 0.0
    next_start: float = 0.0
    interval: float = 0.0
    last_decrease: float = float("-inf")
    successes: int = 0

    def ceiling(self, bound: int) -> int:
        return bound if self.allowed is None else min(bound, self.allowed)


def after_rate_limit(state: LimitState, *, now: float, started: float, retry_after: float | None, bound: int) -> LimitState:
    """The state after a call started at ``started`` was refused for the rate (``InFlightLimit.rate_limited``)."""
    paused_until = state.paused_until if retry_after is None else max(state.paused_until, now + min(retry_after, MAX_PAUSE))
    if started <= state.last_decrease:  # sent before the last decrease: the same event
        return replace(state, paused_until=paused_until)
    interval = max(2 * state.interval, retry_after or 0.0, MIN_INTERVAL) if state.ceiling(bound) == 1 else state.interval
    return LimitState(
        allowed=max(1, state.ceiling(bound) // 2),
        paused_until=paused_until,
        next_start=state.next_start,
        interval=interval,
        last_decrease=now,
        successes=0,
    )


def after_success(state: LimitState, *, bound: int) -> LimitState:
    """The state after a call succeeded (``InFlightLimit.succeeded``)."""
    if state.allowed is None:
        return state
    if state.interval:
        interval = state.interval * (1 - 1 / (2 * INCREASE_AFTER))
        return replace(state, interval=0.0 if interval < MIN_INTERVAL else interval)
    successes = state.successes + 1
    if successes < INCREASE_AFTER * state.allowed:
        return replace(state, successes=successes)
    return replace(state, successes=0, allowed=None if state.allowed + 1 >= bound else state.allowed + 1)


_COLUMNS = "allowed, paused_until, next_start, pacing_interval, last_decrease, successes"


def _state(row: Any) -> LimitState:
    allowed, paused_until, next_start, interval, last_decrease, successes = row
    return LimitState(allowed, paused_until, next_start, interval, last_decrease, successes)


class SharedInFlightLimit:
    """The calls-in-flight limit of one model server, shared through Postgres (see the module docstring).
    Same interface as ``InFlightLimit``: ``slot(bound)``, ``rate_limited``, ``succeeded``."""

    def __init__(self, database_url: str, key: str, *, lease_seconds: float) -> None:
        self._url, self.key, self.lease_seconds = database_url, key, lease_seconds
        self._connection: Any = None  # psycopg.Connection, opened on first use
        self._listener: Any = None  # a second connection that LISTENs for released leases
        self._statements = threading.Lock()  # one transaction at a time on the shared connection
        self._front = threading.Lock()  # one thread per process waits on the database; the others here
        self._limited = False  # the last state read had a limit below the bound: successes are written

    def _connect(self) -> Any:
        from deepstep.postgres import connect, schema_lock

        if self._connection is None or self._connection.closed:
            connection = connect(self._url, application_name="deepstep-call-limits")
            with schema_lock(connection):
                connection.execute(SCHEMA)
            connection.execute("INSERT INTO deepstep_model_limits (server_key) VALUES (%s) ON CONFLICT DO NOTHING", (self.key,))
            self._connection = connection
        return self._connection

    def _transaction(self, work: Any) -> Any:
        """``work(connection)`` in one transaction; a database that fails is a one-line ``ConfigError``."""
        import psycopg

        from deepstep.postgres import connection_error

        with self._statements:
            try:
                connection = self._connect()
                with connection.transaction():
                    return work(connection)
            except psycopg.Error as error:
                if self._connection is not None:
                    self._connection.close()
                raise connection_error(self._url, error, then=" (it holds the shared model-call limits)") from None

    def _best_effort(self, work: Any) -> None:
        """``work`` after a call has been answered: the answer counts even if the database failed meanwhile.
        The failed connection is closed, so its session's leases are reclaimed as a dead worker's."""
        try:
            self._transaction(work)
        except ConfigError:
            pass  # the next slot reconnects, or says in one line why it cannot

    def _locked_state(self, connection: Any) -> tuple[LimitState, float]:
        row = connection.execute(f"SELECT {_COLUMNS}, {_NOW} FROM deepstep_model_limits WHERE server_key = %s FOR UPDATE", (self.key,)).fetchone()
        if row is None:  # deleted by hand while we ran: start again from no limit
            connection.execute("INSERT INTO deepstep_model_limits (server_key) VALUES (%s)", (self.key,))
            return LimitState(), connection.execute(f"SELECT {_NOW}").fetchone()[0]
        return _state(row[:6]), row[6]

    def _store(self, connection: Any, state: LimitState) -> None:
        connection.execute(
            "UPDATE deepstep_model_limits SET allowed = %s, paused_until = %s, next_start = %s, pacing_interval = %s, "
            "last_decrease = %s, successes = %s, updated_at = now() WHERE server_key = %s",
            (state.allowed, state.paused_until, state.next_start, state.interval, state.last_decrease, state.successes, self.key),
        )
        self._limited = state.allowed is not None or state.interval > 0

    def _try_take(self, bound: int) -> tuple[int, float] | float | None:
        """A lease (its id and start), or the seconds to wait before trying again (None: until a release)."""

        def take(connection: Any) -> tuple[int, float] | float | None:
            state, now = self._locked_state(connection)
            self._limited = state.allowed is not None or state.interval > 0
            wait = max(state.paused_until, state.next_start) - now
            if wait > 0:
                return wait
            in_flight = connection.execute("SELECT count(*) FROM deepstep_model_calls WHERE server_key = %s", (self.key,)).fetchone()[0]
            if in_flight >= state.ceiling(bound):  # reclaim the leases of dead or stuck workers, then count again
                reclaimed = connection.execute(
                    "DELETE FROM deepstep_model_calls WHERE server_key = %s AND (expires_at < %s "
                    "OR holder NOT IN (SELECT pid FROM pg_stat_activity WHERE pid IS NOT NULL))",
                    (self.key, now),
                )
                in_flight -= reclaimed.rowcount
                if in_flight >= state.ceiling(bound):
                    return None
            lease = connection.execute(
                "INSERT INTO deepstep_model_calls (server_key, holder, started_at, expires_at) VALUES (%s, pg_backend_pid(), %s, %s) RETURNING id",
                (self.key, now, now + self.lease_seconds),
            ).fetchone()[0]
            if state.interval:
                self._store(connection, replace(state, next_start=now + state.interval))
            return lease, now

        taken: tuple[int, float] | float | None = self._transaction(take)
        return taken

    def _listen(self) -> Any:
        from deepstep.postgres import connect

        if self._listener is None or self._listener.closed:
            self._listener = connect(self._url, application_name="deepstep-call-limits")
            self._listener.execute(f"LISTEN {NOTIFY_CHANNEL}")
        return self._listener

    def _wait_for_release(self, seconds: float) -> None:
        import psycopg

        try:
            for _ in self._listen().notifies(timeout=seconds, stop_after=1):
                pass
        except psycopg.Error:  # the next look at the table (which reconnects or says why not) decides
            self._listener.close()
            time.sleep(seconds)

    @contextmanager
    def slot(self, bound: int) -> Iterator[float]:
        """Hold one of the calls allowed in flight to this server across all workers; gives the time the
        call started (by the database's clock), for ``rate_limited``."""
        while not self._front.acquire(timeout=POLL_SECONDS):
            check_stop(sent=False)  # a stopped run gives up its place in the queue
        try:
            self._listen()  # before the first look, so no release between the look and the wait goes unheard
            while True:
                taken = self._try_take(bound)
                if isinstance(taken, tuple):
                    break
                if taken is None:
                    self._wait_for_release(POLL_SECONDS)
                else:
                    paused_until = time.monotonic() + min(taken, POLL_SECONDS * 10)
                    while (left := paused_until - time.monotonic()) > 0:
                        time.sleep(min(left, POLL_SECONDS))
                        check_stop(sent=False)
                check_stop(sent=False)
        finally:
            self._front.release()
        lease, started = taken
        try:
            yield started
        finally:

            def release(connection: Any) -> None:
                connection.execute("DELETE FROM deepstep_model_calls WHERE id = %s", (lease,))
                connection.execute(f"NOTIFY {NOTIFY_CHANNEL}")  # sent when the deletion commits

            self._best_effort(release)

    def rate_limited(self, started: float, retry_after: float | None, bound: int) -> None:
        def decrease(connection: Any) -> None:
            state, now = self._locked_state(connection)
            self._store(connection, after_rate_limit(state, now=now, started=started, retry_after=retry_after, bound=bound))

        self._best_effort(decrease)

    def succeeded(self, bound: int) -> None:
        if not self._limited:  # at the bound (as read when this call took its slot): nothing to add back
            return

        def increase(connection: Any) -> None:
            state, _ = self._locked_state(connection)
            self._store(connection, after_success(state, bound=bound))

        self._best_effort(increase)


_limits: dict[tuple[str, str], SharedInFlightLimit] = {}
_limits_lock = threading.Lock()


def shared_limit_for(database_url: str, base_url: str, model: str, *, lease_seconds: float) -> SharedInFlightLimit:
    """The one shared limit of the model ``model`` at ``base_url`` in this process; its leases last at
    least ``lease_seconds`` (a request's deadline plus ``LEASE_MARGIN_SECONDS``)."""
    if not database_url.startswith(("postgresql://", "postgres://")):
        raise ConfigError("the shared model-call limits need a Postgres database_url")
    key = (database_url, server_key(base_url, model))
    with _limits_lock:
        limit = _limits.setdefault(key, SharedInFlightLimit(database_url, key[1], lease_seconds=lease_seconds + LEASE_MARGIN_SECONDS))
        limit.lease_seconds = max(limit.lease_seconds, lease_seconds + LEASE_MARGIN_SECONDS)
        return limit
