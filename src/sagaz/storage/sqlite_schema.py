"""The versioned SQLite schema of :class:`~sagaz.storage.sqlite.SQLiteSagaStore` and how the
file is opened (how its rows map to records: :mod:`sagaz.storage.sqlite_rows`).

Timestamps are fixed-width ISO text in UTC (see :func:`sagaz.storage.codec.to_text`), so they
compare and sort as text; JSON columns hold :func:`sagaz.storage.codec.dumps` text.
A migration is a version number and the statements that bring the schema to it. Append new
migrations; never edit a released one (the tables a migration creates again are constants
named for it, such as ``_STEPS_TABLE_9``).

Since schema 9 the rows written together share B-tree leaves whatever their keys (saga ids
are hashes, event keys often random): a saga's steps are keyed by its row's ``seq``
(:data:`STEPS_OF`), the inbox is a rowid table with its key as a unique index. Since schema
10 one partial index holds the active sagas, ``(seq, owner)``: recovery walks it in order,
the lease renewal of an owner reads the owner in it.
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
    recovery_columns,
)
from sagaz.types import TERMINAL_SAGA_STATUSES, SagaStatus

__all__ = [
    "ACTIVE_SQL",
    "ACTIVE_WHERE",
    "COMMON_SAGA_STATUSES",
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
    "upgrade_database",
]


def _any_status(statuses: frozenset[SagaStatus] | set[SagaStatus]) -> str:
    """``(status = 'a' OR status = 'b' ...)``: a partial index's condition that SQLite checks
    with comparisons (an ``IN`` list of three values or more is an ephemeral table, built
    anew by every statement that writes the row: about 25 µs of a saga's two updates)."""
    return "(" + " OR ".join(f"status = '{s.value}'" for s in sorted(statuses)) + ")"


ACTIVE_WHERE = _any_status(set(SagaStatus) - TERMINAL_SAGA_STATUSES)
"""The non-terminal statuses as the conditions of the partial indexes since schema 8: a query
that writes it (or one status of it as a literal) may read those indexes."""
TERMINAL_WHERE = _any_status(TERMINAL_SAGA_STATUSES)
"""The terminal statuses, as :data:`ACTIVE_WHERE`."""
RARE_WHERE = _any_status(set(SagaStatus) - COMMON_SAGA_STATUSES)
"""The statuses other than :data:`COMMON_SAGA_STATUSES`, as :data:`ACTIVE_WHERE`."""

_STEPS_TABLE_9 = """CREATE TABLE saga_steps (
    saga_seq INTEGER NOT NULL DEFAULT 0,
    saga_id TEXT NOT NULL,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    result TEXT,
    error TEXT,
    attempts INTEGER NOT NULL,
    completed_seq INTEGER,
    compensation_error TEXT,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (saga_seq, saga_id, name)
) WITHOUT ROWID"""
_INBOX_COLUMNS_9 = "trigger_id, key, saga_id, owner, lease_until, status, created_at, completed_at"
_INBOX_TABLE_9 = """CREATE TABLE inbox (
    id INTEGER PRIMARY KEY,
    trigger_id TEXT NOT NULL,
    key TEXT NOT NULL,
    saga_id TEXT NOT NULL,
    owner TEXT,
    lease_until TEXT,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL,
    completed_at TEXT
)"""

STEPS_OF = "saga_seq IN (0, (SELECT seq FROM saga_executions WHERE saga_id = ?1)) AND saga_id = ?1"
"""The rows of saga ``?1``'s steps since schema 9 (a ``WHERE`` clause): a step of a saga that
has a row is keyed by that row's ``seq``, one written while its saga had no row by 0 (a saga
row made later leaves those where they are: where a name has both, the one keyed by the
``seq`` is the newer, see :func:`sagaz.storage.sqlite_rows.latest_steps`)."""

MIGRATIONS: list[tuple[int, tuple[str, ...]]] = [
    (
        1,
        (
            """CREATE TABLE saga_executions (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                saga_id TEXT NOT NULL UNIQUE,
                saga_name TEXT NOT NULL,
                status TEXT NOT NULL,
                context TEXT NOT NULL,
                attempt INTEGER NOT NULL,
                error TEXT,
                trigger_id TEXT,
                event TEXT,
                owner TEXT,
                lease_expires_at TEXT,
                created_at TEXT NOT NULL,
                updated_at TEXT NOT NULL
            )""",
            "CREATE INDEX saga_executions_by_status ON saga_executions (status, seq)",
            "CREATE INDEX saga_executions_by_name ON saga_executions (saga_name, seq)",
            f"CREATE INDEX saga_executions_active ON saga_executions (seq) "
            f"WHERE status IN {ACTIVE_SQL}",
            f"CREATE INDEX saga_executions_by_owner ON saga_executions (owner) "
            f"WHERE status IN {ACTIVE_SQL}",
            f"CREATE INDEX saga_executions_stored_events ON saga_executions (updated_at) "
            f"WHERE event IS NOT NULL AND status IN {TERMINAL_SQL}",
            """CREATE TABLE saga_steps (
                saga_id TEXT NOT NULL,
                name TEXT NOT NULL,
                status TEXT NOT NULL,
                result TEXT,
                error TEXT,
                attempts INTEGER NOT NULL,
                completed_seq INTEGER,
                compensation_error TEXT,
                updated_at TEXT NOT NULL,
                PRIMARY KEY (saga_id, name)
            ) WITHOUT ROWID""",
            """CREATE TABLE inbox (
                trigger_id TEXT NOT NULL,
                key TEXT NOT NULL,
                saga_id TEXT NOT NULL,
                owner TEXT,
                lease_until TEXT,
                status TEXT NOT NULL,
                created_at TEXT NOT NULL,
                completed_at TEXT,
                PRIMARY KEY (trigger_id, key)
            ) WITHOUT ROWID""",
            "CREATE INDEX inbox_pending_by_owner ON inbox (owner) WHERE status = 'pending'",
            "CREATE INDEX inbox_completed ON inbox (completed_at) WHERE status = 'completed'",
            """CREATE TABLE outbox (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                saga_id TEXT NOT NULL,
                topic TEXT NOT NULL,
                payload TEXT NOT NULL,
                headers TEXT NOT NULL,
                created_at TEXT NOT NULL,
                sent_at TEXT
            )""",
            "CREATE INDEX outbox_unsent ON outbox (id) WHERE sent_at IS NULL",
            """CREATE TABLE dead_letters (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                trigger_id TEXT NOT NULL,
                saga_name TEXT NOT NULL,
                payload TEXT NOT NULL,
                error TEXT NOT NULL,
                reason TEXT NOT NULL,
                traceback TEXT,
                attempts INTEGER NOT NULL,
                saga_id TEXT,
                source TEXT,
                meta TEXT NOT NULL,
                created_at TEXT NOT NULL
            )""",
            "CREATE INDEX dead_letters_by_trigger ON dead_letters (trigger_id, id)",
            """CREATE TABLE trigger_schedules (
                trigger_name TEXT PRIMARY KEY,
                saga_name TEXT NOT NULL,
                poll_interval_ms INTEGER NOT NULL,
                allow_concurrent INTEGER NOT NULL,
                enabled INTEGER NOT NULL,
                last_poll_at TEXT
            )""",
            """CREATE TABLE trigger_executions (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                trigger_name TEXT NOT NULL,
                context_hash TEXT NOT NULL,
                saga_id TEXT NOT NULL,
                exclusive INTEGER NOT NULL,
                started_at TEXT NOT NULL,
                completed_at TEXT
            )""",
            # at most one open exclusive execution per context: the database enforces the dedup
            "CREATE UNIQUE INDEX trigger_executions_open_exclusive "
            "ON trigger_executions (trigger_name, context_hash) "
            "WHERE completed_at IS NULL AND exclusive = 1",
            "CREATE INDEX trigger_executions_by_trigger ON trigger_executions (trigger_name, id)",
            "CREATE INDEX trigger_executions_open_by_saga "
            "ON trigger_executions (trigger_name, saga_id) WHERE completed_at IS NULL",
            """CREATE TABLE cron_claims (
                trigger_id TEXT NOT NULL,
                tick TEXT NOT NULL,
                owner TEXT NOT NULL,
                claimed_at TEXT NOT NULL,
                PRIMARY KEY (trigger_id, tick)
            ) WITHOUT ROWID""",
        ),
    ),
    (
        2,
        (
            # purge_expired deletes completed executions by age; the newest cron tick of a
            # trigger (the one it keeps) is found through the primary key (trigger_id, tick)
            "CREATE INDEX IF NOT EXISTS trigger_executions_completed "
            "ON trigger_executions (completed_at) WHERE completed_at IS NOT NULL",
        ),
    ),
    (
        3,
        (
            # named leases (acquire_lease): one holder at a time, until expires_at
            """CREATE TABLE IF NOT EXISTS leases (
                name TEXT PRIMARY KEY,
                holder TEXT NOT NULL,
                expires_at TEXT NOT NULL
            ) WITHOUT ROWID""",
        ),
    ),
    (
        4,
        (
            # trigger_executions name a poll trigger by its trigger id, as trigger_schedules
            # does (they named it by its Trigger's `name`): the rows of sagas still stored
            # take their saga's trigger_id, so both tables join on trigger_name
            """UPDATE trigger_executions SET trigger_name = (
                SELECT s.trigger_id FROM saga_executions AS s
                WHERE s.saga_id = trigger_executions.saga_id
            )
            WHERE EXISTS (
                SELECT 1 FROM saga_executions AS s
                WHERE s.saga_id = trigger_executions.saga_id AND s.trigger_id IS NOT NULL
                AND s.trigger_id <> trigger_executions.trigger_name
            )""",
        ),
    ),
    (
        5,
        (
            # shared token buckets (take_rate_token, limit_scope="cluster"): the bucket's
            # theoretical arrival time, GCRA-style, in seconds since the epoch
            """CREATE TABLE IF NOT EXISTS rate_limits (
                name TEXT PRIMARY KEY,
                tat REAL NOT NULL
            ) WITHOUT ROWID""",
        ),
    ),
    (
        6,
        (
            # saga control (sagaz sagas cancel|resume|retry): what was done to each saga...
            """CREATE TABLE IF NOT EXISTS saga_history (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                saga_id TEXT NOT NULL,
                at TEXT NOT NULL,
                action TEXT NOT NULL,
                actor TEXT,
                detail TEXT
            )""",
            "CREATE INDEX IF NOT EXISTS saga_history_by_saga ON saga_history (saga_id, id)",
            # ...and the requests the engines have still to finish, at most one per saga
            """CREATE TABLE IF NOT EXISTS saga_requests (
                saga_id TEXT PRIMARY KEY,
                action TEXT NOT NULL,
                step TEXT,
                actor TEXT,
                reason TEXT,
                attempt INTEGER NOT NULL,
                requested_at TEXT NOT NULL
            ) WITHOUT ROWID""",
            # the status 'cancelled' is terminal: purge_expired's partial index includes it
            "DROP INDEX IF EXISTS saga_executions_stored_events",
            "CREATE INDEX saga_executions_stored_events ON saga_executions (updated_at) "
            f"WHERE event IS NOT NULL AND status IN {TERMINAL_SQL}",
        ),
    ),
    (
        7,
        (
            # purge_sagas (saga_retention_days): finished sagas oldest first, a saga's outbox
            "CREATE INDEX IF NOT EXISTS saga_executions_finished ON saga_executions "
            f"(updated_at) WHERE status IN {TERMINAL_SQL}",
            "CREATE INDEX IF NOT EXISTS outbox_by_saga ON outbox (saga_id, id)",
        ),
    ),
    (
        8,
        (
            # the partial indexes on saga rows name their statuses with OR instead of IN
            # (see _any_status: every write of a saga row checked the old and the new row
            # against them), and the index by status keeps the statuses a saga that
            # succeeds does not pass through: the list by status reads pending and running
            # through saga_executions_active, completed (most rows) by seq backwards
            "DROP INDEX IF EXISTS saga_executions_by_status",
            "DROP INDEX IF EXISTS saga_executions_active",
            "DROP INDEX IF EXISTS saga_executions_by_owner",
            "DROP INDEX IF EXISTS saga_executions_stored_events",
            "DROP INDEX IF EXISTS saga_executions_finished",
            "CREATE INDEX IF NOT EXISTS saga_executions_by_rare_status "
            f"ON saga_executions (status, seq) WHERE {RARE_WHERE}",
            f"CREATE INDEX saga_executions_active ON saga_executions (seq) WHERE {ACTIVE_WHERE}",
            "CREATE INDEX saga_executions_by_owner ON saga_executions (owner) "
            f"WHERE {ACTIVE_WHERE}",
            "CREATE INDEX saga_executions_stored_events ON saga_executions (updated_at) "
            f"WHERE event IS NOT NULL AND {TERMINAL_WHERE}",
            "CREATE INDEX saga_executions_finished ON saga_executions (updated_at) "
            f"WHERE {TERMINAL_WHERE}",
        ),
    ),
    (
        9,
        (
            # keys in arrival order (random keys put every saga's rows in leaves of their
            # own, one 4 KiB WAL frame each per commit). A saga's steps are keyed by its
            # row's seq (0 while it has none, see STEPS_OF); the inbox is a rowid table,
            # its key a unique index: completing a row no longer rewrites the key's leaf
            "ALTER TABLE saga_steps RENAME TO saga_steps_8",
            _STEPS_TABLE_9,
            f"INSERT INTO saga_steps (saga_seq, {STEP_COLUMNS}) SELECT COALESCE(("
            "SELECT e.seq FROM saga_executions AS e WHERE e.saga_id = s.saga_id), 0), "
            f"{', '.join(f's.{c}' for c in STEP_COLUMNS.split(', '))} FROM saga_steps_8 AS s",
            "DROP TABLE saga_steps_8",
            "ALTER TABLE inbox RENAME TO inbox_8",
            _INBOX_TABLE_9,
            f"INSERT INTO inbox ({_INBOX_COLUMNS_9}) SELECT {_INBOX_COLUMNS_9} FROM inbox_8 "
            "ORDER BY created_at",
            "DROP TABLE inbox_8",
            "CREATE UNIQUE INDEX inbox_by_key ON inbox (trigger_id, key)",
            "CREATE INDEX inbox_pending_by_owner ON inbox (owner) WHERE status = 'pending'",
            "CREATE INDEX inbox_completed ON inbox (completed_at) WHERE status = 'completed'",
        ),
    ),
    (
        10,
        (
            # one index of active sagas instead of two: an update of a saga row sets its
            # status, so SQLite rewrote the entries of both partial indexes on the active
            # statuses, even from pending to running. saga_executions_active carries the
            # owner: renew_leases filters an owner's sagas in the index, without the table
            "DROP INDEX IF EXISTS saga_executions_by_owner",
            "DROP INDEX IF EXISTS saga_executions_active",
            "CREATE INDEX saga_executions_active ON saga_executions (seq, owner) "
            f"WHERE {ACTIVE_WHERE}",
        ),
    ),
    (11, recovery_columns("saga_executions", if_not_exists=False)),  # take_over_saga
]
"""Every migration, oldest first."""

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
        # a statement that writes many rows (sagaz.storage.sqlite.batches) keeps the pages it
        # changes in a statement journal, to undo it alone if it fails midway; past 64 KiB
        # SQLite spills that journal to a temporary file: about 10,000 writes and 100 files
        # made and unlinked per 3,000 sagas of benchmarks/stores.py. In memory it stays
        # (bounded by what one statement of at most 64 rows changes)
        conn.execute("PRAGMA temp_store = MEMORY")
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
