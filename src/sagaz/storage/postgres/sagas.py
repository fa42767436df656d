"""Sagas, their steps and combined checkpoints.

A part of :class:`~sagaz.storage.postgres.PostgresSagaStore`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from functools import cached_property
from typing import Any

from sagaz.clock import utcnow
from sagaz.exceptions import LeaseLostError, StoreError
from sagaz.records import (
    OutboxMessage,
    SagaRecord,
    StepRecord,
)
from sagaz.storage import postgres_rows as mapping
from sagaz.storage import postgres_schema as tables
from sagaz.storage.checkpoints import check_checkpoint
from sagaz.storage.codec import to_utc
from sagaz.storage.postgres.connection import (
    _CLAIM_RETRIES,
    _SAGA_CONFLICT,
    _SAGA_INSERT,
    _SAGA_SELECT,
    _STEP_CONFLICT,
    PostgresConnection,
    _inbox_rows,
)
from sagaz.storage.sql import claimable, outbox_params, step_params
from sagaz.storage.unavailable import translates_unavailable
from sagaz.types import TERMINAL_SAGA_STATUSES, SagaStatus

__all__ = ["CheckpointShape", "PostgresSagas", "checkpoints_written"]

#: the rows of the checkpoints whose sagas were not fenced out (``lost``), as a filter of
#: their saga ids: an array of the lost ones (computed once) instead of an anti-join, whose
#: hash node the server would set up at every group for a ``lost`` that is empty
_NOT_LOST = " <> ALL (ARRAY(SELECT saga_id FROM lost))"


def _lost(source: str, rows: str) -> str:
    """The sagas of ``source`` (saga rows of the array ``rows``) whose upsert (``sg``) was
    refused; gated by a count (a one-time filter), so the usual group compares no row."""
    return (
        f"lost AS (SELECT u.saga_id FROM {source} AS u "
        f"WHERE (SELECT count(*) FROM sg) < cardinality({rows}) "
        "AND u.saga_id <> ALL (ARRAY(SELECT saga_id FROM sg)))"
    )


#: which of steps, saga, outbox and inbox rows a group's checkpoints have, and whether
#: they go as checkpoint rows (one per checkpoint: a saga row, one step, no outbox)
CheckpointShape = tuple[bool, bool, bool, bool, bool]


@dataclasses.dataclass(slots=True)
class _Checkpoint:
    """The rows of one :meth:`PostgresSagaStore.save_checkpoint`, as statement parameters."""

    saga: tuple[Any, ...] | None
    steps: list[tuple[Any, ...]]
    outbox: list[tuple[Any, ...]]
    inbox: tuple[str, str, int] | None  # trigger id, key, completed at (pg_micros)
    #: the usual checkpoint (a saga row and one step of it, no outbox message) as one
    #: checkpoint_row (migration 10), else None
    row: tuple[Any, ...] | None = None


def _created(record: SagaRecord, now: datetime) -> SagaRecord:
    """The row :meth:`PostgresSagas.create_saga` stored for ``record`` at ``now`` (not read
    back)."""
    return SagaRecord(  # a third of dataclasses.replace's cost
        saga_id=record.saga_id,
        saga_name=record.saga_name,
        status=SagaStatus(record.status),
        context=record.context,
        attempt=record.attempt,
        error=record.error,
        trigger_id=record.trigger_id,
        event=record.event,
        owner=record.owner,
        lease_expires_at=record.lease_expires_at,
        created_at=record.created_at or now,
        updated_at=now,
    )


class PostgresSagas(PostgresConnection):
    """Sagas, their steps and combined checkpoints."""

    # -- sagas -----------------------------------------------------------------------------
    async def create_saga(self, record: SagaRecord) -> tuple[SagaRecord, bool]:
        now = utcnow()
        params = mapping.saga_params(record, record.created_at or now, now)
        run = self._create_sagas
        row = await self._committer().run(
            self._create_one,
            params,
            batch=(run, params, (("saga", record.saga_id),)),
        )
        if row is not None:
            return mapping.saga_from_row(row), False
        return _created(record, now), True

    async def _create_one(self, conn: Any, params: tuple[Any, ...]) -> Any:
        """Insert one saga row unless it exists: None if inserted, else the existing row."""
        insert = f"{self._insert_saga} ON CONFLICT (saga_id) DO NOTHING RETURNING TRUE"
        for _ in range(_CLAIM_RETRIES):
            if await conn.fetchval(insert, *params):
                return None  # stored as given: nothing to read back
            row = await conn.fetchrow(f"{self._select_sagas} WHERE saga_id = $1", params[0])
            if row is not None:
                return row
        raise StoreError(f"saga {params[0]!r} kept appearing and disappearing; retry")

    async def _create_sagas(self, conn: Any, items: list[tuple[Any, ...]]) -> list[Any]:
        """:meth:`_create_one` for several sagas (distinct ids) in two statements."""
        # one parameter: the rows as an array of saga_row (see postgres_schema, migration 9)
        inserted = {row[0] for row in await conn.fetch(self._insert_sagas, items)}
        missing = [params[0] for params in items if params[0] not in inserted]
        existing: dict[str, Any] = {}
        if missing:
            rows = await conn.fetch(
                f"{self._select_sagas} WHERE saga_id = ANY($1::text[])", missing
            )
            existing = {row["saga_id"]: row for row in rows}
        results: list[Any] = []
        for params in items:
            saga_id = params[0]
            if saga_id in inserted:
                results.append(None)
            elif saga_id in existing:
                results.append(existing[saga_id])
            else:  # deleted between the two statements: look again, alone
                results.append(await self._create_one(conn, params))
        return results

    def _saga_row(self, record: SagaRecord, now: datetime, micros: int) -> tuple[Any, ...]:
        """:func:`~sagaz.storage.postgres_rows.saga_params` of a saga being run at ``now``
        (``micros``: its :func:`~sagaz.storage.postgres_rows.pg_micros`), its context's and
        event's texts reused from its last write while unchanged (kept until its terminal
        write)."""
        saga_id = record.saga_id
        texts = self._json.memo(saga_id)
        params = mapping.saga_params(record, record.created_at or now, now, texts, micros)
        if record.status in TERMINAL_SAGA_STATUSES:
            self._json.forget(saga_id)
        return params

    async def save_saga(self, record: SagaRecord, outbox: Sequence[OutboxMessage] = ()) -> None:
        now = utcnow()
        params = self._saga_row(record, now, mapping.pg_micros(now))
        messages = outbox_params(outbox, now)

        async def save(conn: Any) -> bool:
            if not await conn.fetchval(f"{self._upsert_saga} RETURNING TRUE", *params):
                return False  # fenced: another owner holds the row
            if messages:
                await conn.executemany(self._insert_outbox, messages)
            return True

        if not await self._write(save):
            raise LeaseLostError(record.saga_id, record.owner)

    async def get_saga(self, saga_id: str) -> SagaRecord | None:
        row = await self._db().fetchrow(
            f"{self._select_sagas} WHERE saga_id = $1",
            saga_id,
        )
        return None if row is None else mapping.saga_from_row(row)

    async def delete_saga(self, saga_id: str) -> None:
        self._json.forget(saga_id)
        await self._write_execute(
            f"WITH steps AS (DELETE FROM {self._s}.saga_steps WHERE saga_id = $1) "
            f"DELETE FROM {self._s}.saga_executions WHERE saga_id = $1",
            saga_id,
        )

    async def claim_saga(self, saga_id: str, owner: str, lease_until: datetime) -> bool:
        claimed = await self._write_fetchval(
            f"UPDATE {self._s}.saga_executions SET owner = $2, lease_expires_at = $3 "
            f"WHERE saga_id = $1 AND {claimable('$2', '$4')} RETURNING TRUE",
            saga_id,
            owner,
            to_utc(lease_until),
            utcnow(),
        )
        return bool(claimed)

    async def release_saga(
        self, saga_id: str, owner: str, retry_at: datetime | None = None
    ) -> bool:
        released = await self._write_fetchval(
            f"UPDATE {self._s}.saga_executions SET owner = NULL, lease_expires_at = $3 "
            "WHERE saga_id = $1 AND owner = $2 RETURNING TRUE",
            saga_id,
            owner,
            None if retry_at is None else to_utc(retry_at),
        )
        return bool(released)

    # -- steps -----------------------------------------------------------------------------
    async def save_step(self, step: StepRecord, outbox: Sequence[OutboxMessage] = ()) -> None:
        now = utcnow()
        params = step_params(step, now)
        messages = outbox_params(outbox, now)

        async def save(conn: Any) -> None:
            await conn.execute(self._upsert_step, *params)
            if messages:
                await conn.executemany(self._insert_outbox, messages)

        await self._write(save)

    def _build_checkpoint_sql(
        self, steps: bool, saga: bool, outbox: bool, inbox: bool, rows: bool = False
    ) -> str:
        parts = self._checkpoint_ctes((steps, saga, outbox, inbox, rows), 0)
        if not parts:
            return "SELECT 1"
        # the sagas fenced out (their rows another owner's): nothing of theirs was written
        return "WITH " + ", ".join(parts) + (" SELECT saga_id FROM lost" if saga else " SELECT 1")

    def _checkpoint_ctes(self, shape: CheckpointShape, first: int) -> list[str]:
        """The data-modifying CTEs of checkpoints of ``shape`` (which of steps, saga, outbox
        and inbox they have, as checkpoint rows or not), their parameters numbered from
        ``first + 1``."""
        steps, saga, outbox, inbox, as_rows = shape
        s = self._s
        if as_rows:
            return self._checkpoint_row_ctes(f"${first + 1}::{s}.checkpoint_row[]", inbox)
        parts: list[str] = []
        n = first

        def params(count: int) -> list[str]:
            nonlocal n
            made = [f"${n + i + 1}" for i in range(count)]
            n += count
            return made

        # the steps and the sagas as one array of rows each (step_row, saga_row: migration 9)
        step_rows = params(1)[0] if steps else ""
        # fenced (see the contract): the sagas whose upsert another owner's row refused are
        # ``lost``, and none of their rows is written (a CTE sees the others' RETURNING only)
        keep = ""
        if saga:
            (row,) = params(1)
            parts.append(
                f"sg AS (INSERT INTO {s}.saga_executions ({_SAGA_INSERT}) SELECT {_SAGA_SELECT} "
                f"FROM unnest({row}::{s}.saga_row[]) AS u {_SAGA_CONFLICT} "
                "RETURNING saga_id)"
            )
            parts.append(_lost(f"unnest({row}::{s}.saga_row[])", f"{row}::{s}.saga_row[]"))
            keep = " WHERE {}.saga_id" + _NOT_LOST
        if steps:
            parts.append(
                f"st AS (INSERT INTO {s}.saga_steps ({tables.STEP_COLUMNS}) "
                "SELECT u.saga_id, u.name, u.status, u.result::jsonb, u.error, u.attempts, "
                "u.completed_seq, u.compensation_error, "
                f"{mapping.moment_sql('u.updated_at')} FROM "
                f"unnest({step_rows}::{s}.step_row[]) AS u{keep.format('u')} {_STEP_CONFLICT} "
                "RETURNING 1)"
            )
        if outbox:
            p = params(5)
            parts.append(
                f"ob AS (INSERT INTO {s}.outbox (saga_id, topic, payload, headers, created_at) "
                "SELECT u.saga_id, u.topic, u.payload::jsonb, u.headers::jsonb, u.created_at "
                f"FROM unnest({p[0]}::text[], {p[1]}::text[], {p[2]}::text[], {p[3]}::text[], "
                f"{p[4]}::timestamptz[]) WITH ORDINALITY "
                f"AS u(saga_id, topic, payload, headers, created_at, n){keep.format('u')} "
                "ORDER BY u.n RETURNING 1)"
            )
        if inbox:
            # an upsert on the primary key of the rows the snapshot has, not an UPDATE
            # joined with the keys (see _inbox_rows). It completes the same rows; a key
            # with no row stays without one. A row deleted after the snapshot would come
            # back completed, but only release_inbox (by the owner, which is finishing the
            # saga instead) and the purges (of rows long done or abandoned) delete rows
            # (the moments as bigint microseconds, like a saga's: pg_micros)
            p = params(3)
            parts.append(
                f"ib AS (INSERT INTO {s}.inbox AS t (trigger_id, key, saga_id, owner, "
                "lease_until, status, created_at, completed_at) SELECT i.trigger_id, i.key, "
                "i.saga_id, i.owner, i.lease_until, 'completed', i.created_at, "
                f"{mapping.moment_sql('u.completed_at')} FROM "
                + _inbox_rows(
                    s,
                    f"{p[0]}::text[], {p[1]}::text[], {p[2]}::bigint[]",
                    "trigger_id, key, completed_at",
                )
                + keep.format("i")
                + " ON CONFLICT (trigger_id, key) DO UPDATE SET status = 'completed', "
                "completed_at = EXCLUDED.completed_at RETURNING 1)"
            )
        return parts

    def _checkpoint_row_ctes(self, rows: str, inbox: bool) -> list[str]:
        """:meth:`_checkpoint_ctes` of checkpoints sent as the checkpoint rows ``rows`` (an
        array parameter): the same writes from one array (a saga row, its step, its inbox
        key if any, one moment for the three), unnested once (``ck``: the server materializes
        a CTE read more than once, where each ``unnest`` would take the array apart again)."""
        s = self._s
        keep = " WHERE u.saga_id" + _NOT_LOST
        parts = [
            f"ck AS (SELECT * FROM unnest({rows}))",
            f"sg AS (INSERT INTO {s}.saga_executions ({_SAGA_INSERT}) SELECT {_SAGA_SELECT} "
            f"FROM ck AS u {_SAGA_CONFLICT} RETURNING saga_id)",
            _lost("ck", rows),
            f"st AS (INSERT INTO {s}.saga_steps ({tables.STEP_COLUMNS}) "
            "SELECT u.saga_id, u.step_name, u.step_status, u.step_result::jsonb, u.step_error, "
            "u.step_attempts, u.step_completed_seq, u.step_compensation_error, "
            f"{mapping.moment_sql('u.updated_at')} FROM ck AS u{keep} "
            f"{_STEP_CONFLICT} RETURNING 1)",
        ]
        if inbox:  # as _checkpoint_ctes's, each key looked up alone (see _inbox_rows)
            parts.append(
                f"ib AS (INSERT INTO {s}.inbox AS t (trigger_id, key, saga_id, owner, "
                "lease_until, status, created_at, completed_at) SELECT i.trigger_id, i.key, "
                "i.saga_id, i.owner, i.lease_until, 'completed', i.created_at, "
                f"{mapping.moment_sql('u.updated_at')} FROM ck AS u "
                f"CROSS JOIN LATERAL (SELECT * FROM {s}.inbox AS i WHERE "
                "i.trigger_id = u.inbox_trigger_id AND i.key = u.inbox_key OFFSET 0) AS i"
                f"{keep} ON CONFLICT (trigger_id, key) DO UPDATE SET status = 'completed', "
                "completed_at = EXCLUDED.completed_at RETURNING 1)"
            )
        return parts

    # errors: the committer's (translated there, or the operation's own: not unavailable)
    @translates_unavailable
    async def save_checkpoint(
        self,
        saga: SagaRecord | None = None,
        steps: Sequence[StepRecord] = (),
        outbox: Sequence[OutboxMessage] = (),
        *,
        complete_inbox: tuple[str, str] | None = None,
    ) -> None:
        """One operation of the group commit: all or nothing (see the contract)."""
        check_checkpoint(saga, steps, outbox)
        now = utcnow()
        micros = mapping.pg_micros(now)  # a step_row's moment (migration 9)
        step_rows = []
        for record in steps:  # not a comprehension: it would make ``micros`` a cell of this call
            step_rows.append(step_params(record, micros))
        saga_params = None if saga is None else self._saga_row(saga, now, micros)
        messages = outbox_params(outbox, now) if outbox else []

        inbox_row = None if complete_inbox is None else (*complete_inbox, micros)
        row = None
        if saga_params is not None and len(step_rows) == 1 and not messages:
            step = step_rows[0]
            if step[0] == saga_params[0]:  # one array element instead of two or three
                row = (*saga_params, *step[1:8], *(complete_inbox or (None, None)))
        item = _Checkpoint(saga_params, step_rows, messages, inbox_row, row)
        saga_id = saga.saga_id if saga is not None else steps[0].saga_id if steps else None
        rows: tuple[tuple[str, ...], ...] = () if saga_id is None else (("saga", saga_id),)
        if complete_inbox is not None:
            rows += (("inbox", *complete_inbox),)
        run = self._checkpoints_runner
        # alone: run(conn, [item])
        if not await self._committer().run(None, batch=(run, item, rows)):
            assert saga is not None  # only a saga row is fenced
            raise LeaseLostError(saga.saga_id, saga.owner)

    @cached_property
    def _checkpoints_runner(self) -> Callable[[Any, list[_Checkpoint]], Awaitable[list[bool]]]:
        """:meth:`_run_checkpoints` bound once (equal to it): a new bound method per
        checkpoint would be one more object in flight for the cyclic collector."""
        return self._run_checkpoints

    async def _run_checkpoints(self, conn: Any, items: list[_Checkpoint]) -> list[bool]:
        """Several checkpoints (of distinct sagas) in one statement: a data-modifying CTE per
        table over arrays (``unnest``); the outbox messages keep their order. Each item's
        answer: written, or False when fenced (nothing of it written)."""
        shape, args = _checkpoint_args(items)
        sql = self._checkpoint_sql.get(shape)
        if sql is None:
            sql = self._checkpoint_sql[shape] = self._build_checkpoint_sql(*shape)
        if not shape[1]:  # no saga row: nothing is fenced
            if args:
                await conn.execute(sql, *args)
            return [True] * len(items)
        return checkpoints_written(items, {row[0] for row in await conn.fetch(sql, *args)})

    async def get_steps(self, saga_id: str) -> list[StepRecord]:
        rows = await self._db().fetch(
            f"SELECT {tables.STEP_COLUMNS} FROM {self._s}.saga_steps WHERE saga_id = $1", saga_id
        )
        return [mapping.step_from_row(row) for row in rows]

    async def reset_steps(self, saga_id: str) -> None:
        await self._write_execute(f"DELETE FROM {self._s}.saga_steps WHERE saga_id = $1", saga_id)


def checkpoints_written(items: list[_Checkpoint], lost: set[str]) -> list[bool]:
    """Whether each checkpoint of ``items`` was written: not if its saga is in ``lost``."""
    return [item.saga is None or item.saga[0] not in lost for item in items]


def _checkpoint_args(items: list[_Checkpoint]) -> tuple[CheckpointShape, list[Any]]:
    """The shape (which of steps, saga, outbox and inbox rows there are, and whether as
    checkpoint rows) and the array parameters of the checkpoints ``items``: every one as a
    checkpoint_row when each has that form, else the steps and the sagas as one array of
    rows each, the outbox messages and the inbox keys column by column."""
    if all(item.row is not None for item in items):
        keys = any(item.inbox is not None for item in items)
        return (True, True, False, keys, True), [[item.row for item in items]]
    steps = [row for item in items for row in item.steps]
    sagas = [item.saga for item in items if item.saga is not None]
    messages = [row for item in items for row in item.outbox]
    inbox = [item.inbox for item in items if item.inbox is not None]
    args: list[Any] = []
    if steps:
        args.append(steps)
    if sagas:
        args.append(sagas)
    for rows in (messages, inbox):
        if rows:
            args += [list(column) for column in zip(*rows, strict=True)]
    return (bool(steps), bool(sagas), bool(messages), bool(inbox), False), args
