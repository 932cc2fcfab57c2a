"""The checkpointer, with the pickle-free tree serializer: SQLite under ``DEEPSTEP_HOME``, or Postgres
when ``database_url`` is set (several workers sharing one database)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.sqlite import SqliteSaver

from deepstep.configuration import Settings
from deepstep.errors import ConfigError
from deepstep.redaction import redact_url
from deepstep.tree_encoding import TreeSerializer

T = TypeVar("T")

# How long a write waits while another process writes to the same database (SQLite's busy
# timeout): far longer than any checkpoint write takes, short enough to report a stuck lock.
BUSY_TIMEOUT_SECONDS = 10.0


class _FailFastSqliteSaver(SqliteSaver):
    """A ``SqliteSaver`` that stops writing after one write failed on a locked, full or read-only
    database: every later checkpoint would wait out the busy timeout in turn and fail the same way,
    while the run kept calling the model for answers it cannot save."""

    write_error: sqlite3.OperationalError | None = None

    def put(self, *args: Any, **kwargs: Any) -> Any:
        return self._write(super().put, *args, **kwargs)

    def put_writes(self, *args: Any, **kwargs: Any) -> None:
        self._write(super().put_writes, *args, **kwargs)

    def _write(self, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self.write_error is not None:
            raise _copy(self.write_error)
        try:
            return method(*args, **kwargs)
        except sqlite3.OperationalError as error:
            self.write_error = error
            raise


def _copy(error: sqlite3.OperationalError) -> sqlite3.OperationalError:
    """A new exception like ``error`` (each thread that hits it raises its own)."""
    copy = sqlite3.OperationalError(*error.args)
    if hasattr(error, "sqlite_errorcode"):  # SQLite sets it; an error raised from Python code lacks it
        copy.sqlite_errorcode = error.sqlite_errorcode
    return copy


@contextmanager
def sqlite_checkpointer(path: Path, *, check_writable: bool = False) -> Iterator[SqliteSaver]:
    """A ``SqliteSaver`` on ``path`` (created if needed), closed on exit, also after errors.

    ``check_writable``: take the write lock once before returning, so a run finds a database
    another process keeps locked before its first model call, not at its first checkpoint.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(str(path), check_same_thread=False, timeout=BUSY_TIMEOUT_SECONDS)
    except (OSError, sqlite3.Error) as error:
        raise ConfigError(f"cannot open the checkpoint database {path}: {error}; set DEEPSTEP_HOME to a writable folder") from None
    try:
        saver = _FailFastSqliteSaver(connection, serde=TreeSerializer())
        try:
            saver.setup()
            if check_writable:
                connection.execute("BEGIN IMMEDIATE")
                connection.rollback()
        except sqlite3.OperationalError as error:  # locked, read-only, full, I/O: not damage
            raise ConfigError(_cannot_write(path, error)) from None
        except sqlite3.DatabaseError as error:
            raise ConfigError(
                f"the checkpoint database {path} is unreadable ({error}); move it away or set DEEPSTEP_HOME to another folder"
            ) from None
        # setup() switched to WAL; NORMAL skips the fsync per commit (~7 ms, two per model call) and still
        # survives a killed process. Only a power cut may lose the last checkpoints, which resume redoes.
        connection.execute("PRAGMA synchronous=NORMAL")
        try:
            yield saver
        except sqlite3.OperationalError as error:
            raise ConfigError(f"{_cannot_write(path, error)}; then continue the thread with `deepstep resume`") from None
        except sqlite3.DatabaseError as error:
            # Damage that the opening checks cannot see (a corrupt page) shows up on the first read.
            raise ConfigError(f"the checkpoint database {path} is damaged ({error}); move it away or set DEEPSTEP_HOME to another folder") from None
    finally:
        connection.close()


def _cannot_write(path: Path, error: sqlite3.OperationalError) -> str:
    """What keeps SQLite from writing ``path``, in the user's words (none of these is damage)."""
    code = getattr(error, "sqlite_errorcode", None)
    if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return (
            f"the checkpoint database {path} is locked by another process (waited {BUSY_TIMEOUT_SECONDS:g} s): "
            "let it finish, or set DEEPSTEP_HOME to another folder"
        )
    if code == sqlite3.SQLITE_FULL:
        return f"the disk holding the checkpoint database {path} is full: free some space, or set DEEPSTEP_HOME to a folder on another disk"
    if code == sqlite3.SQLITE_READONLY:
        return f"the checkpoint database {path} is read-only: make it writable, or set DEEPSTEP_HOME to a writable folder"
    # A disk that is full may also show as an I/O error (e.g. a file-size limit or quota).
    return (
        f"cannot write the checkpoint database {path} ({error}): check that its disk has free space and works, or set DEEPSTEP_HOME to another folder"
    )


@contextmanager
def postgres_checkpointer(database_url: str) -> Iterator[BaseCheckpointSaver]:
    """A ``PostgresSaver`` on its own connection (tables created on first use), closed on exit."""
    # deepstep.postgres first: without the optional Postgres support it raises a ConfigError saying how to install it.
    from deepstep import postgres  # noqa: I001
    from langgraph.checkpoint.postgres import PostgresSaver
    from psycopg.rows import dict_row

    # PostgresSaver needs autocommit, dict rows and no server-side prepared statements (poolers).
    with postgres.connect(database_url, application_name="deepstep-checkpointer", prepare_threshold=0, row_factory=dict_row) as connection:
        saver = PostgresSaver(connection, serde=TreeSerializer())
        try:
            with postgres.schema_lock(connection):
                saver.setup()
        except postgres.psycopg.Error as error:
            raise postgres.connection_error(database_url, error) from None
        try:
            yield saver
        except postgres.psycopg.OperationalError as error:
            # The database went away mid-run; every finished step is checkpointed.
            raise postgres.connection_error(database_url, error, then=", then continue the thread with `deepstep resume`") from None


@contextmanager
def open_checkpointer(settings: Settings, *, check_writable: bool = False) -> Iterator[BaseCheckpointSaver]:
    """The configured checkpointer: Postgres when ``database_url`` is set, else SQLite under ``home``
    (``check_writable``: for a run, fail now if another process keeps the SQLite database locked)."""
    if settings.database_url is not None:
        with postgres_checkpointer(settings.database_url.get_secret_value()) as saver:
            yield saver
    else:
        with sqlite_checkpointer(settings.checkpoint_file, check_writable=check_writable) as saver:
            yield saver


def checkpoint_location(settings: Settings) -> str:
    """Where threads are stored, for messages (the database password is never shown)."""
    if settings.database_url is not None:
        return f"the Postgres database {redact_url(settings.database_url.get_secret_value())}"
    return str(settings.checkpoint_file)
