"""One process at a time per thread: a lock held for a whole run or resume.

With Postgres (``database_url``) the lock is a session advisory lock on a dedicated connection,
so workers on different machines exclude each other; with SQLite it is an exclusive ``flock``
on a file beside the checkpoint database. The operating system or the database server releases
both when the holder dies, so a crashed worker never leaves a thread locked.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deepstep.configuration import Settings
from deepstep.errors import ConfigError, ThreadBusyError

if TYPE_CHECKING:
    import psycopg

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
_HOLDER = re.compile(r"pid=(\d+) host=(\S+)")


def lock_file(settings: Settings, thread_id: str) -> Path:
    """The SQLite backend's lock file of ``thread_id`` (``HOME/locks/`` for the default database)."""
    safe = _UNSAFE.sub("_", thread_id)[:100]
    digest = hashlib.sha256(thread_id.encode("utf-8")).hexdigest()[:8]  # keeps sanitized names distinct
    return settings.checkpoint_file.parent / "locks" / f"{safe}-{digest}.lock"


def advisory_key(thread_id: str) -> int:
    """The signed 64-bit advisory-lock key of ``thread_id``."""
    digest = hashlib.sha256(f"deepstep thread {thread_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _holder_label() -> str:
    return f"pid={os.getpid()} host={socket.gethostname()}"


def _busy(thread_id: str, holder: str | None) -> ThreadBusyError:
    where = ""
    if holder and (match := _HOLDER.search(holder)):
        pid, host = match.groups()
        where = f" (pid {pid}" + ("" if host == socket.gethostname() else f" on {host}") + ")"
    return ThreadBusyError(f"thread {thread_id} is already running in another process{where}; wait for it, or pick another thread id")


@contextmanager
def thread_lock(settings: Settings, thread_id: str) -> Iterator[None]:
    """Hold the run lock of ``thread_id``; ``ThreadBusyError`` at once if another process holds it."""
    if settings.database_url is not None:
        with _advisory_lock(settings.database_url.get_secret_value(), thread_id):
            yield
    else:
        with _file_lock(lock_file(settings, thread_id), thread_id):
            yield


@contextmanager
def _file_lock(path: Path, thread_id: str) -> Iterator[None]:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise ConfigError(f"cannot create the lock file {path}: {error.strerror}; set DEEPSTEP_HOME to a writable folder") from None
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise _busy(thread_id, os.pread(descriptor, 200, 0).decode("utf-8", "replace")) from None
        # Who holds it, for the message another process prints; the lock itself is the flock.
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{_holder_label()}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(descriptor, 0)
            fcntl.flock(descriptor, fcntl.LOCK_UN)
    finally:
        os.close(descriptor)


@contextmanager
def _advisory_lock(database_url: str, thread_id: str) -> Iterator[None]:
    from deepstep import postgres  # optional: a ConfigError saying how to install it if missing

    key = advisory_key(thread_id)
    # A dedicated connection: the lock lives exactly as long as this session, and the
    # application name tells a refused worker which process holds it.
    with postgres.connect(database_url, application_name=f"deepstep-lock {_holder_label()}"[:63]) as connection:
        try:
            row = connection.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
            if not (row and row[0]):  # its one row says whether this session took the lock
                raise _busy(thread_id, _advisory_holder(connection, key))
        except postgres.psycopg.Error as error:
            raise postgres.connection_error(database_url, error) from None
        try:
            yield
        finally:
            try:
                connection.execute("SELECT pg_advisory_unlock(%s)", (key,))
            except postgres.psycopg.Error:
                pass  # the connection is gone, and the server released the lock with it


def _advisory_holder(connection: psycopg.Connection[Any], key: int) -> str | None:
    # pg_locks shows a bigint advisory key as two unsigned 32-bit halves.
    unsigned = key & 0xFFFFFFFFFFFFFFFF
    row = connection.execute(
        "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 AND l.classid = %s::bigint::oid "
        "AND l.objid = %s::bigint::oid AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        (unsigned >> 32, unsigned & 0xFFFFFFFF),
    ).fetchone()
    return row[0] if row else None


__all__ = ["advisory_key", "lock_file", "thread_lock"]
