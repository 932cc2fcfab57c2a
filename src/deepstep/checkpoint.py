"""The on-disk checkpointer: SQLite under ``DEEPSTEP_HOME`` with the pickle-free tree serializer."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from langgraph.checkpoint.sqlite import SqliteSaver

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
        yield saver
    finally:
        connection.close()
