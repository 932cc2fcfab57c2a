"""The checkpointer, with the pickle-free tree serializer: SQLite under ``DEEPSTEP_HOME``, or Postgres
when ``database_url`` is set (several workers sharing one database).

Both store each channel's value once per version, so a checkpoint holds only what changed in its super-step:
``PostgresSaver`` does so itself (its ``checkpoint_blobs`` table); LangGraph's ``SqliteSaver`` serializes every
channel into every checkpoint (a step's passages were written again in each of its ~13 checkpoints), so
deepstep's SQLite saver keeps channel values in a ``channel_blobs`` table the same way."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from langgraph.checkpoint.base import BaseCheckpointSaver, ChannelVersions, Checkpoint, CheckpointMetadata, CheckpointTuple
from langgraph.checkpoint.sqlite import SqliteSaver

from deepstep.configuration import Settings
from deepstep.errors import ConfigError
from deepstep.redaction import redact_url
from deepstep.tree_encoding import TreeSerializer

if TYPE_CHECKING:
    from langchain_core.runnables import RunnableConfig
    from langgraph.checkpoint.postgres import PostgresSaver

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


def compact_version(current: str | int | None) -> str:
    """The channel version after ``current``: ``0000000012.9f3a61c0`` (19 characters) where LangGraph's savers
    write ``00000000000000000000000000000012.0.5353021684398113`` (50); every checkpoint lists every channel's
    version, and each stored value is keyed by one. Ten digits keep the string order of the numbers (and sort
    after every version the long form wrote, so a thread started before goes on); the random part keeps two
    forks of a thread from sharing a version, as LangGraph's own does."""
    number = 0 if current is None else current if isinstance(current, int) else int(str(current).split(".")[0])
    return f"{number + 1:010d}.{random.getrandbits(32):08x}"


BlobKey = tuple[str, str, str, str]  # thread, namespace, channel, version
# Channel versions this process wrote or read, so a checkpoint does not serialize an unchanged channel again to make
# sure it is stored; bounded for long-lived processes (forgetting one only costs an INSERT OR IGNORE).
_MAX_KNOWN_BLOBS = 200_000


