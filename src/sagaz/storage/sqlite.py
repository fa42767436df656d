"""The embedded default store: one SQLite file, through the standard ``sqlite3`` module.

>>> async with SQLiteSagaStore("sqlite:///sagaz.db") as store:  # doctest: +SKIP
...     await store.get_saga("...")

One connection serves the process; it is made, used and closed in one dedicated thread
(:mod:`sagaz.storage.sqlite_groups`). Every operation prepares its parameters on the event
loop, then queues a plain function that runs all its SQL on that connection. Operations are
grouped (group commit): the queued ones run in the thread, in one hop, as one
``BEGIN IMMEDIATE`` transaction, each in its own ``SAVEPOINT`` (an error undoes that operation
only), ended by one ``COMMIT``; those queued meanwhile form the next group. Every operation
returns only after its group's COMMIT, so a claim (read the row, then write it) holds SQLite's
write lock throughout, stays atomic even against another process on the same file, and is
durable when it returns: the database runs in WAL mode with ``synchronous=FULL``. A lost
transaction (an error rolled it back, or the COMMIT failed) fails every operation of its
group; reads are queued like writes and return after their group's COMMIT too, so no caller
acts on a write that did not last (a group of reads only does not take the write lock).
A caller cancelled while its operation is queued drops it; once running, it completes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sagaz.abc import SagaStore
from sagaz.clock import utcnow
from sagaz.exceptions import StoreError, StoreUnavailableError
from sagaz.records import (
    ClaimOutcome,
    DeadLetterRecord,
    InboxClaim,
    OutboxMessage,
    SagaAction,
    SagaControlRequest,
    SagaHistoryRecord,
    SagaRecord,
    SchemaVersions,
    StepRecord,
    TriggerExecutionRecord,
    TriggerScheduleRecord,
)
from sagaz.storage import sqlite_schema as tables
from sagaz.storage.codec import dumps, from_text, to_text
from sagaz.storage.rate_limits import rate_interval
from sagaz.storage.rate_limits import take as take_token
from sagaz.storage.sqlite_groups import GroupCommitter
from sagaz.storage.url import sqlite_path
from sagaz.types import SagaStatus, StepStatus

__all__ = ["SQLiteSagaStore"]

T = TypeVar("T")

_IN_CHUNK = 500  # well under SQLite's bound-parameter limit
#: SQLite's words for a file that cannot be used right now (StoreUnavailableError)
_UNAVAILABLE = ("locked", "disk I/O error", "unable to open", "disk is full")
_INSERT_SAGA = (
    f"INSERT INTO saga_executions ({tables.SAGA_COLUMNS}) VALUES ({tables.placeholders(12)})"
)
_UPSERT_SAGA = (
    f"{_INSERT_SAGA} ON CONFLICT (saga_id) DO UPDATE SET "
    "saga_name = excluded.saga_name, status = excluded.status, "
    "context = excluded.context, "
    "attempt = excluded.attempt, error = excluded.error, "
    "trigger_id = excluded.trigger_id, event = excluded.event, "
    "owner = excluded.owner, lease_expires_at = excluded.lease_expires_at, "
    "updated_at = excluded.updated_at"
)
_INSERT_STEP = (
    f"INSERT OR REPLACE INTO saga_steps ({tables.STEP_COLUMNS}) VALUES ({tables.placeholders(9)})"
)
_INSERT_OUTBOX = (
    "INSERT INTO outbox (saga_id, topic, payload, headers, created_at) VALUES (?, ?, ?, ?, ?)"
)
_INSERT_DEAD_LETTER = (
    f"INSERT INTO dead_letters ({tables.DEAD_LETTER_COLUMNS.removeprefix('id, ')}) "
    f"VALUES ({tables.placeholders(11)})"
)


def _rows(conn: sqlite3.Connection, sql: str, params: Sequence[Any] = ()) -> list[Any]:
    """Every row of one query (in the store's thread)."""
    return conn.execute(sql, params).fetchall()


def _change(conn: sqlite3.Connection, sql: str, params: Sequence[Any] = ()) -> int:
    """Execute one statement (in the store's thread); return the number of rows it changed."""
    return conn.execute(sql, params).rowcount


def _as_created(record: SagaRecord, now: datetime) -> SagaRecord:
    """The record :meth:`SQLiteSagaStore.create_saga` just stored (not decoded back)."""
    return dataclasses.replace(
        record,
        status=SagaStatus(record.status),
        created_at=record.created_at or now,
        updated_at=now,
    )


def _schedule(row: Sequence[Any]) -> TriggerScheduleRecord:
    name, saga_name, interval, concurrent, enabled, last = row
    return TriggerScheduleRecord(
        name, saga_name, interval, bool(concurrent), bool(enabled), tables.optional_moment(last)
    )


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
        self._groups: GroupCommitter | None = None  # the thread, its connection, the queue
        self._lifecycle_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"SQLiteSagaStore({self.path!r})"

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Open the file (WAL mode) and create the schema if the file has none. Idempotent.

        An older schema raises :class:`~sagaz.exceptions.SchemaOutdatedError`: migrate it
        with ``sagaz db upgrade`` (:meth:`upgrade_schema`)."""
        async with self._lifecycle_lock:
            if self._groups is not None:
                return
            connect = functools.partial(
                tables.open_database, self.path, self._busy_timeout_ms, url=self._store_url()
            )
            try:
                self._groups = await GroupCommitter.open(
                    connect, error=self._error, label=f"SQLite store {self.path!r}"
                )
            except sqlite3.Error as exc:
                raise self._error(exc) from exc
            self._started = True

    async def stop(self) -> None:
        """Run the queued operations, wait for the running group, then close the connection
        and its thread. Idempotent."""
        async with self._lifecycle_lock:
            groups, self._groups = self._groups, None
            self._started = False
            if groups is not None:
                try:
                    await groups.close()
                except sqlite3.Error as exc:
                    raise self._error(exc) from exc

    def _store_url(self) -> str:
        """The ``sqlite:///`` URL of the file (for ``--store`` and messages)."""
        return f"sqlite:///{self.path}"

    async def schema_version(self) -> int:
        """The schema version recorded in the database."""
        rows = await self._fetch("SELECT MAX(version) FROM schema_version")
        return int(rows[0][0])

    async def schema_versions(self) -> SchemaVersions:
        try:
            return await asyncio.to_thread(tables.read_versions, self.path)
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    async def upgrade_schema(self) -> SchemaVersions:
        upgrade = functools.partial(
            tables.upgrade_database, self.path, self._busy_timeout_ms, url=self._store_url()
        )
        try:
            return await asyncio.to_thread(upgrade)
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    def _committer(self) -> GroupCommitter:
        if self._groups is None:
            raise StoreError(
                f"{self!r} is not started: call await store.start() or use async with store"
            )
        return self._groups

    def _error(self, exc: sqlite3.Error) -> StoreError:
        """The :class:`StoreError` for ``exc``: a :class:`StoreUnavailableError` when the
        file cannot be used right now (locked by another process, I/O error, disk full), so
        the engine waits for it instead of failing the event."""
        hint = ""
        text = str(exc)
        if "locked" in text:
            hint = (
                "; another process held the write lock longer than busy_timeout: raise "
                "SQLiteSagaStore(..., busy_timeout=) or use PostgreSQL for many writers"
            )
        elif "unable to open" in text:
            hint = "; check that the directory exists and that this process may write to it"
        message = f"SQLite store {self.path!r}: {exc}{hint}"
        if isinstance(exc, sqlite3.OperationalError) and any(
            condition in text for condition in _UNAVAILABLE
        ):
            return StoreUnavailableError(message)
        return StoreError(message)

    async def _write(self, op: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``op`` (all of its SQL, in the store's thread) as one atomic operation of the
        next group; return its result once that group has committed."""
        return await self._committer().run(op)

    async def _write_one(self, sql: str, params: Sequence[Any] = ()) -> int:
        """:meth:`_write` one statement; return the number of rows it changed."""
        return await self._write(lambda conn: _change(conn, sql, params))

    async def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """The rows of one query, read in the next group (after the writes queued before it)."""
        return await self._committer().run(lambda conn: _rows(conn, sql, params), writes=False)

    # -- sagas -----------------------------------------------------------------------------
    async def create_saga(self, record: SagaRecord) -> tuple[SagaRecord, bool]:
        now = utcnow()
        params = tables.saga_params(record, record.created_at or now, now)

        def create(conn: sqlite3.Connection) -> list[Any]:
            rows = _rows(
                conn,
                f"SELECT {tables.SAGA_COLUMNS} FROM saga_executions WHERE saga_id = ?",
                (record.saga_id,),
            )
            if not rows:
                _change(conn, _INSERT_SAGA, params)
            return rows

        rows = await self._write(create)
        if rows:
            return tables.saga_from_row(rows[0]), False
        return _as_created(record, now), True

    async def save_saga(self, record: SagaRecord, outbox: Sequence[OutboxMessage] = ()) -> None:
        now = utcnow()
        params = tables.saga_params(record, record.created_at or now, now)
        messages = self._outbox_rows(outbox, to_text(now))

        def save(conn: sqlite3.Connection) -> None:
            conn.execute(_UPSERT_SAGA, params)
            if messages:
                conn.executemany(_INSERT_OUTBOX, messages)

        await self._write(save)

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
        trigger_id: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        after: str | None = None,
        limit: int = 100,
    ) -> list[SagaRecord]:
        # newest first is descending ``seq``: the status and name filters walk their
        # (status, seq) / (saga_name, seq) indexes backwards; the others filter that walk
        conditions = {
            "status = ?": None if status is None else SagaStatus(status).value,
            "saga_name = ?": saga_name,
            "trigger_id = ?": trigger_id,
            "created_at >= ?": tables.optional_text(created_after),
            "created_at < ?": tables.optional_text(created_before),
            "seq < (SELECT seq FROM saga_executions WHERE saga_id = ?)": after,
        }
        where = [condition for condition, value in conditions.items() if value is not None]
        params = [value for value in conditions.values() if value is not None]
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        rows = await self._fetch(
            f"SELECT {tables.SAGA_COLUMNS} FROM saga_executions {clause}ORDER BY seq DESC LIMIT ?",
            (*params, limit),
        )
        return [tables.saga_from_row(row) for row in rows]

    async def delete_saga(self, saga_id: str) -> None:
        def delete(conn: sqlite3.Connection) -> None:
            _change(conn, "DELETE FROM saga_steps WHERE saga_id = ?", (saga_id,))
            _change(conn, "DELETE FROM saga_executions WHERE saga_id = ?", (saga_id,))

        await self._write(delete)

    async def list_recoverable(self, now: datetime, limit: int = 100) -> list[SagaRecord]:
        rows = await self._fetch(
            f"SELECT {tables.SAGA_COLUMNS} FROM saga_executions "
            f"WHERE status IN {tables.ACTIVE_SQL} "
            "AND (lease_expires_at IS NULL OR lease_expires_at < ?) ORDER BY seq LIMIT ?",
            (to_text(now), limit),
        )
        return [tables.saga_from_row(row) for row in rows]

    async def claim_saga(self, saga_id: str, owner: str, lease_until: datetime) -> bool:
        changed = await self._write_one(
            "UPDATE saga_executions SET owner = ?, lease_expires_at = ? WHERE saga_id = ? "
            "AND (owner IS NULL OR owner = ? OR lease_expires_at IS NULL "
            "OR lease_expires_at < ?)",
            (owner, to_text(lease_until), saga_id, owner, to_text(utcnow())),
        )
        return changed == 1

    # -- steps -----------------------------------------------------------------------------
    async def save_step(self, step: StepRecord, outbox: Sequence[OutboxMessage] = ()) -> None:
        now = to_text(utcnow())
        step_params = self._step_params(step, now)
        messages = self._outbox_rows(outbox, now)

        def save(conn: sqlite3.Connection) -> None:
            conn.execute(_INSERT_STEP, step_params)
            if messages:
                conn.executemany(_INSERT_OUTBOX, messages)

        await self._write(save)

    async def save_checkpoint(
        self,
        saga: SagaRecord | None = None,
        steps: Sequence[StepRecord] = (),
        outbox: Sequence[OutboxMessage] = (),
        *,
        complete_inbox: tuple[str, str] | None = None,
    ) -> None:
        """One operation of the group committer: all or nothing (see the contract)."""
        if saga is None and outbox and not steps:
            raise ValueError("save_checkpoint: outbox messages need a saga or a step to go with")
        moment = utcnow()
        now = to_text(moment)
        step_rows = [self._step_params(step, now) for step in steps]
        saga_params = (
            None if saga is None else tables.saga_params(saga, saga.created_at or moment, moment)
        )
        messages = self._outbox_rows(outbox, now)

        def save(conn: sqlite3.Connection) -> None:
            if step_rows:
                conn.executemany(_INSERT_STEP, step_rows)
            if saga_params is not None:
                conn.execute(_UPSERT_SAGA, saga_params)
            if messages:
                conn.executemany(_INSERT_OUTBOX, messages)
            if complete_inbox is not None:
                conn.execute(
                    "UPDATE inbox SET status = 'completed', completed_at = ? "
                    "WHERE trigger_id = ? AND key = ?",
                    (now, *complete_inbox),
                )

        await self._write(save)

    @staticmethod
    def _step_params(step: StepRecord, now: str) -> tuple[Any, ...]:
        return (
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

    @staticmethod
    def _outbox_rows(outbox: Sequence[OutboxMessage], now: str) -> list[tuple[Any, ...]]:
        return [(m.saga_id, m.topic, dumps(m.payload), dumps(dict(m.headers)), now) for m in outbox]

    async def get_steps(self, saga_id: str) -> list[StepRecord]:
        rows = await self._fetch(
            f"SELECT {tables.STEP_COLUMNS} FROM saga_steps WHERE saga_id = ?", (saga_id,)
        )
        return [tables.step_from_row(row) for row in rows]

    async def reset_steps(self, saga_id: str) -> None:
        await self._write_one("DELETE FROM saga_steps WHERE saga_id = ?", (saga_id,))

    # -- inbox -----------------------------------------------------------------------------
    async def claim_inbox(
        self, trigger_id: str, key: str, saga_id: str, owner: str, lease_until: datetime
    ) -> InboxClaim:
        now, until = to_text(utcnow()), to_text(lease_until)

        def claim(conn: sqlite3.Connection) -> InboxClaim:
            rows = _rows(
                conn,
                "SELECT saga_id, owner, lease_until, status FROM inbox "
                "WHERE trigger_id = ? AND key = ?",
                (trigger_id, key),
            )
            if not rows:
                _change(
                    conn,
                    "INSERT INTO inbox (trigger_id, key, saga_id, owner, lease_until, status, "
                    "created_at) VALUES (?, ?, ?, ?, ?, 'pending', ?)",
                    (trigger_id, key, saga_id, owner, until, now),
                )
                return InboxClaim(ClaimOutcome.CLAIMED, saga_id, owner)
            row_saga, row_owner, row_lease, row_status = rows[0]
            if row_status == "completed":
                return InboxClaim(ClaimOutcome.DUPLICATE, row_saga, row_owner)
            if row_owner == owner or row_lease is None or row_lease < now:
                _change(
                    conn,
                    "UPDATE inbox SET owner = ?, lease_until = ? WHERE trigger_id = ? AND key = ?",
                    (owner, until, trigger_id, key),
                )
                return InboxClaim(ClaimOutcome.TAKEN_OVER, row_saga, owner)
            return InboxClaim(ClaimOutcome.BUSY, row_saga, row_owner)

        return await self._write(claim)

    async def complete_inbox(self, trigger_id: str, key: str) -> None:
        await self._write_one(
            "UPDATE inbox SET status = 'completed', completed_at = ? "
            "WHERE trigger_id = ? AND key = ?",
            (to_text(utcnow()), trigger_id, key),
        )

    async def release_inbox(self, trigger_id: str, key: str) -> None:
        await self._write_one(
            "DELETE FROM inbox WHERE trigger_id = ? AND key = ?", (trigger_id, key)
        )

    async def renew_leases(self, owner: str, lease_until: datetime) -> int:
        until = to_text(lease_until)

        def renew(conn: sqlite3.Connection) -> int:
            inbox = _change(
                conn,
                "UPDATE inbox SET lease_until = ? WHERE owner = ? AND status = 'pending'",
                (until, owner),
            )
            sagas = _change(
                conn,
                f"UPDATE saga_executions SET lease_expires_at = ? "
                f"WHERE owner = ? AND status IN {tables.ACTIVE_SQL}",
                (until, owner),
            )
            return inbox + sagas

        return await self._write(renew)

    async def purge_expired(self, before: datetime) -> int:
        cutoff = (to_text(before),)

        def purge(conn: sqlite3.Connection) -> int:
            inbox = _change(
                conn, "DELETE FROM inbox WHERE status = 'completed' AND completed_at < ?", cutoff
            )
            events = _change(
                conn,
                f"UPDATE saga_executions SET event = NULL WHERE event IS NOT NULL "
                f"AND status IN {tables.TERMINAL_SQL} AND updated_at < ?",
                cutoff,
            )
            executions = _change(
                conn, "DELETE FROM trigger_executions WHERE completed_at < ?", cutoff
            )
            ticks = _change(  # every trigger keeps its newest tick (last_cron_tick)
                conn,
                "DELETE FROM cron_claims WHERE tick < ? AND tick < (SELECT MAX(newest.tick) "
                "FROM cron_claims AS newest WHERE newest.trigger_id = cron_claims.trigger_id)",
                cutoff,
            )
            return inbox + events + executions + ticks

        return await self._write(purge)

    # -- outbox ----------------------------------------------------------------------------
    async def fetch_outbox(self, limit: int = 100) -> list[OutboxMessage]:
        rows = await self._fetch(
            f"SELECT {tables.OUTBOX_COLUMNS} FROM outbox WHERE sent_at IS NULL ORDER BY id LIMIT ?",
            (limit,),
        )
        return [tables.outbox_from_row(row) for row in rows]

    async def list_saga_outbox(self, saga_id: str, limit: int = 100) -> list[OutboxMessage]:
        rows = await self._fetch(
            f"SELECT {tables.OUTBOX_COLUMNS} FROM outbox WHERE saga_id = ? ORDER BY id LIMIT ?",
            (saga_id, limit),
        )
        return [tables.outbox_from_row(row) for row in rows]

    async def mark_outbox_sent(self, ids: Sequence[int]) -> None:
        if not ids:
            return
        now = to_text(utcnow())
        chunks = [
            [int(i) for i in ids[start : start + _IN_CHUNK]]
            for start in range(0, len(ids), _IN_CHUNK)
        ]

        def mark(conn: sqlite3.Connection) -> None:
            for chunk in chunks:
                marks = tables.placeholders(len(chunk))
                conn.execute(f"UPDATE outbox SET sent_at = ? WHERE id IN ({marks})", (now, *chunk))

        await self._write(mark)

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
        dead_id = await self._write(
            lambda conn: conn.execute(_INSERT_DEAD_LETTER, params).lastrowid
        )
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
        deleted = await self._write_one("DELETE FROM dead_letters WHERE id = ?", (dead_letter_id,))
        return deleted == 1

    # -- poll triggers ---------------------------------------------------------------------
    async def save_trigger_schedule(self, record: TriggerScheduleRecord) -> None:
        await self._write_one(
            "INSERT INTO trigger_schedules (trigger_name, saga_name, poll_interval_ms, "
            "allow_concurrent, enabled, last_poll_at) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (trigger_name) DO UPDATE SET saga_name = excluded.saga_name, "
            "poll_interval_ms = excluded.poll_interval_ms, "
            "allow_concurrent = excluded.allow_concurrent, "
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
        return _schedule(rows[0]) if rows else None

    async def list_trigger_schedules(self) -> list[TriggerScheduleRecord]:
        rows = await self._fetch(
            "SELECT trigger_name, saga_name, poll_interval_ms, allow_concurrent, enabled, "
            "last_poll_at FROM trigger_schedules ORDER BY trigger_name"
        )
        return [_schedule(row) for row in rows]

    async def set_trigger_enabled(self, trigger_name: str, enabled: bool) -> bool:
        changed = await self._write_one(
            "UPDATE trigger_schedules SET enabled = ? WHERE trigger_name = ?",
            (int(enabled), trigger_name),
        )
        return changed == 1

    async def touch_trigger_schedule(self, trigger_name: str, last_poll_at: datetime) -> None:
        await self._write_one(
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
        if not exclusive:
            await self._write_one(insert + "VALUES (?, ?, ?, ?, ?)", params)
            return True
        inserted = await self._write_one(
            insert + "SELECT ?, ?, ?, ?, ? WHERE NOT EXISTS (SELECT 1 FROM "
            "trigger_executions WHERE trigger_name = ? AND context_hash = ? "
            "AND completed_at IS NULL) ON CONFLICT DO NOTHING",
            (*params, record.trigger_name, record.context_hash),
        )
        return inserted == 1

    async def complete_trigger_execution(self, trigger_name: str, saga_id: str) -> None:
        await self._write_one(
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
        inserted = await self._write_one(
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

    # -- leases ----------------------------------------------------------------------------
    async def acquire_lease(self, name: str, holder: str, ttl: float) -> bool:
        now = utcnow()
        taken = await self._write_one(
            "INSERT INTO leases (name, holder, expires_at) VALUES (?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, "
            "expires_at = excluded.expires_at "
            "WHERE leases.holder = excluded.holder OR leases.expires_at <= ?",
            (name, holder, to_text(now + timedelta(seconds=ttl)), to_text(now)),
        )
        return taken == 1

    async def renew_lease(self, name: str, holder: str, ttl: float) -> bool:
        now = utcnow()
        renewed = await self._write_one(
            "UPDATE leases SET expires_at = ? WHERE name = ? AND holder = ? AND expires_at > ?",
            (to_text(now + timedelta(seconds=ttl)), name, holder, to_text(now)),
        )
        return renewed == 1

    async def release_lease(self, name: str, holder: str) -> bool:
        released = await self._write_one(
            "DELETE FROM leases WHERE name = ? AND holder = ? AND expires_at > ?",
            (name, holder, to_text(utcnow())),
        )
        return released == 1

    # -- shared rate limits ----------------------------------------------------------------
    async def take_rate_token(self, name: str, rate: float, burst: int) -> float:
        rate_interval(rate, burst)  # a bad bucket fails here, not in the store's thread

        def take_one(conn: sqlite3.Connection) -> float:
            row = conn.execute("SELECT tat FROM rate_limits WHERE name = ?", (name,)).fetchone()
            wait, tat = take_token(row[0] if row else None, time.time(), rate, burst)
            if tat is not None:
                conn.execute(
                    "INSERT INTO rate_limits (name, tat) VALUES (?, ?) "
                    "ON CONFLICT (name) DO UPDATE SET tat = excluded.tat",
                    (name, tat),
                )
            return wait

        return await self._write(take_one)

    # -- saga control ----------------------------------------------------------------------
    async def delete_steps(self, saga_id: str, names: Sequence[str]) -> None:
        wanted = list(names)

        def delete(conn: sqlite3.Connection) -> None:
            for start in range(0, len(wanted), _IN_CHUNK):
                chunk = wanted[start : start + _IN_CHUNK]
                _change(
                    conn,
                    f"DELETE FROM saga_steps WHERE saga_id = ? "
                    f"AND name IN ({tables.placeholders(len(chunk))})",
                    (saga_id, *chunk),
                )

        if wanted:
            await self._write(delete)

    async def add_saga_history(self, entry: SagaHistoryRecord) -> int:
        params = (
            entry.saga_id,
            to_text(entry.at or utcnow()),
            entry.action,
            entry.actor,
            entry.detail,
        )

        def add(conn: sqlite3.Connection) -> int:
            cursor = conn.execute(
                "INSERT INTO saga_history (saga_id, at, action, actor, detail) "
                "VALUES (?, ?, ?, ?, ?)",
                params,
            )
            return int(cursor.lastrowid or 0)

        return await self._write(add)

    async def list_saga_history(self, saga_id: str, limit: int = 100) -> list[SagaHistoryRecord]:
        rows = await self._fetch(
            "SELECT id, saga_id, at, action, actor, detail FROM saga_history "
            "WHERE saga_id = ? ORDER BY id LIMIT ?",
            (saga_id, limit),
        )
        return [
            SagaHistoryRecord(saga_id, action, actor, detail, entry_id, tables.optional_moment(at))
            for entry_id, saga_id, at, action, actor, detail in rows
        ]

    async def add_saga_request(self, request: SagaControlRequest) -> bool:
        added = await self._write_one(
            "INSERT INTO saga_requests (saga_id, action, step, actor, reason, attempt, "
            "requested_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (saga_id) DO NOTHING",
            (
                request.saga_id,
                SagaAction(request.action).value,
                request.step,
                request.actor,
                request.reason,
                request.attempt,
                to_text(request.requested_at or utcnow()),
            ),
        )
        return added == 1

    async def list_saga_requests(
        self, *, saga_id: str | None = None, limit: int = 100
    ) -> list[SagaControlRequest]:
        where, params = ("WHERE saga_id = ? ", (saga_id,)) if saga_id is not None else ("", ())
        rows = await self._fetch(
            "SELECT saga_id, action, step, actor, reason, attempt, requested_at "
            f"FROM saga_requests {where}ORDER BY requested_at, saga_id LIMIT ?",
            (*params, limit),
        )
        return [
            SagaControlRequest(
                saga_id, SagaAction(action), step, actor, reason, attempt, from_text(at)
            )
            for saga_id, action, step, actor, reason, attempt, at in rows
        ]

    async def finish_saga_request(self, saga_id: str, action: SagaAction) -> bool:
        deleted = await self._write_one(
            "DELETE FROM saga_requests WHERE saga_id = ? AND action = ?",
            (saga_id, SagaAction(action).value),
        )
        return deleted == 1
