"""Sagas, their steps and combined checkpoints.

A part of :class:`~sagaz.storage.sqlite.SQLiteSagaStore`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sagaz.clock import utcnow
from sagaz.exceptions import LeaseLostError
from sagaz.records import (
    OutboxMessage,
    SagaRecord,
    StepRecord,
)
from sagaz.storage import sqlite_rows as mapping
from sagaz.storage import sqlite_schema as tables
from sagaz.storage.checkpoints import check_checkpoint
from sagaz.storage.codec import to_text
from sagaz.storage.sql import claimable, outbox_params, take_over_set
from sagaz.storage.sqlite.connection import (
    _INSERT_SAGA,
    SQLiteConnection,
    _change,
    _rows,
    _rows_args,
)
from sagaz.types import SagaStatus

__all__ = ["SQLiteSagas"]

_TAKE_OVER = (  # claim_saga's claim, counted (see take_over_set)
    f"UPDATE saga_executions SET {take_over_set('?1')}, lease_expires_at = ?2 "
    f"WHERE saga_id = ?3 AND {claimable('?1', '?4')} RETURNING recovery_attempts"
)

_UPSERT_SAGA = (
    f"{_INSERT_SAGA} ON CONFLICT (saga_id) DO UPDATE SET "
    "saga_name = excluded.saga_name, status = excluded.status, "
    "context = excluded.context, "
    "attempt = excluded.attempt, error = excluded.error, "
    "trigger_id = excluded.trigger_id, event = excluded.event, "
    "owner = excluded.owner, lease_expires_at = excluded.lease_expires_at, "
    "updated_at = excluded.updated_at WHERE saga_executions.owner IS NULL "
    "OR excluded.owner IS NULL OR saga_executions.owner = excluded.owner "
    "OR saga_executions.attempt < excluded.attempt"
)

_UPDATE_SAGA = (  # the values of sqlite_rows.saga_update_params: _UPSERT_SAGA's but created_at
    # a saga's name does not change, so this update does not set it (a column it sets is a
    # rewrite of every index that holds it: saga_executions_by_name's entry deleted and
    # inserted again, two B-tree writes an update); a row under another name is not found
    # here, and _save writes it with _UPSERT_SAGA
    "UPDATE saga_executions SET status = ?3, context = ?4, attempt = ?5, "
    "error = NULLIF(?6, 0), trigger_id = ?7, event = NULLIF(?8, 0), owner = ?9, "
    "lease_expires_at = ?10, updated_at = ?11 WHERE saga_id = ?1 AND saga_name = ?2 "
    "AND (owner IS NULL OR ?9 IS NULL OR owner = ?9 OR attempt < ?5)"
)

_CREATE_SAGA = f"{_INSERT_SAGA} ON CONFLICT (saga_id) DO NOTHING"

_INSERT_STEP = (  # keyed by its saga row's seq, in arrival order (schema 9: STEPS_OF)
    f"INSERT OR REPLACE INTO saga_steps (saga_seq, {tables.STEP_COLUMNS}) VALUES (COALESCE(("
    "SELECT seq FROM saga_executions WHERE saga_id = ?1), 0), ?1, ?2, ?3, "
    # the values of sqlite_rows.step_params: NO_TEXT, NO_INTEGER for the empty ones
    "NULLIF(?4, 0), NULLIF(?5, 0), ?6, NULLIF(?7, 0.5), NULLIF(?8, 0), ?9)"
)

_DELETE_STEPS = f"DELETE FROM saga_steps WHERE {tables.STEPS_OF}"

_RECOVERABLE = (  # oldest first: saga_executions_active in order
    f"SELECT {tables.SAGA_COLUMNS} FROM saga_executions WHERE {tables.ACTIVE_WHERE} "
    "AND (lease_expires_at IS NULL OR lease_expires_at < ?) ORDER BY seq LIMIT ?"
)

_COMPLETE_INBOX = (
    "UPDATE inbox SET status = 'completed', completed_at = ? WHERE trigger_id = ? AND key = ?"
)

_INSERT_OUTBOX = (
    "INSERT INTO outbox (saga_id, topic, payload, headers, created_at) VALUES (?, ?, ?, ?, ?)"
)


def _as_created(record: SagaRecord, now: datetime) -> SagaRecord:
    """The record :meth:`SQLiteSagaStore.create_saga` just stored (not decoded back)."""
    status = record.status
    # by position, every field (dataclasses.replace cost five times as much; a field added
    # to SagaRecord must be added here: tests/unit/test_sqlite_queued_writes.py compares
    # this record with the stored one)
    return SagaRecord(
        record.saga_id,
        record.saga_name,
        status if type(status) is SagaStatus else SagaStatus(status),
        record.context,
        record.attempt,
        record.error,
        record.trigger_id,
        record.event,
        record.owner,
        record.lease_expires_at,
        record.created_at or now,
        now,
    )


def _save(cursor: sqlite3.Cursor, params: tuple[Any, ...], created: datetime | None) -> bool:
    """Update a saga row, or write it whole if the update finds none (no row: an insert, an
    upsert that finds the row costs about 1 µs more; a row under another name); return False,
    writing nothing, when another owner holds the row (fenced: see the contract). ``params``:
    :func:`~sagaz.storage.sqlite_rows.saga_update_params`, ``created``: the record's
    ``created_at`` (None: created now)."""
    if cursor.execute(_UPDATE_SAGA, params).rowcount:
        return True
    created_text = mapping.NO_TEXT if created is None else mapping.lasting_text(created)
    return bool(cursor.execute(_UPSERT_SAGA, (*params[:10], created_text, params[10])).rowcount)


def _create(cursor: sqlite3.Cursor, params: tuple[Any, ...]) -> list[Any]:
    """Insert a saga row unless its saga exists: no rows if inserted, else the existing row."""
    # a new saga (the common case) is one statement; a known one is read after it
    if _change(cursor, _CREATE_SAGA, params):
        return []
    return _rows(
        cursor, f"SELECT {tables.SAGA_COLUMNS} FROM saga_executions WHERE saga_id = ?", (params[0],)
    )


def _save_step(
    cursor: sqlite3.Cursor, args: tuple[tuple[Any, ...], Sequence[tuple[Any, ...]]]
) -> None:
    """:meth:`SQLiteSagas.save_step` in the writer's transaction; ``args``: the step row and
    the outbox rows."""
    row, messages = args
    cursor.execute(_INSERT_STEP, row)
    if messages:
        cursor.executemany(_INSERT_OUTBOX, messages)


def _save_checkpoint(
    cursor: sqlite3.Cursor,
    args: tuple[
        Sequence[tuple[Any, ...]],
        tuple[Any, ...] | None,
        datetime | None,
        Sequence[tuple[Any, ...]],
        tuple[str, str, str] | None,
    ],
) -> bool:
    """:meth:`SQLiteSagas.save_checkpoint` in the writer's transaction; ``args``: the step
    rows, the saga row's update (or None) and its record's ``created_at``, the outbox rows,
    and the inbox row to complete (its ``completed_at``, trigger id and key, or None).
    False: fenced, nothing written."""
    step_rows, saga_params, created, messages, inbox = args
    if saga_params is not None and not _save(cursor, saga_params, created):
        return False  # the saga row first: a fenced checkpoint writes nothing
    for row in step_rows:  # mostly one: executemany would cost more
        cursor.execute(_INSERT_STEP, row)
    if messages:
        cursor.executemany(_INSERT_OUTBOX, messages)
    if inbox is not None:
        cursor.execute(_COMPLETE_INBOX, inbox)
    return True


def _list_sagas_sql(
    status: SagaStatus | None, conditions: dict[str, str | None], limit: int
) -> tuple[str, tuple[Any, ...]]:
    """The statement of :meth:`SQLiteSagas.list_sagas` and its parameters: ``status``, and
    those of ``conditions`` (SQL: value) whose value is not ``None``."""
    # newest first is descending ``seq``. A status is a literal, so that the planner may read
    # a partial index whose condition it implies: pending and running walk
    # saga_executions_active backwards, the rare statuses (status, seq) of
    # saga_executions_by_rare_status; completed (most rows) walks seq itself (the unary +
    # keeps the planner from saga_executions_finished, which would sort all of them). The
    # name filter walks (saga_name, seq); the other filters filter those walks
    where = [condition for condition, value in conditions.items() if value is not None]
    params: list[Any] = [value for value in conditions.values() if value is not None]
    if status is not None:
        value = SagaStatus(status).value
        column = "+status" if value == SagaStatus.COMPLETED else "status"
        where.insert(0, f"{column} = '{value}'")
    clause = f"WHERE {' AND '.join(where)} " if where else ""
    sql = f"SELECT {tables.SAGA_COLUMNS} FROM saga_executions {clause}ORDER BY seq DESC LIMIT ?"
    return sql, (*params, limit)


class SQLiteSagas(SQLiteConnection):
    """Sagas, their steps and combined checkpoints."""

    # -- sagas -----------------------------------------------------------------------------
    async def create_saga(self, record: SagaRecord) -> tuple[SagaRecord, bool]:
        now, text_now = self._moment()
        params = mapping.saga_params(record, text_now)

        rows = await self._submit(_create, params)
        if rows:
            return mapping.saga_from_row(rows[0]), False
        return _as_created(record, now), True

    async def save_saga(self, record: SagaRecord, outbox: Sequence[OutboxMessage] = ()) -> None:
        now = to_text(utcnow())
        params = mapping.saga_update_params(record, now)
        messages = outbox_params(outbox, now)
        # a checkpoint of the saga row and its outbox messages only (fenced the same way)
        checkpoint = ((), params, record.created_at, messages, None)
        if not await self._submit(_save_checkpoint, checkpoint):
            raise LeaseLostError(record.saga_id, record.owner)

    async def get_saga(self, saga_id: str) -> SagaRecord | None:
        rows = await self._fetch(
            f"SELECT {tables.SAGA_COLUMNS} FROM saga_executions WHERE saga_id = ?", (saga_id,)
        )
        return mapping.saga_from_row(rows[0]) if rows else None

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
        conditions = {
            "saga_name = ?": saga_name,
            "trigger_id = ?": trigger_id,
            "created_at >= ?": mapping.optional_text(created_after),
            "created_at < ?": mapping.optional_text(created_before),
            "seq < (SELECT seq FROM saga_executions WHERE saga_id = ?)": after,
        }
        rows = await self._fetch(*_list_sagas_sql(status, conditions, limit))
        return [mapping.saga_from_row(row) for row in rows]

    async def delete_saga(self, saga_id: str) -> None:
        def delete(conn: sqlite3.Connection) -> None:
            _change(conn, _DELETE_STEPS, (saga_id,))
            _change(conn, "DELETE FROM saga_executions WHERE saga_id = ?", (saga_id,))

        await self._write(delete)

    async def list_recoverable(self, now: datetime, limit: int = 100) -> list[SagaRecord]:
        rows = await self._fetch(_RECOVERABLE, (to_text(now), limit))
        return [mapping.saga_from_row(row) for row in rows]

    async def claim_saga(self, saga_id: str, owner: str, lease_until: datetime) -> bool:
        changed = await self._write_one(
            "UPDATE saga_executions SET owner = ?, lease_expires_at = ? WHERE saga_id = ? "
            f"AND {claimable('?', '?')}",
            (owner, to_text(lease_until), saga_id, owner, to_text(utcnow())),
        )
        return changed == 1

    async def take_over_saga(self, saga_id: str, owner: str, lease_until: datetime) -> int | None:
        params = (owner, to_text(lease_until), saga_id, to_text(utcnow()))
        rows = await self._submit(_rows_args, (_TAKE_OVER, params))
        return int(rows[0][0]) if rows else None

    async def release_saga(
        self, saga_id: str, owner: str, retry_at: datetime | None = None
    ) -> bool:
        changed = await self._write_one(
            "UPDATE saga_executions SET owner = NULL, lease_expires_at = ? "
            "WHERE saga_id = ? AND owner = ?",
            (None if retry_at is None else to_text(retry_at), saga_id, owner),
        )
        return changed == 1

    # -- steps -----------------------------------------------------------------------------
    async def save_step(self, step: StepRecord, outbox: Sequence[OutboxMessage] = ()) -> None:
        now = to_text(utcnow())
        row = mapping.step_params(step, now)
        messages = outbox_params(outbox, now)
        # a module-level operation and its argument: no closure, whose function and cells
        # would be kept while the step waits for its group
        await self._committer().submit(_save_step, (row, messages))

    async def save_checkpoint(
        self,
        saga: SagaRecord | None = None,
        steps: Sequence[StepRecord] = (),
        outbox: Sequence[OutboxMessage] = (),
        *,
        complete_inbox: tuple[str, str] | None = None,
    ) -> None:
        """One operation of the group committer: all or nothing (see the contract)."""
        check_checkpoint(saga, steps, outbox)
        groups = self._committer()
        now = groups.moment()[1]
        step_rows = []
        for step in steps:  # not a comprehension: it would make ``now`` a cell of this call
            step_rows.append(mapping.step_params(step, now))
        if saga is None:
            saga_params = created = None
        else:
            saga_params, created = mapping.saga_update_params(saga, now), saga.created_at
        messages = outbox_params(outbox, now) if outbox else ()  # mostly none: no call, no list
        inbox = None if complete_inbox is None else (now, *complete_inbox)
        checkpoint = (step_rows, saga_params, created, messages, inbox)
        if not await groups.submit(_save_checkpoint, checkpoint):
            assert saga is not None  # only a saga row is fenced
            raise LeaseLostError(saga.saga_id, saga.owner)

    async def get_steps(self, saga_id: str) -> list[StepRecord]:
        rows = await self._fetch(
            f"SELECT saga_seq, {tables.STEP_COLUMNS} FROM saga_steps WHERE {tables.STEPS_OF} "
            "ORDER BY saga_seq",
            (saga_id,),
        )
        return mapping.latest_steps(rows)

    async def reset_steps(self, saga_id: str) -> None:
        await self._write_one(_DELETE_STEPS, (saga_id,))
