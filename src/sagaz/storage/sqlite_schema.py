"""The versioned SQLite schema of :class:`~sagaz.storage.sqlite.SQLiteSagaStore` and how the
file is opened (how its rows map to records: :mod:`sagaz.storage.sqlite_rows`).

Timestamps are fixed-width ISO text in UTC (see :func:`sagaz.storage.codec.to_text`), so they
compare and sort as text; JSON columns hold :func:`sagaz.storage.codec.dumps` text.
The migrations that make the schema are in :mod:`sagaz.storage.sqlite_migrations`.

Since schema 9 the rows written together share B-tree leaves whatever their keys (saga ids
are hashes, event keys often random): a saga's steps are keyed by its row's ``seq``
(:data:`STEPS_OF`), the inbox is a rowid table with its key as a unique index. Since schema
10 one partial index holds the active sagas, ``(seq, owner)``: recovery walks it in order,
the lease renewal of an owner reads the owner in it. Since schema 11 the indexes of finished
sagas and completed inbox rows are keyed by whole seconds (:func:`seconds_of`).
"""

from __future__ import annotations

import os
import sqlite3
import time

from sagaz.clock import utcnow
from sagaz.exceptions import SchemaOutdatedError, StoreError
from sagaz.records import (
    SchemaVersions,
)
from sagaz.storage.codec import to_text
from sagaz.storage.sql import (
    ACTIVE_SQL,
    COMMON_SAGA_STATUSES,
    OUTBOX_COLUMNS,
    SAGA_COLUMNS,
    STEP_COLUMNS,
    TERMINAL_SQL,
)
from sagaz.storage.sqlite_migrations import (
    ACTIVE_WHERE,
    COMPLETED_KEY,
    FINISHED_KEY,
    MIGRATIONS,
    RARE_WHERE,
    TERMINAL_WHERE,
    seconds_of,
)

__all__ = [
    "ACTIVE_SQL",
    "ACTIVE_WHERE",
    "COMMON_SAGA_STATUSES",
    "COMPLETED_KEY",
    "FINISHED_KEY",
    "MIGRATIONS",
    "OUTBOX_COLUMNS",
    "RARE_WHERE",
    "SAGA_COLUMNS",
    "SCHEMA_VERSION",
    "STEPS_OF",
    "STEP_COLUMNS",
    "TERMINAL_SQL",
    "TERMINAL_WHERE",
    "migrate",
    "open_database",
    "read_versions",
    "seconds_of",
    "upgrade_database",
]


STEPS_OF = "saga_seq IN (0, (SELECT seq FROM saga_executions WHERE saga_id = ?1)) AND saga_id = ?1"
"""The rows of saga ``?1``'s steps since schema 9 (a ``WHERE`` clause): a step of a saga that
has a row is keyed by that row's ``seq``, one written while its saga had no row by 0 (a saga
row made later leaves those where they are: where a name has both, the one keyed by the
``seq`` is the newer, see :func:`sagaz.storage.sqlite_rows.latest_steps`)."""

SCHEMA_VERSION = MIGRATIONS[-1][0]
"""The schema version this code writes and expects."""


def migrate(conn: sqlite3.Connection, *, url: str, upgrade: bool = False) -> SchemaVersions:
    """Create the schema on an empty database or, with ``upgrade``, bring an older one up to
    date, in one ``BEGIN IMMEDIATE`` transaction; return the versions found.

    Without ``upgrade`` an older schema raises :class:`SchemaOutdatedError` (``url`` goes
    into its ``sagaz db upgrade --store URL``). The write lock of ``BEGIN IMMEDIATE``
    serialises two processes starting at once: the second one waits (``busy_timeout``) and
    then finds the schema current.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version ("
            "version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
        )
        current = _version(conn)
        if current > SCHEMA_VERSION:
            raise StoreError(
                f"the SQLite database has schema version {current}, newer than the "
                f"{SCHEMA_VERSION} this sagaz understands: upgrade sagaz (pip install -U sagaz)"
            )
        if 0 < current < SCHEMA_VERSION and not upgrade:
            raise SchemaOutdatedError(
                "the SQLite database", store=url, found=current, expected=SCHEMA_VERSION
            )
        for version, statements in MIGRATIONS:
            if version <= current:
                continue
            for statement in statements:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                (version, to_text(utcnow())),
            )
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return SchemaVersions(current=current, expected=SCHEMA_VERSION)


def _version(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()
    return int(row[0]) if row else 0


def read_versions(path: str) -> SchemaVersions:
    """The versions of the database at ``path``, read without creating or changing anything
    (a missing file has no schema yet). It blocks: call it in a thread."""
    if path == ":memory:" or not os.path.exists(path):
        return SchemaVersions(current=0, expected=SCHEMA_VERSION)
    conn = sqlite3.connect(path)
    try:
        known = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
        ).fetchone()
        current = _version(conn) if known else 0
    finally:
        conn.close()
    return SchemaVersions(current=current, expected=SCHEMA_VERSION)


def open_database(path: str, busy_timeout_ms: int, *, url: str) -> sqlite3.Connection:
    """Connect in autocommit mode (sagaz issues ``BEGIN IMMEDIATE`` itself), switch the file to
    WAL mode with ``synchronous=FULL``, and create the schema on an empty database (an older
    one raises :class:`SchemaOutdatedError`, see :func:`migrate`).

    It blocks (on another process's write lock, up to ``busy_timeout_ms``): call it in the one
    thread that will use the connection.
    """
    conn = _connect(path, busy_timeout_ms)
    try:
        migrate(conn, url=url)
    except BaseException:
        conn.close()
        raise
    return conn


def upgrade_database(path: str, busy_timeout_ms: int, *, url: str) -> SchemaVersions:
    """Create or migrate the schema of the file at ``path`` on a connection of its own;
    return the versions found. It blocks: call it in a thread."""
    conn = _connect(path, busy_timeout_ms)
    try:
        return migrate(conn, url=url, upgrade=True)
    finally:
        conn.close()


def _connect(path: str, busy_timeout_ms: int) -> sqlite3.Connection:
    conn = sqlite3.connect(  # the store's event loop runs its groups (sqlite_groups)
        path, timeout=busy_timeout_ms / 1000, isolation_level=None, check_same_thread=False
    )
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        _enable_wal(conn, patience=busy_timeout_ms / 1000)
        conn.execute("PRAGMA synchronous = FULL")
    except BaseException:
        conn.close()
        raise
    return conn


def _enable_wal(conn: sqlite3.Connection, *, patience: float) -> None:
    """Switch the file to WAL mode (once: the mode is stored in the file).

    Changing the journal mode fails at once, without waiting for ``busy_timeout``, while
    another connection is opening the file, so concurrent first starts retry for a while.
    """
    deadline = time.monotonic() + patience
    while True:
        try:
            row = conn.execute("PRAGMA journal_mode").fetchone()
            if str(row[0]).lower() != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(0.01)
