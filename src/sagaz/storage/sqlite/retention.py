"""What the store forgets with age: expired rows (``purge_expired``), finished sagas
(``purge_sagas``) and old dead letters (``purge_dead_letters``), see :class:`~sagaz.abc.SagaStore`.

A part of :class:`~sagaz.storage.sqlite.SQLiteSagaStore`.
"""

from __future__ import annotations

import sqlite3
import time
from datetime import datetime

from sagaz.clock import utcnow
from sagaz.storage import sqlite_schema as tables
from sagaz.storage.codec import to_text
from sagaz.storage.sqlite.connection import SQLiteConnection, _change, _rows
from sagaz.storage.sqlite_rows import placeholders

__all__ = ["SQLiteRetention"]

_FINISHED = (
    f"SELECT saga_id FROM saga_executions AS e WHERE {tables.TERMINAL_WHERE} "
    "AND updated_at < ? "
    "AND saga_id NOT IN (SELECT saga_id FROM inbox WHERE status = 'pending' "
    "AND lease_until >= ?) "
    "AND NOT EXISTS (SELECT 1 FROM saga_requests AS r WHERE r.saga_id = e.saga_id) "
    "AND NOT EXISTS (SELECT 1 FROM outbox AS o WHERE o.saga_id = e.saga_id "
    "AND o.sent_at IS NULL) "
    "ORDER BY updated_at LIMIT ?"
)
_CLEAR_EVENTS = (
    # by the index of the events still stored (saga_executions_finished, as good a match to
    # the planner, would walk the cleared ones again)
    "UPDATE saga_executions SET event = NULL WHERE saga_id IN (SELECT saga_id "
    "FROM saga_executions INDEXED BY saga_executions_stored_events "
    f"WHERE event IS NOT NULL AND {tables.TERMINAL_WHERE} AND updated_at < ? LIMIT ?)"
)
_OF_SAGAS = ("saga_history", "outbox", "saga_executions")  # after their steps:
_STEPS_OF_SAGAS = (  # keyed by their saga row's seq, or by 0 (sqlite_schema.STEPS_OF)
    "DELETE FROM saga_steps WHERE saga_seq IN "
    "(SELECT seq FROM saga_executions WHERE saga_id IN ({marks}))",
    "DELETE FROM saga_steps WHERE saga_seq = 0 AND saga_id IN ({marks})",
)
_PURGE_BATCH = 1000
"""Rows of each kind ``purge_expired`` deletes per write (one short transaction)."""


class SQLiteRetention(SQLiteConnection):
    """Expired rows, finished sagas and old dead letters, deleted in short batches."""

    async def purge_expired(self, before: datetime) -> int:
        # At most _PURGE_BATCH rows of each kind per write (the write lock is held briefly);
        # the outer WHEREs check again, as PostgreSQL's do (here nothing runs in between).
        cutoff = to_text(before)

        def purge(conn: sqlite3.Connection) -> list[int]:
            batch = _PURGE_BATCH
            now_text, now_epoch = to_text(utcnow()), time.time()
            return [
                _change(
                    conn,
                    "DELETE FROM inbox WHERE id IN (SELECT id "
                    "FROM inbox WHERE status = 'completed' AND completed_at < ? LIMIT ?)",
                    (cutoff, batch),
                ),
                _change(  # abandoned: pending, its lease long expired, its event never back
                    conn,
                    "DELETE FROM inbox WHERE id IN (SELECT id "
                    "FROM inbox WHERE status = 'pending' AND lease_until < ? LIMIT ?)",
                    (cutoff, batch),
                ),
                _change(conn, _CLEAR_EVENTS, (cutoff, batch)),
                _change(
                    conn,
                    "DELETE FROM trigger_executions WHERE id IN (SELECT id "
                    "FROM trigger_executions WHERE completed_at < ? LIMIT ?)",
                    (cutoff, batch),
                ),
                _change(  # every trigger keeps its newest tick (last_cron_tick)
                    conn,
                    "DELETE FROM cron_claims WHERE (trigger_id, tick) IN (SELECT c.trigger_id, "
                    "c.tick FROM cron_claims AS c WHERE c.tick < ? AND c.tick < (SELECT "
                    "MAX(n.tick) FROM cron_claims AS n WHERE n.trigger_id = c.trigger_id) "
                    "LIMIT ?)",
                    (cutoff, batch),
                ),
                # an expired lease is free and a bucket whose arrival time passed is full: a
                # missing row says the same, so each distinct key leaves no row behind
                _change(
                    conn,
                    "DELETE FROM leases WHERE name IN "
                    "(SELECT name FROM leases WHERE expires_at <= ? LIMIT ?)",
                    (now_text, batch),
                ),
                _change(
                    conn,
                    "DELETE FROM rate_limits WHERE name IN "
                    "(SELECT name FROM rate_limits WHERE tat < ? LIMIT ?)",
                    (now_epoch, batch),
                ),
            ]

        total = 0
        while True:
            counts = await self._write(purge)
            total += sum(counts)
            if max(counts) < _PURGE_BATCH:
                return total

    async def purge_sagas(self, before: datetime, *, limit: int = 500) -> int:
        cutoff = to_text(before)

        def purge(conn: sqlite3.Connection) -> int:
            # one operation of a group: nothing changes between the choice and the
            # deletes
            now = to_text(utcnow())  # a pending inbox row with a live lease: a retry is due
            doomed = [row[0] for row in _rows(conn, _FINISHED, (cutoff, now, limit))]
            for start in range(0, len(doomed), 500):  # under SQLite's bound-parameter limit
                chunk = doomed[start : start + 500]
                marks = placeholders(len(chunk))
                for steps in _STEPS_OF_SAGAS:
                    conn.execute(steps.format(marks=marks), chunk)
                for table in _OF_SAGAS:
                    conn.execute(f"DELETE FROM {table} WHERE saga_id IN ({marks})", chunk)
            return len(doomed)

        return await self._write(purge)

    async def purge_dead_letters(self, before: datetime, *, limit: int = 500) -> int:
        return await self._write_one(
            "DELETE FROM dead_letters WHERE id IN "
            "(SELECT id FROM dead_letters WHERE created_at < ? ORDER BY id LIMIT ?)",
            (to_text(before), limit),
        )
