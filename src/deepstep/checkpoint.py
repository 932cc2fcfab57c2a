"""The checkpointer, with the pickle-free tree serializer: SQLite under ``DEEPSTEP_HOME``, or Postgres
when ``database_url`` is set (several workers sharing one database)."""

from __future__ import annotations

import importlib
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.sqlite import SqliteSaver

from deepstep.configuration import Settings
from deepstep.errors import ConfigError
from deepstep.serde import TreeSerializer


@contextmanager
def sqlite_checkpointer(path: Path) -> Iterator[SqliteSaver]:
    """A ``SqliteSaver`` on ``path`` (created if needed), closed on exit, also after errors."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(str(path), check_same_thread=False)
    except (OSError, sqlite3.Error) as error:
        raise ConfigError(f"cannot open the checkpoint database {path}: {error}; set DEEPSTEP_HOME to a writable folder") from None
    try:
        saver = SqliteSaver(connection, serde=TreeSerializer())
        try:
            saver.setup()
        except sqlite3.DatabaseError as error:
            raise ConfigError(
                f"the checkpoint database {path} is unreadable ({error}); move it away or set DEEPSTEP_HOME to another folder"
            ) from None
        # setup() switched to WAL; NORMAL skips the fsync per commit (~7 ms, two per model call) and still
        # survives a killed process. Only a power cut may lose the last checkpoints, which resume redoes.
        connection.execute("PRAGMA synchronous=NORMAL")
        try:
            yield saver
        except sqlite3.DatabaseError as error:
            if isinstance(error, sqlite3.OperationalError):  # locked, read-only, I/O: not damage
                raise
            # Damage that the opening checks cannot see (a corrupt page) shows up on the first read.
            raise ConfigError(f"the checkpoint database {path} is damaged ({error}); move it away or set DEEPSTEP_HOME to another folder") from None
    finally:
        connection.close()


@contextmanager
def postgres_checkpointer(database_url: str) -> Iterator[BaseCheckpointSaver]:
    """A ``PostgresSaver`` on its own connection (tables created on first use), closed on exit."""
    postgres = postgres_module()
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
def open_checkpointer(settings: Settings) -> Iterator[BaseCheckpointSaver]:
    """The configured checkpointer: Postgres when ``database_url`` is set, else SQLite under ``home``."""
    if settings.database_url is not None:
        with postgres_checkpointer(settings.database_url.get_secret_value()) as saver:
            yield saver
    else:
        with sqlite_checkpointer(settings.checkpoint_file) as saver:
            yield saver


def checkpoint_location(settings: Settings) -> str:
    """Where threads are stored, for messages (the database password is never shown)."""
    if settings.database_url is not None:
        return f"the Postgres database {postgres_module().redact_url(settings.database_url.get_secret_value())}"
    return str(settings.checkpoint_file)


def postgres_module() -> ModuleType:
    """``deepstep.postgres``, or a ``ConfigError`` saying how to install its dependencies."""
    try:
        return importlib.import_module("deepstep.postgres")
    except ImportError as error:
        raise ConfigError(
            f"DEEPSTEP_DATABASE_URL is set but the Postgres support is not installed ({error.name} is missing): "
            "pip install 'deepstep[postgres]', or unset DEEPSTEP_DATABASE_URL to use SQLite"
        ) from None
