"""The embedded default store: one SQLite file, through aiosqlite.

>>> async with SQLiteSagaStore("sqlite:///sagaz.db") as store:  # doctest: +SKIP
...     await store.get_saga("...")

One connection serves the process; an ``asyncio.Lock`` runs one operation at a time on it.
Writes are grouped (group commit): the first write opens a ``BEGIN IMMEDIATE`` transaction,
the writes queued behind it join it, each in its own ``SAVEPOINT`` (an error undoes that
operation only), and one ``COMMIT`` ends the group. Every operation returns only after that
COMMIT, so a claim (read the row, then write it) still holds SQLite's write lock throughout,
stays atomic even against another process on the same file, and is durable when it returns:
the database runs in WAL mode with ``synchronous=FULL``. A failed COMMIT fails every operation
of its group; reads made while a group is open wait for its COMMIT too, so no caller acts on
a write that did not last.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import aiosqlite

from sagaz.abc import SagaStore
from sagaz.clock import utcnow
from sagaz.exceptions import StoreError
from sagaz.records import (
    ClaimOutcome,
    DeadLetterRecord,
    InboxClaim,
    OutboxMessage,
    SagaRecord,
    StepRecord,
    TriggerExecutionRecord,
    TriggerScheduleRecord,
)
from sagaz.storage import sqlite_schema as tables
from sagaz.storage.codec import dumps, to_text
from sagaz.storage.url import sqlite_path
from sagaz.types import SagaStatus, StepStatus

__all__ = ["SQLiteSagaStore"]

_IN_CHUNK = 500  # well under SQLite's bound-parameter limit
_INSERT_SAGA = (
    f"INSERT INTO saga_executions ({tables.SAGA_COLUMNS}) VALUES ({tables.placeholders(12)})"
)
_INSERT_STEP = (
    f"INSERT OR REPLACE INTO saga_steps ({tables.STEP_COLUMNS}) VALUES ({tables.placeholders(9)})"
)
_INSERT_DEAD_LETTER = (
    f"INSERT INTO dead_letters ({tables.DEAD_LETTER_COLUMNS.removeprefix('id, ')}) "
    f"VALUES ({tables.placeholders(11)})"
)


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a future's exception as seen (its waiters, if any, still get it)."""
    if future.done() and not future.cancelled():
        future.exception()


