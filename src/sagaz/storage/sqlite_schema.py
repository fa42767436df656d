"""The versioned SQLite schema of :class:`~sagaz.storage.sqlite.SQLiteSagaStore`.

Timestamps are fixed-width ISO text in UTC (see :func:`sagaz.storage.codec.to_text`), so they
compare and sort as text; JSON columns hold :func:`sagaz.storage.codec.dumps` text.
A migration is a version number and the statements that bring the schema to it. Append new
migrations; never edit a released one.
"""

from __future__ import annotations

import aiosqlite

from sagaz.clock import utcnow
from sagaz.exceptions import StoreError
from sagaz.storage.codec import to_text
from sagaz.types import TERMINAL_SAGA_STATUSES, SagaStatus

__all__ = ["ACTIVE_SQL", "MIGRATIONS", "SCHEMA_VERSION", "TERMINAL_SQL", "migrate"]

TERMINAL_SQL = "(" + ", ".join(f"'{s.value}'" for s in sorted(TERMINAL_SAGA_STATUSES)) + ")"
"""SQL list of the terminal saga statuses (``IN`` clauses and partial indexes)."""
ACTIVE_SQL = (
    "(" + ", ".join(f"'{s.value}'" for s in sorted(set(SagaStatus) - TERMINAL_SAGA_STATUSES)) + ")"
)
"""SQL list of the non-terminal saga statuses."""

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
]
"""Every migration, oldest first."""

SCHEMA_VERSION = MIGRATIONS[-1][0]
"""The schema version this code writes and expects."""


async def migrate(conn: aiosqlite.Connection) -> int:
    """Create or upgrade the schema in one ``BEGIN IMMEDIATE`` transaction; return the version.

    The write lock of ``BEGIN IMMEDIATE`` serialises two processes starting at once: the second
    one waits (``busy_timeout``) and then finds the schema current.
    """
    await conn.execute("BEGIN IMMEDIATE")
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version ("
            "version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
        )
        async with conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version") as cur:
            row = await cur.fetchone()
        current = int(row[0]) if row else 0
        if current > SCHEMA_VERSION:
            raise StoreError(
                f"the SQLite database has schema version {current}, newer than the "
                f"{SCHEMA_VERSION} this sagaz understands: upgrade sagaz (pip install -U sagaz)"
            )
        for version, statements in MIGRATIONS:
            if version <= current:
                continue
            for statement in statements:
                await conn.execute(statement)
            await conn.execute(
                "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                (version, to_text(utcnow())),
            )
    except BaseException:
        await conn.execute("ROLLBACK")
        raise
    await conn.execute("COMMIT")
    return SCHEMA_VERSION