class _ChannelBlobSqliteSaver(_FailFastSqliteSaver):
    """A ``SqliteSaver`` that stores each channel value once per (thread, namespace, channel, version), as
    ``PostgresSaver`` does, instead of inside every checkpoint; a checkpoint row keeps only its versions.
    Checkpoints written before (values inline) still load: blobs fill only what a checkpoint lacks."""

    def __init__(self, connection: sqlite3.Connection, *, serde: TreeSerializer) -> None:
        super().__init__(connection, serde=serde)
        self.known_blobs: set[BlobKey] = set()

    def setup(self) -> None:
        if self.is_setup:
            return
        super().setup()
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS channel_blobs (thread_id TEXT NOT NULL, checkpoint_ns TEXT NOT NULL DEFAULT '', channel TEXT NOT NULL, "
            "version TEXT NOT NULL, type TEXT NOT NULL, blob BLOB, PRIMARY KEY (thread_id, checkpoint_ns, channel, version)) WITHOUT ROWID"
        )
        self.conn.commit()

    def put(self, config: RunnableConfig, checkpoint: Checkpoint, metadata: CheckpointMetadata, new_versions: ChannelVersions) -> RunnableConfig:
        thread, namespace = str(config["configurable"]["thread_id"]), config["configurable"].get("checkpoint_ns", "")
        versions = checkpoint["channel_versions"]
        inline, rows = {}, []
        for channel, value in checkpoint["channel_values"].items():
            if channel not in versions:
                inline[channel] = value  # no version to key it by (LangGraph always gives one; never lose a value)
                continue
            key = (thread, namespace, channel, str(versions[channel]))
            if channel in new_versions or key not in self.known_blobs:
                rows.append((*key, *self.serde.dumps_typed(value)))
        if rows:
            self._write(self._insert_blobs, rows)
        saved = super().put(config, {**checkpoint, "channel_values": inline}, metadata, new_versions)
        if parent := config["configurable"].get("checkpoint_id"):
            self._write(self._drop_folded_writes, thread, namespace, parent)
        return saved

    def get_next_version(self, current: str | None, channel: None) -> str:
        return compact_version(current)

    def _drop_folded_writes(self, thread: str, namespace: str, checkpoint_id: str) -> None:
        """Delete the pending writes of ``checkpoint_id`` once the checkpoint after it is saved: that one holds
        their result, and only the newest checkpoint's writes are read to resume (the tasks of its super-step
        that finished). LangGraph would re-run an older checkpoint's tasks if asked to replay from it; deepstep
        never does (reruns and resumes go on from the newest)."""
        with self.cursor() as cursor:
            # "<=": writes LangGraph saved late (with durability "async" a task's writes and the next checkpoint are
            # saved by different threads) are caught by the next checkpoint. Checkpoint ids (UUIDv6) sort by time.
            cursor.execute("DELETE FROM writes WHERE thread_id = ? AND checkpoint_ns = ? AND checkpoint_id <= ?", (thread, namespace, checkpoint_id))

    def _insert_blobs(self, rows: list[tuple[str, str, str, str, str, bytes]]) -> None:
        with self.cursor() as cursor:
            cursor.executemany("INSERT OR IGNORE INTO channel_blobs VALUES (?, ?, ?, ?, ?, ?)", rows)
        self._remember(row[:4] for row in rows)

    def _remember(self, keys: Iterator[BlobKey] | Sequence[BlobKey]) -> None:
        if len(self.known_blobs) > _MAX_KNOWN_BLOBS:
            self.known_blobs.clear()
        self.known_blobs.update(keys)

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        found = super().get_tuple(config)
        if found is None:
            return None
        with self.cursor(transaction=False) as cursor:
            return self._with_values(cursor, found)

    def list(self, config: RunnableConfig | None, **kwargs: Any) -> Iterator[CheckpointTuple]:
        # The parent's generator holds the saver's lock while it yields: read the blobs on a cursor of our own.
        with closing(self.conn.cursor()) as cursor:
            for found in super().list(config, **kwargs):
                yield self._with_values(cursor, found)

    def _with_values(self, cursor: sqlite3.Cursor, found: CheckpointTuple) -> CheckpointTuple:
        checkpoint = found.checkpoint
        thread, namespace = str(found.config["configurable"]["thread_id"]), found.config["configurable"].get("checkpoint_ns", "")
        inline = checkpoint["channel_values"]
        wanted = [(channel, str(version)) for channel, version in checkpoint["channel_versions"].items() if channel not in inline]
        if not wanted:
            return found
        pairs = ", ".join("(?, ?)" for _ in wanted)
        cursor.execute(
            f"WITH wanted(channel, version) AS (VALUES {pairs}) SELECT b.channel, b.version, b.type, b.blob FROM wanted "  # noqa: S608  (placeholders only)
            "JOIN channel_blobs b ON b.thread_id = ? AND b.checkpoint_ns = ? AND b.channel = wanted.channel AND b.version = wanted.version",
            [*(part for pair in wanted for part in pair), thread, namespace],
        )
        rows = cursor.fetchall()
        self._remember([(thread, namespace, channel, version) for channel, version, _, _ in rows])
        values = {**inline, **{channel: self.serde.loads_typed((kind, blob)) for channel, _, kind, blob in rows}}
        return found._replace(checkpoint={**checkpoint, "channel_values": values})

    def delete_thread(self, thread_id: str) -> None:
        super().delete_thread(thread_id)
        with self.cursor() as cursor:
            cursor.execute("DELETE FROM channel_blobs WHERE thread_id = ?", (str(thread_id),))


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
        saver = _ChannelBlobSqliteSaver(connection, serde=TreeSerializer())
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


def _lean_postgres_saver_class() -> type[PostgresSaver]:
    """``PostgresSaver`` (which already stores each channel value once per version) with compact versions and
    the pending writes of only the newest checkpoint of each namespace, as deepstep's SQLite saver keeps them."""
    from langgraph.checkpoint.postgres import PostgresSaver

    class LeanPostgresSaver(PostgresSaver):
        def get_next_version(self, current: str | None, channel: None) -> str:
            return compact_version(current)

        def put(self, config: RunnableConfig, checkpoint: Checkpoint, metadata: CheckpointMetadata, new_versions: ChannelVersions) -> RunnableConfig:
            saved = super().put(config, checkpoint, metadata, new_versions)
            if parent := config["configurable"].get("checkpoint_id"):
                # The writes this checkpoint folded in (see _ChannelBlobSqliteSaver._drop_folded_writes).
                with self._cursor() as cursor:
                    cursor.execute(
                        "DELETE FROM checkpoint_writes WHERE thread_id = %s AND checkpoint_ns = %s AND checkpoint_id <= %s",
                        (str(config["configurable"]["thread_id"]), config["configurable"].get("checkpoint_ns", ""), parent),
                    )
            return saved

    return LeanPostgresSaver


@contextmanager
def postgres_checkpointer(database_url: str) -> Iterator[BaseCheckpointSaver]:
    """A ``PostgresSaver`` on its own connection (tables created on first use), closed on exit."""
    # deepstep.postgres first: without the optional Postgres support it raises a ConfigError saying how to install it.
    from deepstep import postgres  # noqa: I001
    from psycopg.rows import dict_row

    # PostgresSaver needs autocommit, dict rows and no server-side prepared statements (poolers).
    with postgres.connect(database_url, application_name="deepstep-checkpointer", prepare_threshold=0, row_factory=dict_row) as connection:
        saver = _lean_postgres_saver_class()(connection, serde=TreeSerializer())
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
