"""The shared store for many processes: PostgreSQL through an asyncpg pool.

>>> store = PostgresSagaStore("postgresql://app@db/app", schema="sagaz")  # doctest: +SKIP
>>> async with store: ...  # doctest: +SKIP

Every claim is one atomic statement (``INSERT ... ON CONFLICT``, ``UPDATE ... WHERE lease expired
RETURNING``), so any number of processes can share the schema. Contexts and payloads are JSONB;
bytes and datetimes inside them round-trip through :mod:`sagaz.storage.codec`. asyncpg is
imported when the store starts (``pip install "sagaz[postgres]"``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import urlencode, urlsplit, urlunsplit

from sagaz._imports import require_extra
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
from sagaz.storage import postgres_schema as tables
from sagaz.storage.codec import dumps, to_utc
from sagaz.storage.postgres_groups import PgGroupCommitter
from sagaz.storage.rate_limits import MIN_RATE_WAIT, rate_interval
from sagaz.storage.unavailable import raises_unavailable
from sagaz.storage.url import redact_url
from sagaz.types import SagaStatus, StepStatus

__all__ = ["PostgresSagaStore"]

T = TypeVar("T")

_CLAIM_RETRIES = 5  # a row deleted between our two statements makes us look again
_GROUP_CONNECTIONS = 4  # group commits in flight at once, at most
#: the saga columns as arrays, $1 to $12 (for ``unnest``)
_SAGA_ARRAYS = (
    "$1::text[], $2::text[], $3::text[], $4::text[], $5::int[], $6::text[], $7::text[], "
    "$8::text[], $9::text[], $10::timestamptz[], $11::timestamptz[], $12::timestamptz[]"
)
_SAGA_CONFLICT = (
    "ON CONFLICT (saga_id) DO UPDATE SET saga_name = EXCLUDED.saga_name, "
    "status = EXCLUDED.status, context = EXCLUDED.context, attempt = EXCLUDED.attempt, "
    "error = EXCLUDED.error, trigger_id = EXCLUDED.trigger_id, event = EXCLUDED.event, "
    "owner = EXCLUDED.owner, lease_expires_at = EXCLUDED.lease_expires_at, "
    "updated_at = EXCLUDED.updated_at"
)
_INBOX_CONFLICT = (
    "ON CONFLICT (trigger_id, key) DO UPDATE SET owner = EXCLUDED.owner, "
    "lease_until = EXCLUDED.lease_until WHERE i.status = 'pending' AND "
    "(i.owner = EXCLUDED.owner OR i.lease_until IS NULL OR i.lease_until < EXCLUDED.created_at)"
)
_STEP_CONFLICT = (
    "ON CONFLICT (saga_id, name) DO UPDATE SET status = EXCLUDED.status, "
    "result = EXCLUDED.result, error = EXCLUDED.error, "
    "attempts = EXCLUDED.attempts, completed_seq = EXCLUDED.completed_seq, "
    "compensation_error = EXCLUDED.compensation_error, updated_at = EXCLUDED.updated_at"
)


def _found_claim(row: Any) -> InboxClaim:
    """The claim of a key whose row was neither inserted nor taken over: done or held."""
    outcome = ClaimOutcome.DUPLICATE if row["status"] == "completed" else ClaimOutcome.BUSY
    return InboxClaim(outcome, row["saga_id"], row["owner"])


@dataclasses.dataclass(slots=True)
class _Checkpoint:
    """The rows of one :meth:`PostgresSagaStore.save_checkpoint`, as statement parameters."""

    saga: tuple[Any, ...] | None
    steps: list[tuple[Any, ...]]
    outbox: list[tuple[Any, ...]]
    inbox: tuple[str, str, datetime] | None


@raises_unavailable
class PostgresSagaStore(SagaStore):
    """A :class:`~sagaz.abc.SagaStore` in PostgreSQL, shared by every instance of an app.

    ``schema`` names the PostgreSQL schema that holds the tables (created at ``start()``);
    ``min_size``/``max_size`` bound the asyncpg connection pool. A lost server (restarted,
    unreachable) makes operations raise :class:`~sagaz.exceptions.StoreUnavailableError`; the
    pool replaces its broken connections, so the store works again once the server is back.
    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "sagaz",
        min_size: int = 1,
        max_size: int = 10,
        command_timeout: float | None = 60.0,
    ) -> None:
        self.dsn = dsn
        self.schema = schema
        self._s = tables.quote_schema(schema)
        self._insert_saga = (
            f"INSERT INTO {self._s}.saga_executions ({tables.SAGA_COLUMNS}) "
            f"VALUES ({tables.SAGA_VALUES})"
        )
        self._upsert_saga = f"{self._insert_saga} {_SAGA_CONFLICT}"
        self._upsert_step = (
            f"INSERT INTO {self._s}.saga_steps ({tables.STEP_COLUMNS}) "
            f"VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) {_STEP_CONFLICT}"
        )
        self._complete_inbox = (
            f"UPDATE {self._s}.inbox SET status = 'completed', completed_at = $3 "
            "WHERE trigger_id = $1 AND key = $2"
        )
        self._checkpoint_sql: dict[tuple[bool, bool, bool, bool], str] = {}
        self._insert_sagas = (
            f"INSERT INTO {self._s}.saga_executions ({tables.SAGA_COLUMNS}) "
            "SELECT u.saga_id, u.saga_name, u.status, u.context::jsonb, u.attempt, u.error, "
            "u.trigger_id, u.event::jsonb, u.owner, u.lease_expires_at, u.created_at, "
            f"u.updated_at FROM unnest({_SAGA_ARRAYS}) AS u({tables.SAGA_COLUMNS}) "
            "ON CONFLICT (saga_id) DO NOTHING RETURNING saga_id"
        )
        self._claim_many = (
            f"INSERT INTO {self._s}.inbox AS i (trigger_id, key, saga_id, owner, "
            "lease_until, status, created_at) SELECT u.trigger_id, u.key, u.saga_id, u.owner, "
            "u.lease_until, 'pending', u.created_at FROM unnest($1::text[], $2::text[], "
            "$3::text[], $4::text[], $5::timestamptz[], $6::timestamptz[]) AS u(trigger_id, "
            f"key, saga_id, owner, lease_until, created_at) {_INBOX_CONFLICT} "
            "RETURNING i.trigger_id, i.key, i.saga_id, (xmax = 0) AS inserted"
        )
        self._select_sagas = f"SELECT {tables.SAGA_COLUMNS} FROM {self._s}.saga_executions"
        self._insert_outbox = (
            f"INSERT INTO {self._s}.outbox (saga_id, topic, payload, headers, created_at) "
            "VALUES ($1, $2, $3, $4, $5)"
        )
        self._select_dead_letters = (
            f"SELECT id, {tables.DEAD_LETTER_COLUMNS}, created_at FROM {self._s}.dead_letters"
        )
        self._min_size = min_size
        self._max_size = max_size
        self._command_timeout = command_timeout
        self._pool: Any = None
        self._groups: PgGroupCommitter | None = None
        self._lifecycle_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"PostgresSagaStore({redact_url(self.dsn)!r}, schema={self.schema!r})"

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Open the pool and create the schema if the database has none. Idempotent.

        An older schema raises :class:`~sagaz.exceptions.SchemaOutdatedError`: migrate it
        with ``sagaz db upgrade`` (:meth:`upgrade_schema`)."""
        async with self._lifecycle_lock:
            if self._pool is not None:
                return
            asyncpg = require_extra("postgres")
            try:
                pool = await asyncpg.create_pool(
                    self.dsn,
                    min_size=self._min_size,
                    max_size=self._max_size,
                    command_timeout=self._command_timeout,
                    init=tables.init_connection,
                    reset=tables.keep_session,
                )
            except (OSError, asyncpg.PostgresError) as exc:
                raise self._unreachable(exc) from exc
            try:
                async with pool.acquire() as conn:
                    await tables.migrate(conn, self.schema, url=self._store_url())
            except BaseException:
                await pool.close()
                raise
            self._pool = pool
            self._groups = PgGroupCommitter(
                pool,
                unavailable=self._unavailable,
                label=repr(self),
                # the rest of the pool is for reads and the statements kept out of groups
                connections=max(1, min(_GROUP_CONNECTIONS, self._max_size // 2)),
            )
            self._started = True

    def _store_url(self) -> str:
        """The store's URL with the password redacted (for ``--store`` and messages)."""
        if self.schema == "sagaz":
            return redact_url(self.dsn)
        parts = urlsplit(redact_url(self.dsn))
        query = "&".join(q for q in (parts.query, urlencode({"schema": self.schema})) if q)
        return urlunsplit(parts._replace(query=query))

    def _unreachable(self, exc: BaseException) -> StoreError:
        """The error for ``exc``: :class:`StoreUnavailableError` when the server cannot be
        reached (an outage the engine waits out), else :class:`StoreError`."""
        error = StoreUnavailableError if self._unavailable(exc) else StoreError
        return error(
            f"cannot connect to PostgreSQL at {redact_url(self.dsn)}: {exc}; check the "
            "DSN (postgresql://user:password@host:5432/db) and that the server is up"
        )

    async def _one_connection(self, use: Callable[[Any], Awaitable[T]]) -> T:
        """Run ``use`` on a connection of its own (the store need not be started)."""
        asyncpg = require_extra("postgres")
        try:
            conn = await asyncpg.connect(self.dsn, command_timeout=self._command_timeout)
        except (OSError, asyncpg.PostgresError) as exc:
            raise self._unreachable(exc) from exc
        try:
            return await use(conn)
        finally:
            await conn.close()

    async def schema_versions(self) -> SchemaVersions:
        return await self._one_connection(lambda conn: tables.read_versions(conn, self.schema))

    async def upgrade_schema(self) -> SchemaVersions:
        return await self._one_connection(
            lambda conn: tables.migrate(conn, self.schema, url=self._store_url(), upgrade=True)
        )

    async def stop(self) -> None:
        """Close the pool, letting running queries finish. Idempotent."""
        async with self._lifecycle_lock:
            pool, self._pool = self._pool, None
            groups, self._groups = self._groups, None
            self._started = False
            if groups is not None:
                await groups.close()
            if pool is not None:
                await pool.close()

    async def schema_version(self) -> int:
        """The schema version recorded in the database."""
        return int(await self._db().fetchval(f"SELECT MAX(version) FROM {self._s}.schema_version"))

    def _unavailable(self, exc: BaseException) -> bool:
        """Whether ``exc`` says the server cannot be reached (see :mod:`sagaz.storage.unavailable`):
        refused, reset or timed-out connections, a server shutting down or starting up, a
        connection the server terminated."""
        if isinstance(exc, OSError):  # refused, reset, unreachable, command_timeout
            return True
        asyncpg = sys.modules.get("asyncpg")
        if asyncpg is None:
            return False
        errors = asyncpg.exceptions
        if isinstance(
            exc,
            errors.PostgresConnectionError  # SQLSTATE class 08: connection exceptions
            | errors.AdminShutdownError  # 57P01: terminated by a shutdown or restart
            | errors.CrashShutdownError
            | errors.CannotConnectNowError  # 57P03: starting up, shutting down
            | errors.TooManyConnectionsError,
        ):
            return True
        # a pooled connection that the server closed under us; asyncpg may also trip over
        # its own protocol state when a connection dies mid-operation ("cannot switch to
        # state ...; another operation is in progress"): the pool replaces it
        return (isinstance(exc, errors.InterfaceError) and "connection" in str(exc)) or (
            isinstance(exc, errors.InternalClientError) and "another operation" in str(exc)
        )

    def _db(self) -> Any:
        if self._pool is None:
            raise StoreError(
                f"{self!r} is not started: call await store.start() or use async with store"
            )
        return self._pool

    def _committer(self) -> PgGroupCommitter:
        self._db()  # the error for a store that is not started
        assert self._groups is not None
        return self._groups

    async def _write(self, op: Callable[[Any], Awaitable[T]]) -> T:
        """Run ``op(conn)`` (all its SQL) as one atomic operation of the next group commit;
        return its result once that group has committed (see
        :mod:`sagaz.storage.postgres_groups`)."""
        return await self._committer().run(op)

    async def _write_execute(self, sql: str, *args: Any) -> str:
        """:meth:`_write` one statement; return its status."""
        status: str = await self._write(lambda conn: conn.execute(sql, *args))
        return status

    async def _write_fetchval(self, sql: str, *args: Any) -> Any:
        """:meth:`_write` one statement; return the first value of its first row."""
        return await self._write(lambda conn: conn.fetchval(sql, *args))

    @property
    def commits(self) -> int:
        """Transactions the group committer has committed since the store started (each
        holds the writes of every saga that wrote at the same time)."""
        return 0 if self._groups is None else self._groups.commits

    # -- sagas -----------------------------------------------------------------------------
    async def create_saga(self, record: SagaRecord) -> tuple[SagaRecord, bool]:
        now = utcnow()
        params = tables.saga_params(record, record.created_at or now, now)
        run = self._create_sagas
        row = await self._committer().run(
            lambda conn: self._create_one(conn, params), batch=(run, params, record.saga_id)
        )
        if row is not None:
            return tables.saga_from_row(row), False
        created = dataclasses.replace(
            record,
            status=SagaStatus(record.status),
            created_at=record.created_at or now,
            updated_at=now,
        )
        return created, True

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
        columns = [list(column) for column in zip(*items, strict=True)]
        inserted = {row[0] for row in await conn.fetch(self._insert_sagas, *columns)}
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

    async def save_saga(self, record: SagaRecord, outbox: Sequence[OutboxMessage] = ()) -> None:
        now = utcnow()
        params = tables.saga_params(record, record.created_at or now, now)
        messages = self._outbox_rows(outbox, now)

        async def save(conn: Any) -> None:
            await conn.execute(self._upsert_saga, *params)
            if messages:
                await conn.executemany(self._insert_outbox, messages)

        await self._write(save)

    async def get_saga(self, saga_id: str) -> SagaRecord | None:
        row = await self._db().fetchrow(
            f"{self._select_sagas} WHERE saga_id = $1",
            saga_id,
        )
        return None if row is None else tables.saga_from_row(row)

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
            "status = {}": None if status is None else SagaStatus(status).value,
            "saga_name = {}": saga_name,
            "trigger_id = {}": trigger_id,
            "created_at >= {}": None if created_after is None else to_utc(created_after),
            "created_at < {}": None if created_before is None else to_utc(created_before),
            f"seq < (SELECT seq FROM {self._s}.saga_executions WHERE saga_id = {{}})": after,
        }
        where: list[str] = []
        params: list[Any] = []
        for condition, value in conditions.items():
            if value is not None:
                params.append(value)
                where.append(condition.format(f"${len(params)}"))
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        params.append(limit)
        rows = await self._db().fetch(
            f"{self._select_sagas} {clause}ORDER BY seq DESC LIMIT ${len(params)}",
            *params,
        )
        return [tables.saga_from_row(row) for row in rows]

    async def delete_saga(self, saga_id: str) -> None:
        await self._write_execute(
            f"WITH steps AS (DELETE FROM {self._s}.saga_steps WHERE saga_id = $1) "
            f"DELETE FROM {self._s}.saga_executions WHERE saga_id = $1",
            saga_id,
        )

    async def list_recoverable(self, now: datetime, limit: int = 100) -> list[SagaRecord]:
        rows = await self._db().fetch(
            f"{self._select_sagas} WHERE status IN {tables.ACTIVE_SQL} AND "
            " (lease_expires_at IS NULL OR lease_expires_at < $1) ORDER BY seq LIMIT $2",
            to_utc(now),
            limit,
        )
        return [tables.saga_from_row(row) for row in rows]

    async def claim_saga(self, saga_id: str, owner: str, lease_until: datetime) -> bool:
        claimed = await self._write_fetchval(
            f"UPDATE {self._s}.saga_executions SET owner = $2, lease_expires_at = $3 "
            "WHERE saga_id = $1 AND (owner IS NULL OR owner = $2 OR lease_expires_at IS NULL "
            "OR lease_expires_at < $4) RETURNING TRUE",
            saga_id,
            owner,
            to_utc(lease_until),
            utcnow(),
        )
        return bool(claimed)

    # -- steps -----------------------------------------------------------------------------
    async def save_step(self, step: StepRecord, outbox: Sequence[OutboxMessage] = ()) -> None:
        now = utcnow()
        params = self._step_params(step, now)
        messages = self._outbox_rows(outbox, now)

        async def save(conn: Any) -> None:
            await conn.execute(self._upsert_step, *params)
            if messages:
                await conn.executemany(self._insert_outbox, messages)

        await self._write(save)

    def _build_checkpoint_sql(self, steps: bool, saga: bool, outbox: bool, inbox: bool) -> str:
        s = self._s
        parts: list[str] = []
        n = 0

        def params(count: int) -> list[str]:
            nonlocal n
            made = [f"${n + i + 1}" for i in range(count)]
            n += count
            return made

        if steps:
            p = params(9)
            parts.append(
                f"st AS (INSERT INTO {s}.saga_steps ({tables.STEP_COLUMNS}) "
                "SELECT u.saga_id, u.name, u.status, u.result::jsonb, u.error, u.attempts, "
                "u.completed_seq, u.compensation_error, u.updated_at FROM unnest("
                f"{p[0]}::text[], {p[1]}::text[], {p[2]}::text[], {p[3]}::text[], "
                f"{p[4]}::text[], {p[5]}::int[], {p[6]}::int[], {p[7]}::text[], "
                f"{p[8]}::timestamptz[]) AS u(saga_id, name, status, result, error, attempts, "
                f"completed_seq, compensation_error, updated_at) {_STEP_CONFLICT} RETURNING 1)"
            )
        if saga:
            p = params(12)
            parts.append(
                f"sg AS (INSERT INTO {s}.saga_executions ({tables.SAGA_COLUMNS}) "
                "SELECT u.saga_id, u.saga_name, u.status, u.context::jsonb, u.attempt, u.error, "
                "u.trigger_id, u.event::jsonb, u.owner, u.lease_expires_at, u.created_at, "
                f"u.updated_at FROM unnest({p[0]}::text[], {p[1]}::text[], {p[2]}::text[], "
                f"{p[3]}::text[], {p[4]}::int[], {p[5]}::text[], {p[6]}::text[], "
                f"{p[7]}::text[], {p[8]}::text[], {p[9]}::timestamptz[], "
                f"{p[10]}::timestamptz[], {p[11]}::timestamptz[]) AS u(saga_id, saga_name, "
                "status, context, attempt, error, trigger_id, event, owner, lease_expires_at, "
                f"created_at, updated_at) {_SAGA_CONFLICT} RETURNING 1)"
            )
        if outbox:
            p = params(5)
            parts.append(
                f"ob AS (INSERT INTO {s}.outbox (saga_id, topic, payload, headers, created_at) "
                "SELECT u.saga_id, u.topic, u.payload::jsonb, u.headers::jsonb, u.created_at "
                f"FROM unnest({p[0]}::text[], {p[1]}::text[], {p[2]}::text[], {p[3]}::text[], "
                f"{p[4]}::timestamptz[]) WITH ORDINALITY "
                "AS u(saga_id, topic, payload, headers, created_at, n) ORDER BY u.n RETURNING 1)"
            )
        if inbox:
            p = params(3)
            parts.append(
                f"ib AS (UPDATE {s}.inbox AS i SET status = 'completed', "
                f"completed_at = u.completed_at FROM unnest({p[0]}::text[], {p[1]}::text[], "
                f"{p[2]}::timestamptz[]) AS u(trigger_id, key, completed_at) "
                "WHERE i.trigger_id = u.trigger_id AND i.key = u.key RETURNING 1)"
            )
        if not parts:
            return "SELECT 1"
        return "WITH " + ", ".join(parts) + " SELECT 1"

    @staticmethod
    def _step_params(step: StepRecord, now: datetime) -> tuple[Any, ...]:
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

    async def save_checkpoint(
        self,
        saga: SagaRecord | None = None,
        steps: Sequence[StepRecord] = (),
        outbox: Sequence[OutboxMessage] = (),
        *,
        complete_inbox: tuple[str, str] | None = None,
    ) -> None:
        """One operation of the group commit: all or nothing (see the contract)."""
        if saga is None and outbox and not steps:
            raise ValueError("save_checkpoint: outbox messages need a saga or a step to go with")
        now = utcnow()
        step_rows = [self._step_params(step, now) for step in steps]
        saga_params = (
            None if saga is None else tables.saga_params(saga, saga.created_at or now, now)
        )
        messages = self._outbox_rows(outbox, now)

        inbox_row = None if complete_inbox is None else (*complete_inbox, now)
        item = _Checkpoint(saga_params, step_rows, messages, inbox_row)
        key = saga_params[0] if saga_params is not None else step_rows[0][0] if step_rows else None
        run = self._run_checkpoints
        await self._committer().run(lambda conn: run(conn, [item]), batch=(run, item, key))

    async def _run_checkpoints(self, conn: Any, items: list[_Checkpoint]) -> list[None]:
        """Several checkpoints (of distinct sagas) in one statement: a data-modifying CTE per
        table over arrays (``unnest``); the outbox messages keep their order."""
        steps = [row for item in items for row in item.steps]
        sagas = [item.saga for item in items if item.saga is not None]
        messages = [row for item in items for row in item.outbox]
        inbox = [item.inbox for item in items if item.inbox is not None]
        shape = (bool(steps), bool(sagas), bool(messages), bool(inbox))
        sql = self._checkpoint_sql.get(shape)
        if sql is None:
            sql = self._checkpoint_sql[shape] = self._build_checkpoint_sql(*shape)
        args: list[Any] = []
        for rows in (steps, sagas, messages, inbox):
            if rows:
                args += [list(column) for column in zip(*rows, strict=True)]
        if args:
            await conn.execute(sql, *args)
        return [None] * len(items)

    @staticmethod
    def _outbox_rows(outbox: Sequence[OutboxMessage], now: datetime) -> list[tuple[Any, ...]]:
        return [(m.saga_id, m.topic, dumps(m.payload), dumps(m.headers), now) for m in outbox]

    async def get_steps(self, saga_id: str) -> list[StepRecord]:
        rows = await self._db().fetch(
            f"SELECT {tables.STEP_COLUMNS} FROM {self._s}.saga_steps WHERE saga_id = $1", saga_id
        )
        return [tables.step_from_row(row) for row in rows]

    async def reset_steps(self, saga_id: str) -> None:
        await self._write_execute(f"DELETE FROM {self._s}.saga_steps WHERE saga_id = $1", saga_id)

    # -- inbox -----------------------------------------------------------------------------
    async def claim_inbox(
        self, trigger_id: str, key: str, saga_id: str, owner: str, lease_until: datetime
    ) -> InboxClaim:
        args = (trigger_id, key, saga_id, owner, to_utc(lease_until), utcnow())
        claim: InboxClaim = await self._committer().run(
            lambda conn: self._claim_one(conn, args),
            batch=(self._claim_inboxes, args, (trigger_id, key)),
        )
        return claim

    async def _claim_one(self, conn: Any, args: tuple[Any, ...]) -> InboxClaim:
        # one statement inserts a new row or takes over an expired/own one; the row lock
        # taken by ON CONFLICT makes the lease check and the takeover atomic
        trigger_id, key, _, owner, _, _ = args
        claim = (
            f"INSERT INTO {self._s}.inbox AS i (trigger_id, key, saga_id, owner, "
            "lease_until, status, created_at) VALUES ($1, $2, $3, $4, $5, 'pending', $6) "
            f"{_INBOX_CONFLICT} RETURNING i.saga_id, (xmax = 0) AS inserted"
        )
        select = (
            f"SELECT saga_id, owner, status FROM {self._s}.inbox WHERE trigger_id = $1 AND key = $2"
        )
        for _ in range(_CLAIM_RETRIES):
            row = await conn.fetchrow(claim, *args)
            if row is not None:
                outcome = ClaimOutcome.CLAIMED if row["inserted"] else ClaimOutcome.TAKEN_OVER
                return InboxClaim(outcome, row["saga_id"], owner)
            row = await conn.fetchrow(select, trigger_id, key)
            if row is not None:
                return _found_claim(row)
        raise StoreError(f"inbox row ({trigger_id!r}, {key!r}) kept changing under us; retry")

    async def _claim_inboxes(self, conn: Any, items: list[tuple[Any, ...]]) -> list[InboxClaim]:
        """:meth:`_claim_one` for several keys (distinct) in two statements."""
        columns = [list(column) for column in zip(*items, strict=True)]
        claimed = {(row[0], row[1]): row for row in await conn.fetch(self._claim_many, *columns)}
        missing = [args for args in items if (args[0], args[1]) not in claimed]
        found: dict[tuple[str, str], Any] = {}
        if missing:
            rows = await conn.fetch(
                f"SELECT i.trigger_id, i.key, i.saga_id, i.owner, i.status FROM {self._s}.inbox "
                "AS i JOIN unnest($1::text[], $2::text[]) AS u(trigger_id, key) "
                "ON i.trigger_id = u.trigger_id AND i.key = u.key",
                [args[0] for args in missing],
                [args[1] for args in missing],
            )
            found = {(row[0], row[1]): row for row in rows}
        results: list[InboxClaim] = []
        for args in items:
            ident = (args[0], args[1])
            row = claimed.get(ident)
            if row is not None:
                outcome = ClaimOutcome.CLAIMED if row["inserted"] else ClaimOutcome.TAKEN_OVER
                results.append(InboxClaim(outcome, row["saga_id"], args[3]))
            elif ident in found:
                results.append(_found_claim(found[ident]))
            else:  # deleted between the two statements: look again, alone
                results.append(await self._claim_one(conn, args))
        return results

    async def complete_inbox(self, trigger_id: str, key: str) -> None:
        await self._write_execute(
            self._complete_inbox,
            trigger_id,
            key,
            utcnow(),
        )

    async def release_inbox(self, trigger_id: str, key: str) -> None:
        await self._write_execute(
            f"DELETE FROM {self._s}.inbox WHERE trigger_id = $1 AND key = $2", trigger_id, key
        )

    async def renew_leases(self, owner: str, lease_until: datetime) -> int:
        touched = await self._write_fetchval(
            f"WITH i AS (UPDATE {self._s}.inbox SET lease_until = $2 "
            "WHERE owner = $1 AND status = 'pending' RETURNING 1), "
            f"s AS (UPDATE {self._s}.saga_executions SET lease_expires_at = $2 "
            f"WHERE owner = $1 AND status IN {tables.ACTIVE_SQL} RETURNING 1) "
            "SELECT (SELECT count(*) FROM i) + (SELECT count(*) FROM s)",
            owner,
            to_utc(lease_until),
        )
        return int(touched)

    async def purge_expired(self, before: datetime) -> int:
        affected = await self._db().fetchval(
            f"WITH i AS (DELETE FROM {self._s}.inbox "
            "WHERE status = 'completed' AND completed_at < $1 RETURNING 1), "
            f"s AS (UPDATE {self._s}.saga_executions SET event = NULL WHERE event IS NOT NULL "
            f"AND status IN {tables.TERMINAL_SQL} AND updated_at < $1 RETURNING 1), "
            f"e AS (DELETE FROM {self._s}.trigger_executions WHERE completed_at < $1 RETURNING 1), "
            # every trigger keeps its newest tick: last_cron_tick answers the same afterwards
            f"c AS (DELETE FROM {self._s}.cron_claims AS c WHERE c.tick < $1 AND c.tick < "
            f"(SELECT max(n.tick) FROM {self._s}.cron_claims AS n "
            "WHERE n.trigger_id = c.trigger_id) RETURNING 1) "
            "SELECT (SELECT count(*) FROM i) + (SELECT count(*) FROM s) "
            "+ (SELECT count(*) FROM e) + (SELECT count(*) FROM c)",
            to_utc(before),
        )
        return int(affected)

    # -- outbox ----------------------------------------------------------------------------
    async def fetch_outbox(self, limit: int = 100) -> list[OutboxMessage]:
        rows = await self._db().fetch(
            f"SELECT {tables.OUTBOX_COLUMNS} "
            f"FROM {self._s}.outbox WHERE sent_at IS NULL ORDER BY id LIMIT $1",
            limit,
        )
        return [tables.outbox_from_row(row) for row in rows]

    async def list_saga_outbox(self, saga_id: str, limit: int = 100) -> list[OutboxMessage]:
        rows = await self._db().fetch(
            f"SELECT {tables.OUTBOX_COLUMNS} "
            f"FROM {self._s}.outbox WHERE saga_id = $1 ORDER BY id LIMIT $2",
            saga_id,
            limit,
        )
        return [tables.outbox_from_row(row) for row in rows]

    async def mark_outbox_sent(self, ids: Sequence[int]) -> None:
        if ids:
            await self._write_execute(
                f"UPDATE {self._s}.outbox SET sent_at = $2 WHERE id = ANY($1::bigint[])",
                [int(i) for i in ids],
                utcnow(),
            )

    # -- dead letters ----------------------------------------------------------------------
    async def add_dead_letter(self, record: DeadLetterRecord) -> int:
        dead_id = await self._write_fetchval(
            f"INSERT INTO {self._s}.dead_letters ({tables.DEAD_LETTER_COLUMNS}, created_at) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id",
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
            utcnow(),
        )
        return int(dead_id)

    async def list_dead_letters(
        self, *, trigger_id: str | None = None, limit: int = 100
    ) -> list[DeadLetterRecord]:
        select = self._select_dead_letters
        if trigger_id is None:
            rows = await self._db().fetch(f"{select} ORDER BY id LIMIT $1", limit)
        else:
            rows = await self._db().fetch(
                f"{select} WHERE trigger_id = $1 ORDER BY id LIMIT $2", trigger_id, limit
            )
        return [tables.dead_letter_from_row(row) for row in rows]

    async def get_dead_letter(self, dead_letter_id: int) -> DeadLetterRecord | None:
        row = await self._db().fetchrow(
            f"{self._select_dead_letters} WHERE id = $1",
            dead_letter_id,
        )
        return None if row is None else tables.dead_letter_from_row(row)

    async def delete_dead_letter(self, dead_letter_id: int) -> bool:
        deleted = await self._write_fetchval(
            f"DELETE FROM {self._s}.dead_letters WHERE id = $1 RETURNING TRUE", dead_letter_id
        )
        return bool(deleted)

    # -- poll triggers ---------------------------------------------------------------------
    async def save_trigger_schedule(self, record: TriggerScheduleRecord) -> None:
        last = record.last_poll_at
        await self._db().execute(
            f"INSERT INTO {self._s}.trigger_schedules AS t (trigger_name, saga_name, "
            "poll_interval_ms, allow_concurrent, enabled, last_poll_at) "
            "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (trigger_name) DO UPDATE SET "
            "saga_name = EXCLUDED.saga_name, poll_interval_ms = EXCLUDED.poll_interval_ms, "
            "allow_concurrent = EXCLUDED.allow_concurrent, "
            "last_poll_at = COALESCE(EXCLUDED.last_poll_at, t.last_poll_at)",
            record.trigger_name,
            record.saga_name,
            record.poll_interval_ms,
            record.allow_concurrent,
            record.enabled,
            None if last is None else to_utc(last),
        )

    async def get_trigger_schedule(self, trigger_name: str) -> TriggerScheduleRecord | None:
        row = await self._db().fetchrow(
            "SELECT trigger_name, saga_name, poll_interval_ms, allow_concurrent, enabled, "
            f"last_poll_at FROM {self._s}.trigger_schedules WHERE trigger_name = $1",
            trigger_name,
        )
        return None if row is None else TriggerScheduleRecord(*row)

    async def list_trigger_schedules(self) -> list[TriggerScheduleRecord]:
        rows = await self._db().fetch(
            "SELECT trigger_name, saga_name, poll_interval_ms, allow_concurrent, enabled, "
            f'last_poll_at FROM {self._s}.trigger_schedules ORDER BY trigger_name COLLATE "C"'
        )
        return [TriggerScheduleRecord(*row) for row in rows]

    async def set_trigger_enabled(self, trigger_name: str, enabled: bool) -> bool:
        found = await self._db().fetchval(
            f"UPDATE {self._s}.trigger_schedules SET enabled = $2 WHERE trigger_name = $1 "
            "RETURNING TRUE",
            trigger_name,
            enabled,
        )
        return bool(found)

    async def touch_trigger_schedule(self, trigger_name: str, last_poll_at: datetime) -> None:
        await self._db().execute(
            f"UPDATE {self._s}.trigger_schedules SET last_poll_at = $2 WHERE trigger_name = $1",
            trigger_name,
            to_utc(last_poll_at),
        )

    async def start_trigger_execution(
        self, record: TriggerExecutionRecord, *, exclusive: bool
    ) -> bool:
        started = to_utc(record.started_at or utcnow())
        insert = (
            f"INSERT INTO {self._s}.trigger_executions "
            "(trigger_name, context_hash, saga_id, exclusive, started_at) "
        )
        args = (record.trigger_name, record.context_hash, record.saga_id, exclusive, started)
        if not exclusive:
            await self._write_execute(insert + "VALUES ($1, $2, $3, $4, $5)", *args)
            return True
        # the NOT EXISTS sees committed open rows; the partial unique index settles two
        # exclusive inserts racing each other (the loser's ON CONFLICT does nothing)
        inserted = await self._write_fetchval(
            insert + "SELECT $1, $2, $3, $4, $5 WHERE NOT EXISTS (SELECT 1 FROM "
            f"{self._s}.trigger_executions WHERE trigger_name = $1 AND context_hash = $2 "
            "AND completed_at IS NULL) ON CONFLICT DO NOTHING RETURNING TRUE",
            *args,
        )
        return bool(inserted)

    async def complete_trigger_execution(self, trigger_name: str, saga_id: str) -> None:
        await self._write_execute(
            f"UPDATE {self._s}.trigger_executions SET completed_at = $3 "
            "WHERE trigger_name = $1 AND saga_id = $2 AND completed_at IS NULL",
            trigger_name,
            saga_id,
            utcnow(),
        )

    async def list_trigger_executions(self, trigger_name: str) -> list[TriggerExecutionRecord]:
        rows = await self._db().fetch(
            "SELECT trigger_name, context_hash, saga_id, started_at, completed_at "
            f"FROM {self._s}.trigger_executions WHERE trigger_name = $1 ORDER BY id",
            trigger_name,
        )
        return [TriggerExecutionRecord(*row) for row in rows]

    # -- cron ------------------------------------------------------------------------------
    async def claim_cron_tick(self, trigger_id: str, tick: datetime, owner: str) -> bool:
        claimed = await self._write_fetchval(
            f"INSERT INTO {self._s}.cron_claims (trigger_id, tick, owner, claimed_at) "
            "VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING TRUE",
            trigger_id,
            to_utc(tick),
            owner,
            utcnow(),
        )
        return bool(claimed)

    async def last_cron_tick(self, trigger_id: str) -> datetime | None:
        tick: datetime | None = await self._db().fetchval(
            f"SELECT MAX(tick) FROM {self._s}.cron_claims WHERE trigger_id = $1", trigger_id
        )
        return tick

    # -- leases ----------------------------------------------------------------------------
    # The server's clock decides expiry: holders on other machines need not agree on time.
    async def acquire_lease(self, name: str, holder: str, ttl: float) -> bool:
        # the row lock of ON CONFLICT makes "free, expired or ours" and the take-over atomic
        acquired = await self._db().fetchval(
            f"INSERT INTO {self._s}.leases AS l (name, holder, expires_at) "
            "VALUES ($1, $2, clock_timestamp() + make_interval(secs => $3::float8)) "
            "ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, "
            "expires_at = EXCLUDED.expires_at "
            "WHERE l.holder = EXCLUDED.holder OR l.expires_at <= clock_timestamp() "
            "RETURNING TRUE",
            name,
            holder,
            float(ttl),
        )
        return bool(acquired)

    async def renew_lease(self, name: str, holder: str, ttl: float) -> bool:
        renewed = await self._db().fetchval(
            f"UPDATE {self._s}.leases "
            "SET expires_at = clock_timestamp() + make_interval(secs => $3::float8) "
            "WHERE name = $1 AND holder = $2 AND expires_at > clock_timestamp() RETURNING TRUE",
            name,
            holder,
            float(ttl),
        )
        return bool(renewed)

    async def release_lease(self, name: str, holder: str) -> bool:
        released = await self._db().fetchval(
            f"DELETE FROM {self._s}.leases "
            "WHERE name = $1 AND holder = $2 AND expires_at > clock_timestamp() RETURNING TRUE",
            name,
            holder,
        )
        return bool(released)

    # -- shared rate limits ----------------------------------------------------------------
    # GCRA: one "theoretical arrival time" per bucket; a token is free while it is at most
    # (burst - 1) intervals ahead of now. One statement: the row lock of ON CONFLICT makes
    # the check and the take atomic. clock_timestamp() is read once the row is locked: now(),
    # the statement's start, would be older for a taker that waited for the lock, and would
    # set the bucket back.
    async def take_rate_token(self, name: str, rate: float, burst: int) -> float:
        interval, tolerance = rate_interval(rate, burst)
        row = await self._db().fetchrow(
            f"WITH taken AS (INSERT INTO {self._s}.rate_limits AS r (name, tat) "
            "VALUES ($1, clock_timestamp() + make_interval(secs => $2::float8)) "
            "ON CONFLICT (name) DO UPDATE "
            "SET tat = GREATEST(r.tat, clock_timestamp()) + make_interval(secs => $2::float8) "
            "WHERE r.tat <= clock_timestamp() + make_interval(secs => $3::float8) "
            "RETURNING 1) "
            "SELECT EXISTS (SELECT 1 FROM taken) AS taken, "
            "(SELECT EXTRACT(EPOCH FROM tat - clock_timestamp())::float8 "
            f"FROM {self._s}.rate_limits WHERE name = $1) AS ahead",
            name,
            interval,
            tolerance,
        )
        assert row is not None
        if row["taken"]:
            return 0.0
        ahead = row["ahead"] if row["ahead"] is not None else interval
        return max(ahead - tolerance, MIN_RATE_WAIT)

    # -- saga control ----------------------------------------------------------------------
    async def delete_steps(self, saga_id: str, names: Sequence[str]) -> None:
        if names:
            await self._db().execute(
                f"DELETE FROM {self._s}.saga_steps WHERE saga_id = $1 AND name = ANY($2::text[])",
                saga_id,
                list(names),
            )

    async def add_saga_history(self, entry: SagaHistoryRecord) -> int:
        entry_id: int = await self._db().fetchval(
            f"INSERT INTO {self._s}.saga_history (saga_id, at, action, actor, detail) "
            "VALUES ($1, $2, $3, $4, $5) RETURNING id",
            entry.saga_id,
            to_utc(entry.at) if entry.at is not None else utcnow(),
            entry.action,
            entry.actor,
            entry.detail,
        )
        return entry_id

    async def list_saga_history(self, saga_id: str, limit: int = 100) -> list[SagaHistoryRecord]:
        rows = await self._db().fetch(
            f"SELECT id, saga_id, at, action, actor, detail FROM {self._s}.saga_history "
            "WHERE saga_id = $1 ORDER BY id LIMIT $2",
            saga_id,
            limit,
        )
        return [
            SagaHistoryRecord(
                row["saga_id"], row["action"], row["actor"], row["detail"], row["id"], row["at"]
            )
            for row in rows
        ]

    async def add_saga_request(self, request: SagaControlRequest) -> bool:
        added = await self._db().fetchval(
            f"INSERT INTO {self._s}.saga_requests (saga_id, action, step, actor, reason, "
            "attempt, requested_at) VALUES ($1, $2, $3, $4, $5, $6, $7) "
            "ON CONFLICT (saga_id) DO NOTHING RETURNING TRUE",
            request.saga_id,
            SagaAction(request.action).value,
            request.step,
            request.actor,
            request.reason,
            request.attempt,
            to_utc(request.requested_at) if request.requested_at is not None else utcnow(),
        )
        return bool(added)

    async def list_saga_requests(
        self, *, saga_id: str | None = None, limit: int = 100
    ) -> list[SagaControlRequest]:
        rows = await self._db().fetch(
            "SELECT saga_id, action, step, actor, reason, attempt, requested_at "
            f"FROM {self._s}.saga_requests WHERE ($1::text IS NULL OR saga_id = $1) "
            "ORDER BY requested_at, saga_id LIMIT $2",
            saga_id,
            limit,
        )
        return [
            SagaControlRequest(
                row["saga_id"],
                SagaAction(row["action"]),
                row["step"],
                row["actor"],
                row["reason"],
                row["attempt"],
                row["requested_at"],
            )
            for row in rows
        ]

    async def finish_saga_request(self, saga_id: str, action: SagaAction) -> bool:
        deleted = await self._db().fetchval(
            f"DELETE FROM {self._s}.saga_requests WHERE saga_id = $1 AND action = $2 "
            "RETURNING TRUE",
            saga_id,
            SagaAction(action).value,
        )
        return bool(deleted)
