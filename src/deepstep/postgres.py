"""Postgres connections for scale-out: connecting without ever showing the password, one-line errors, and
the advisory lock that serializes schema creation between workers (used by the checkpointer and the retriever).

Postgres support is optional (``pip install 'deepstep[postgres]'``): importing this module without it
raises a ``ConfigError`` that says how to install it, so callers import it only when a database is configured.
The retriever is in ``deepstep.postgres_retrieval``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

from deepstep.errors import ConfigError
from deepstep.redaction import redact_url


def not_installed(error: ImportError) -> ConfigError:
    """The error for a missing dependency of the optional Postgres support: how to install it, or to do without."""
    return ConfigError(
        f"DEEPSTEP_DATABASE_URL is set but the Postgres support is not installed ({error.name} is missing): "
        "pip install 'deepstep[postgres]', or unset DEEPSTEP_DATABASE_URL to use SQLite"
    )


try:
    import psycopg
    from psycopg.rows import tuple_row
except ImportError as error:
    raise not_installed(error) from None

# Session advisory-lock key that serializes schema creation and checkpointer migrations between workers.
SCHEMA_LOCK_KEY = 0x64656570_73746570  # "deepstep"
SCHEMA_LOCK_WAIT_SECONDS = 120


def connection_error(url: str, error: Exception, *, then: str = "") -> ConfigError:
    """A one-line error for a failed connection that never shows the password; ``then`` is a further hint."""
    detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    detail = detail.replace(url, redact_url(url))  # libpq quotes a URL it cannot parse
    try:
        password = urlsplit(url).password
    except ValueError:  # e.g. an unclosed IPv6 bracket
        password = None
    if password:
        detail = detail.replace(password, "***")
    if isinstance(error, psycopg.OperationalError):
        return ConfigError(f"cannot use the Postgres database {redact_url(url)}: {detail}; start it or fix DEEPSTEP_DATABASE_URL{then}")
    return ConfigError(f"the Postgres database {redact_url(url)} refused a deepstep query: {detail}; check its version (13 or later) and permissions")


def connect(url: str, *, application_name: str = "deepstep", **kwargs: Any) -> psycopg.Connection[Any]:
    """An autocommit connection; connection failures become a ``ConfigError`` without the password."""
    try:
        return psycopg.connect(url, autocommit=True, application_name=application_name, connect_timeout=10, **kwargs)
    except psycopg.Error as error:
        raise connection_error(url, error) from None


@contextmanager
def schema_lock(connection: psycopg.Connection[Any]) -> Iterator[None]:
    """Serialize ``CREATE ... IF NOT EXISTS`` between workers: concurrent DDL on one name can fail.

    Polls ``pg_try_advisory_lock`` rather than blocking in ``pg_advisory_lock``: a session blocked
    inside a statement keeps a snapshot open, and the checkpointer's ``CREATE INDEX CONCURRENTLY``
    (run under this lock) waits for every open snapshot, so holder and waiter would deadlock."""
    deadline = time.monotonic() + SCHEMA_LOCK_WAIT_SECONDS
    while True:
        with connection.cursor(row_factory=tuple_row) as cursor:
            row = cursor.execute("SELECT pg_try_advisory_lock(%s)", (SCHEMA_LOCK_KEY,)).fetchone()
            if row and row[0]:  # its one row says whether this session took the lock
                break
        if time.monotonic() > deadline:
            raise ConfigError(
                f"another deepstep worker has held the Postgres schema lock for {SCHEMA_LOCK_WAIT_SECONDS} s "
                "while creating tables; check for a stuck worker (pg_stat_activity) and try again"
            )
        time.sleep(0.05)
    try:
        yield
    finally:
        connection.execute("SELECT pg_advisory_unlock(%s)", (SCHEMA_LOCK_KEY,))


__all__ = ["connect", "connection_error", "not_installed", "schema_lock"]