class SQLiteSagaStore(SagaStore):
    """A :class:`~sagaz.abc.SagaStore` in one SQLite file (the embedded default).

    ``path_or_url`` is a file path or a ``sqlite:///relative.db`` / ``sqlite:////abs/path.db``
    URL. ``busy_timeout`` is how long a write waits for another process's write lock.
    """

    def __init__(
        self, path_or_url: str | os.PathLike[str] = "sagaz.db", *, busy_timeout: float = 30.0
    ) -> None:
        self.path = sqlite_path(os.fspath(path_or_url))
        self._busy_timeout_ms = int(busy_timeout * 1000)
        self._conn: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()  # one operation at a time on the shared connection
        self._lifecycle_lock = asyncio.Lock()
        #: the open group transaction: done once it is committed (or failed)
        self._group: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return f"SQLiteSagaStore({self.path!r})"

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Open the file (WAL mode) and create or migrate the schema. Idempotent."""
        async with self._lifecycle_lock:
            if self._conn is not None:
                return
            try:
                conn = await tables.open_database(self.path, self._busy_timeout_ms)
            except sqlite3.Error as exc:
                raise self._error(exc) from exc
            self._conn = conn
            self._started = True

    async def stop(self) -> None:
        """Wait for the running operation, then close the connection. Idempotent."""
        async with self._lifecycle_lock:
            conn, self._conn = self._conn, None
            self._started = False
            if conn is not None:
                async with self._lock:
                    await self._commit_group(conn)
                    await conn.close()

    async def schema_version(self) -> int:
        """The schema version recorded in the database."""
        rows = await self._fetch("SELECT MAX(version) FROM schema_version")
        return int(rows[0][0])

    def _connection(self) -> aiosqlite.Connection:
        if self._conn is None:
            raise StoreError(
                f"{self!r} is not started: call await store.start() or use async with store"
            )
        return self._conn

    def _error(self, exc: sqlite3.Error) -> StoreError:
        hint = ""
        if "locked" in str(exc):
            hint = (
                "; another process held the write lock longer than busy_timeout: raise "
                "SQLiteSagaStore(..., busy_timeout=) or use PostgreSQL for many writers"
            )
        elif "unable to open" in str(exc):
            hint = "; check that the directory exists and that this process may write to it"
        return StoreError(f"SQLite store {self.path!r}: {exc}{hint}")

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """One operation's writes: atomic (a savepoint of the group transaction), rolled back
        on any error or cancellation, durable once the ``async with`` block has exited."""
        conn = self._connection()
        async with self._lock:
            try:
                group = await self._join_group(conn)
                await conn.execute("SAVEPOINT op")
            except sqlite3.Error as exc:
                raise self._error(exc) from exc
            try:
                yield conn
                await conn.execute("RELEASE op")
            except BaseException as exc:
                with contextlib.suppress(sqlite3.Error):
                    await conn.execute("ROLLBACK TO op")
                    await conn.execute("RELEASE op")
                if not conn.in_transaction:  # SQLite rolled the whole group back
                    self._fail_group(group, exc)
                if isinstance(exc, sqlite3.Error):
                    raise self._error(exc) from exc
                raise
        await group

    async def _join_group(self, conn: aiosqlite.Connection) -> asyncio.Future[None]:
        """The open group transaction, opened (with its committer) if there is none."""
        if self._group is None:
            await conn.execute("BEGIN IMMEDIATE")
            self._group = group = asyncio.get_running_loop().create_future()
            committer = asyncio.create_task(self._committer(conn, group), name="sagaz-sqlite")
            committer.add_done_callback(_retrieve)
        return self._group

    async def _committer(self, conn: aiosqlite.Connection, group: asyncio.Future[None]) -> None:
        # Queued on the lock behind the operations already waiting: they join the group.
        async with self._lock:
            if self._group is group:
                await self._commit_group(conn)

    async def _commit_group(self, conn: aiosqlite.Connection) -> None:
        """``COMMIT`` the open group (the lock is held)."""
        group, self._group = self._group, None
        if group is None or group.done():
            return
        try:
            await conn.execute("COMMIT")
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):
                await conn.execute("ROLLBACK")
            self._fail_group(group, exc)
            if not isinstance(exc, sqlite3.Error):
                raise
        else:
            group.set_result(None)

    def _fail_group(self, group: asyncio.Future[None], exc: BaseException) -> None:
        if self._group is group:
            self._group = None
        if not group.done():
            error = self._error(exc) if isinstance(exc, sqlite3.Error) else exc
            group.set_exception(
                StoreError(f"SQLite store {self.path!r}: the transaction was lost ({error})")
            )
            _retrieve(group)  # its operations may all be gone (cancelled): no warning then

    async def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        conn = self._connection()
        async with self._lock:
            try:
                rows = list(await conn.execute_fetchall(sql, params))
            except sqlite3.Error as exc:
                raise self._error(exc) from exc
            group = self._group
        if group is not None:  # it may have read the group's writes: they must last
            await group
        return rows

    @staticmethod
    async def _run(conn: aiosqlite.Connection, sql: str, params: Sequence[Any] = ()) -> int:
        """Execute one statement; return the number of rows it changed."""
        async with conn.execute(sql, params) as cursor:
            return cursor.rowcount

    # -- sagas -----------------------------------------------------------------------------
    async def create_saga(self, record: SagaRecord) -> tuple[SagaRecord, bool]:
        now = utcnow()
        async with self._transaction() as conn:
            rows = list(
                await conn.execute_fetchall(
                    f"SELECT {tables.SAGA_COLUMNS} FROM saga_executions WHERE saga_id = ?",
                    (record.saga_id,),
                )
            )
            if rows:
                return tables.saga_from_row(rows[0]), False
            params = tables.saga_params(record, record.created_at or now, now)
            await self._run(conn, _INSERT_SAGA, params)
        return tables.saga_from_row(params), True

    async def save_saga(self, record: SagaRecord) -> None:
        now = utcnow()
        params = tables.saga_params(record, record.created_at or now, now)
        async with self._transaction() as conn:
            await self._run(
                conn,
                f"{_INSERT_SAGA} ON CONFLICT (saga_id) DO UPDATE SET "
                "saga_name = excluded.saga_name, status = excluded.status, "
                "context = excluded.context, "
                "attempt = excluded.attempt, error = excluded.error, "
                "trigger_id = excluded.trigger_id, event = excluded.event, "
                "owner = excluded.owner, lease_expires_at = excluded.lease_expires_at, "
                "updated_at = excluded.updated_at",
                params,
            )

    async def get_saga(self, saga_id: str) -> SagaRecord | None:
        rows = await self._fetch(
            f"SELECT {tables.SAGA_COLUMNS} FROM saga_executions WHERE saga_id = ?", (saga_id,)
        )
        return tables.saga_from_row(rows[0]) if rows else None

    async def list_sagas(
        self,
        *,
        status: SagaStatus | None = None,
        saga_name: str | None = None,
        limit: int = 100,
    ) -> list[SagaRecord]:
        where: list[str] = []
        params: list[Any] = []
        if status is not None:
            where.append("status = ?")
            params.append(SagaStatus(status).value)
        if saga_name is not None:
            where.append("saga_name = ?")
            params.append(saga_name)
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        rows = await self._fetch(
            f"SELECT {tables.SAGA_COLUMNS} FROM saga_executions {clause}ORDER BY seq LIMIT ?",
            (*params, limit),
        )
        return [tables.saga_from_row(row) for row in rows]

    async def delete_saga(self, saga_id: str) -> None:
        async with self._transaction() as conn:
            await self._run(conn, "DELETE FROM saga_steps WHERE saga_id = ?", (saga_id,))
            await self._run(conn, "DELETE FROM saga_executions WHERE saga_id = ?", (saga_id,))

    async def list_recoverable(self, now: datetime, limit: int = 100) -> list[SagaRecord]:
        rows = await self._fetch(
            f"SELECT {tables.SAGA_COLUMNS} FROM saga_executions "
            f"WHERE status IN {tables.ACTIVE_SQL} "
            "AND (lease_expires_at IS NULL OR lease_expires_at < ?) ORDER BY seq LIMIT ?",
            (to_text(now), limit),
        )
        return [tables.saga_from_row(row) for row in rows]

    async def claim_saga(self, saga_id: str, owner: str, lease_until: datetime) -> bool:
        async with self._transaction() as conn:
            changed = await self._run(
                conn,
                "UPDATE saga_executions SET owner = ?, lease_expires_at = ? WHERE saga_id = ? "
                "AND (owner IS NULL OR owner = ? OR lease_expires_at IS NULL "
                "OR lease_expires_at < ?)",
                (owner, to_text(lease_until), saga_id, owner, to_text(utcnow())),
            )
        return changed == 1

    # -- steps -----------------------------------------------------------------------------
    async def save_step(self, step: StepRecord, outbox: Sequence[OutboxMessage] = ()) -> None:
        now = to_text(utcnow())
        step_params = (
            step.saga_id,
            step.name,
            StepStatus(step.status).value,
            None if step.result is None else dumps(step.result),
            step.error,
            step.attempts,
            step.completed_seq,
            step.compensation_error,
            now,
        )
        messages = [
            (m.saga_id, m.topic, dumps(m.payload), dumps(dict(m.headers)), now) for m in outbox
        ]
        async with self._transaction() as conn:
            await self._run(conn, _INSERT_STEP, step_params)
            if messages:
                await conn.executemany(
                    "INSERT INTO outbox (saga_id, topic, payload, headers, created_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    messages,
                )

    async def get_steps(self, saga_id: str) -> list[StepRecord]:
        rows = await self._fetch(
            f"SELECT {tables.STEP_COLUMNS} FROM saga_steps WHERE saga_id = ?", (saga_id,)
        )
        return [tables.step_from_row(row) for row in rows]

    async def reset_steps(self, saga_id: str) -> None:
        async with self._transaction() as conn:
            await self._run(conn, "DELETE FROM saga_steps WHERE saga_id = ?", (saga_id,))

    # -- inbox -----------------------------------------------------------------------------
    async def claim_inbox(
        self, trigger_id: str, key: str, saga_id: str, owner: str, lease_until: datetime
    ) -> InboxClaim:
        now = utcnow()
        async with self._transaction() as conn:
            rows = list(
                await conn.execute_fetchall(
                    "SELECT saga_id, owner, lease_until, status FROM inbox "
                    "WHERE trigger_id = ? AND key = ?",
                    (trigger_id, key),
                )
            )
            if not rows:
                await self._run(
                    conn,
                    "INSERT INTO inbox (trigger_id, key, saga_id, owner, lease_until, status, "
                    "created_at) VALUES (?, ?, ?, ?, ?, 'pending', ?)",
                    (trigger_id, key, saga_id, owner, to_text(lease_until), to_text(now)),
                )
                return InboxClaim(ClaimOutcome.CLAIMED, saga_id, owner)
            row_saga, row_owner, row_lease, row_status = rows[0]
            if row_status == "completed":
                return InboxClaim(ClaimOutcome.DUPLICATE, row_saga, row_owner)
            if row_owner == owner or row_lease is None or row_lease < to_text(now):
                await self._run(
                    conn,
                    "UPDATE inbox SET owner = ?, lease_until = ? WHERE trigger_id = ? AND key = ?",
                    (owner, to_text(lease_until), trigger_id, key),
                )
                return InboxClaim(ClaimOutcome.TAKEN_OVER, row_saga, owner)
            return InboxClaim(ClaimOutcome.BUSY, row_saga, row_owner)

    async def complete_inbox(self, trigger_id: str, key: str) -> None:
        async with self._transaction() as conn:
            await self._run(
                conn,
                "UPDATE inbox SET status = 'completed', completed_at = ? "
                "WHERE trigger_id = ? AND key = ?",
                (to_text(utcnow()), trigger_id, key),
            )

    async def release_inbox(self, trigger_id: str, key: str) -> None:
        async with self._transaction() as conn:
            await self._run(
                conn, "DELETE FROM inbox WHERE trigger_id = ? AND key = ?", (trigger_id, key)
            )

    async def renew_leases(self, owner: str, lease_until: datetime) -> int:
        until = to_text(lease_until)
        async with self._transaction() as conn:
            inbox = await self._run(
                conn,
                "UPDATE inbox SET lease_until = ? WHERE owner = ? AND status = 'pending'",
                (until, owner),
            )
            sagas = await self._run(
                conn,
                f"UPDATE saga_executions SET lease_expires_at = ? "
                f"WHERE owner = ? AND status IN {tables.ACTIVE_SQL}",
                (until, owner),
            )
        return inbox + sagas

    async def purge_expired(self, before: datetime) -> int:
        cutoff = to_text(before)
        async with self._transaction() as conn:
            inbox = await self._run(
                conn,
                "DELETE FROM inbox WHERE status = 'completed' AND completed_at < ?",
                (cutoff,),
            )
            events = await self._run(
                conn,
                f"UPDATE saga_executions SET event = NULL WHERE event IS NOT NULL "
                f"AND status IN {tables.TERMINAL_SQL} AND updated_at < ?",
                (cutoff,),
            )
            executions = await self._run(
                conn, "DELETE FROM trigger_executions WHERE completed_at < ?", (cutoff,)
            )
            ticks = await self._run(  # every trigger keeps its newest tick (last_cron_tick)
                conn,
                "DELETE FROM cron_claims WHERE tick < ? AND tick < (SELECT MAX(newest.tick) "
                "FROM cron_claims AS newest WHERE newest.trigger_id = cron_claims.trigger_id)",
                (cutoff,),
            )
        return inbox + events + executions + ticks

    # -- outbox ----------------------------------------------------------------------------
    async def fetch_outbox(self, limit: int = 100) -> list[OutboxMessage]:
        rows = await self._fetch(
            f"SELECT {tables.OUTBOX_COLUMNS} FROM outbox WHERE sent_at IS NULL ORDER BY id LIMIT ?",
            (limit,),
        )
        return [tables.outbox_from_row(row) for row in rows]

    async def mark_outbox_sent(self, ids: Sequence[int]) -> None:
        if not ids:
            return
        now = to_text(utcnow())
        async with self._transaction() as conn:
            for start in range(0, len(ids), _IN_CHUNK):
                chunk = [int(i) for i in ids[start : start + _IN_CHUNK]]
                marks = tables.placeholders(len(chunk))
                sql = f"UPDATE outbox SET sent_at = ? WHERE id IN ({marks})"
                await self._run(conn, sql, (now, *chunk))

    # -- dead letters ----------------------------------------------------------------------
    async def add_dead_letter(self, record: DeadLetterRecord) -> int:
        params = (
            record.trigger_id,
            record.saga_name,
            dumps(record.payload),
            record.error,
            record.reason,
            record.traceback,
            record.attempts,
            record.saga_id,
            record.source,
            dumps(record.meta),
            to_text(utcnow()),
        )
        async with self._transaction() as conn, conn.execute(_INSERT_DEAD_LETTER, params) as cursor:
            dead_id = cursor.lastrowid
        if dead_id is None:  # pragma: no cover - SQLite always reports the rowid of an INSERT
            raise StoreError("SQLite did not report the id of the new dead letter")
        return dead_id

    async def list_dead_letters(
        self, *, trigger_id: str | None = None, limit: int = 100
    ) -> list[DeadLetterRecord]:
        params: list[Any]
        sql, params = "", [limit]
        if trigger_id is not None:
            sql, params = "WHERE trigger_id = ? ", [trigger_id, limit]
        rows = await self._fetch(
            f"SELECT {tables.DEAD_LETTER_COLUMNS} FROM dead_letters {sql}ORDER BY id LIMIT ?",
            params,
        )
        return [tables.dead_letter_from_row(row) for row in rows]

    async def get_dead_letter(self, dead_letter_id: int) -> DeadLetterRecord | None:
        rows = await self._fetch(
            f"SELECT {tables.DEAD_LETTER_COLUMNS} FROM dead_letters WHERE id = ?", (dead_letter_id,)
        )
        return tables.dead_letter_from_row(rows[0]) if rows else None

    async def delete_dead_letter(self, dead_letter_id: int) -> bool:
        async with self._transaction() as conn:
            deleted = await self._run(
                conn, "DELETE FROM dead_letters WHERE id = ?", (dead_letter_id,)
            )
        return deleted == 1

    # -- poll triggers ---------------------------------------------------------------------
    async def save_trigger_schedule(self, record: TriggerScheduleRecord) -> None:
        async with self._transaction() as conn:
            await self._run(
                conn,
                "INSERT INTO trigger_schedules (trigger_name, saga_name, poll_interval_ms, "
                "allow_concurrent, enabled, last_poll_at) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (trigger_name) DO UPDATE SET saga_name = excluded.saga_name, "
                "poll_interval_ms = excluded.poll_interval_ms, "
                "allow_concurrent = excluded.allow_concurrent, enabled = excluded.enabled, "
                "last_poll_at = COALESCE(excluded.last_poll_at, trigger_schedules.last_poll_at)",
                (
                    record.trigger_name,
                    record.saga_name,
                    record.poll_interval_ms,
                    int(record.allow_concurrent),
                    int(record.enabled),
                    tables.optional_text(record.last_poll_at),
                ),
            )

    async def get_trigger_schedule(self, trigger_name: str) -> TriggerScheduleRecord | None:
        rows = await self._fetch(
            "SELECT trigger_name, saga_name, poll_interval_ms, allow_concurrent, enabled, "
            "last_poll_at FROM trigger_schedules WHERE trigger_name = ?",
            (trigger_name,),
        )
        if not rows:
            return None
        name, saga_name, interval, concurrent, enabled, last = rows[0]
        return TriggerScheduleRecord(
            name, saga_name, interval, bool(concurrent), bool(enabled), tables.optional_moment(last)
        )

    async def touch_trigger_schedule(self, trigger_name: str, last_poll_at: datetime) -> None:
        async with self._transaction() as conn:
            await self._run(
                conn,
                "UPDATE trigger_schedules SET last_poll_at = ? WHERE trigger_name = ?",
                (to_text(last_poll_at), trigger_name),
            )

    async def start_trigger_execution(
        self, record: TriggerExecutionRecord, *, exclusive: bool
    ) -> bool:
        started = to_text(record.started_at or utcnow())
        params = (record.trigger_name, record.context_hash, record.saga_id, int(exclusive), started)
        insert = (
            "INSERT INTO trigger_executions (trigger_name, context_hash, saga_id, exclusive, "
            "started_at) "
        )
        async with self._transaction() as conn:
            if not exclusive:
                await self._run(conn, insert + "VALUES (?, ?, ?, ?, ?)", params)
                return True
            inserted = await self._run(
                conn,
                insert + "SELECT ?, ?, ?, ?, ? WHERE NOT EXISTS (SELECT 1 FROM "
                "trigger_executions WHERE trigger_name = ? AND context_hash = ? "
                "AND completed_at IS NULL) ON CONFLICT DO NOTHING",
                (*params, record.trigger_name, record.context_hash),
            )
        return inserted == 1

    async def complete_trigger_execution(self, trigger_name: str, saga_id: str) -> None:
        async with self._transaction() as conn:
            await self._run(
                conn,
                "UPDATE trigger_executions SET completed_at = ? WHERE trigger_name = ? "
                "AND saga_id = ? AND completed_at IS NULL",
                (to_text(utcnow()), trigger_name, saga_id),
            )

    async def list_trigger_executions(self, trigger_name: str) -> list[TriggerExecutionRecord]:
        rows = await self._fetch(
            f"SELECT {tables.EXECUTION_COLUMNS} FROM trigger_executions WHERE trigger_name = ? "
            "ORDER BY id",
            (trigger_name,),
        )
        return [tables.execution_from_row(row) for row in rows]

    # -- cron ------------------------------------------------------------------------------
    async def claim_cron_tick(self, trigger_id: str, tick: datetime, owner: str) -> bool:
        async with self._transaction() as conn:
            inserted = await self._run(
                conn,
                "INSERT INTO cron_claims (trigger_id, tick, owner, claimed_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (trigger_id, to_text(tick), owner, to_text(utcnow())),
            )
        return inserted == 1

    async def last_cron_tick(self, trigger_id: str) -> datetime | None:
        rows = await self._fetch(
            "SELECT MAX(tick) FROM cron_claims WHERE trigger_id = ?", (trigger_id,)
        )
        return tables.optional_moment(rows[0][0]) if rows else None
