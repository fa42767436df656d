"""The connection of :class:`~sagaz.storage.postgres.PostgresSagaStore`: its lifecycle, the schema,
and the read and write paths that every part of the store shares.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlencode, urlsplit, urlunsplit

from sagaz._imports import require_extra
from sagaz.abc import SagaStore
from sagaz.exceptions import StoreError, StoreUnavailableError
from sagaz.records import SchemaVersions
from sagaz.storage import postgres_rows as mapping
from sagaz.storage import postgres_schema as tables
from sagaz.storage.postgres_groups import PgGroupCommitter, Statement
from sagaz.storage.texts import SagaJson
from sagaz.storage.unavailable import unavailable_error
from sagaz.storage.url import redact_url

__all__ = ["PostgresConnection"]

T = TypeVar("T")

_CLAIM_RETRIES = 5  # a row deleted between our two statements makes us look again

_GROUP_CONNECTIONS = 4  # group commits in flight at once, at most


#: a saga_row's moments (bigint microseconds) as its columns' timestamps
_SAGA_MOMENTS = ", ".join(
    mapping.moment_sql(f"u.{column}") for column in ("lease_expires_at", "created_at", "updated_at")
)

#: the columns a saga row is inserted with: its own and the derived ones (schema 11)
_SAGA_INSERT = f"{tables.SAGA_COLUMNS}, {tables.DERIVED_COLUMNS}"

#: the values of :data:`_SAGA_INSERT` from the saga_row (or checkpoint_row) ``u``
_SAGA_SELECT = (
    "u.saga_id, u.saga_name, u.status, u.context::jsonb, u.attempt, u.error, u.trigger_id, "
    f"u.event::jsonb, u.owner, {_SAGA_MOMENTS}, "
    + tables.derived_values("u.status", "u.event", mapping.moment_sql("u.updated_at"))
)

_SAGA_CONFLICT = (
    "ON CONFLICT (saga_id) DO UPDATE SET saga_name = EXCLUDED.saga_name, "
    "status = EXCLUDED.status, context = EXCLUDED.context, attempt = EXCLUDED.attempt, "
    "error = EXCLUDED.error, trigger_id = EXCLUDED.trigger_id, event = EXCLUDED.event, "
    "owner = EXCLUDED.owner, lease_expires_at = EXCLUDED.lease_expires_at, "
    f"updated_at = EXCLUDED.updated_at, {tables.DERIVED_CONFLICT} "
    # fenced (see the contract): a row another owner took over is not written
    "WHERE saga_executions.owner IS NULL OR EXCLUDED.owner IS NULL "
    "OR saga_executions.owner = EXCLUDED.owner "
    "OR saga_executions.attempt < EXCLUDED.attempt"
)

_INBOX_CONFLICT = (
    "ON CONFLICT (trigger_id, key) DO UPDATE SET owner = EXCLUDED.owner, "
    "lease_until = EXCLUDED.lease_until WHERE i.status = 'pending' AND "
    "(i.owner = EXCLUDED.owner OR i.lease_until IS NULL OR i.lease_until < EXCLUDED.created_at)"
)


def _inbox_rows(schema: str, arrays: str, columns: str = "trigger_id, key") -> str:
    """A ``FROM`` list: the keys ``u`` (``unnest`` of ``arrays``, named ``columns``: their
    trigger ids and keys first) and the inbox row ``i`` of each, looked up alone by the
    primary key (a key without a row has none).

    ``OFFSET 0`` keeps each a lookup: joined by ``=``, a plan cached while the table was
    small (the planner takes a table never analyzed for 10 pages) would join by a hash
    over a scan of the whole table, and keep doing so as the table grew (1.1 ms of a
    2.4 ms group statement at 7,600 rows)."""
    return _inbox_lookup(schema, f"unnest({arrays}) AS u({columns})")


def _inbox_lookup(schema: str, keys: str) -> str:
    """:func:`_inbox_rows` of the keys ``u`` of the ``FROM`` item ``keys`` (with columns
    ``trigger_id`` and ``key``)."""
    return (
        f"{keys} CROSS JOIN LATERAL (SELECT * FROM "
        f"{schema}.inbox AS i WHERE i.trigger_id = u.trigger_id AND i.key = u.key "
        "OFFSET 0) AS i"
    )


_STEP_CONFLICT = (
    "ON CONFLICT (saga_id, name) DO UPDATE SET status = EXCLUDED.status, "
    "result = EXCLUDED.result, error = EXCLUDED.error, "
    "attempts = EXCLUDED.attempts, completed_seq = EXCLUDED.completed_seq, "
    "compensation_error = EXCLUDED.compensation_error, updated_at = EXCLUDED.updated_at"
)


class PostgresConnection(SagaStore):
    """What every part of :class:`~sagaz.storage.postgres.PostgresSagaStore` shares: the connection,
    its lifecycle and the read and write paths (the operations are in the sibling modules).
    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "sagaz",
        min_size: int = 1,
        max_size: int = 10,
        command_timeout: float | None = 60.0,
        idle_transaction_timeout: float | None = 5.0,
    ) -> None:
        self.dsn = dsn
        self.schema = schema
        self._s = tables.quote_schema(schema)
        self._insert_saga = (
            f"INSERT INTO {self._s}.saga_executions ({_SAGA_INSERT}) "
            f"VALUES ({mapping.SAGA_VALUES}, "
            + tables.derived_values("$3::text", "$8::jsonb", mapping.moment_sql("$12::bigint"))
            + ")"
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
        self._checkpoint_sql: dict[tuple[bool, bool, bool, bool, bool], str] = {}
        self._group_sql: dict[Any, str] = {}  # by shape, see postgres.group_statement
        #: the running sagas' context and event texts, reused between their checkpoints
        self._json = SagaJson()
        self._insert_sagas = (
            f"INSERT INTO {self._s}.saga_executions ({_SAGA_INSERT}) SELECT {_SAGA_SELECT} "
            f"FROM unnest($1::{self._s}.saga_row[]) AS u "
            "ON CONFLICT (saga_id) DO NOTHING RETURNING saga_id"
        )
        self._claim_many = (
            f"INSERT INTO {self._s}.inbox AS i (trigger_id, key, saga_id, owner, "
            "lease_until, status, created_at) SELECT u.trigger_id, u.key, u.saga_id, u.owner, "
            f"u.lease_until, 'pending', u.created_at FROM unnest($1::{self._s}.inbox_claim[]) "
            f"AS u {_INBOX_CONFLICT} "
            "RETURNING i.trigger_id, i.key, i.saga_id, (xmax = 0) AS inserted"
        )
        self._select_sagas = f"SELECT {tables.SAGA_COLUMNS} FROM {self._s}.saga_executions"
        self._insert_outbox = (
            f"INSERT INTO {self._s}.outbox (saga_id, topic, payload, headers, created_at) "
            "VALUES ($1, $2, $3, $4, $5)"
        )
        self._select_dead_letters = (
            f"SELECT id, {mapping.DEAD_LETTER_COLUMNS}, created_at FROM {self._s}.dead_letters"
        )
        self._min_size = min_size
        self._max_size = max_size
        self._command_timeout = command_timeout
        # the server ends a session left idle in a transaction (its worker frozen or cut
        # off mid-group) and so releases its row locks: every other worker's group waits
        # on them meanwhile, and the lease takeover too
        # every statement of the store is planned once per connection and its plan kept:
        # in the default mode the server plans a statement anew at each run while its
        # plan for the run's own values is estimated cheaper than the kept one, and a
        # group statement's is whenever its arrays hold fewer than 10 rows (the
        # estimate of an array parameter): ~500-700 us of server CPU per group, more
        # than all the rest of a group of one saga. The statements are written for kept
        # plans (tests/integration/test_postgres_plans.py)
        self._server_settings = {"plan_cache_mode": "force_generic_plan"}
        if idle_transaction_timeout is not None:
            self._server_settings["idle_in_transaction_session_timeout"] = str(
                round(idle_transaction_timeout * 1000)
            )
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
                    server_settings=self._server_settings,
                    init=mapping.init_connection,
                    reset=mapping.keep_session,
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
            # the rest of the pool is for reads and the statements kept out of groups
            connections = max(1, min(_GROUP_CONNECTIONS, self._max_size // 2))
            self._groups = PgGroupCommitter(
                pool,
                unavailable=self._unavailable,
                label=repr(self),
                connections=connections,
                statement=self._statement(),
                # kept between groups only while the pool has others for the reads
                keep=self._max_size > connections,
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
            # 25P03: ended by the server after idling in a transaction (a frozen worker)
            | errors.IdleInTransactionSessionTimeoutError
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

    def _statement(self) -> Statement | None:
        """What runs an all-batch group as one statement (the group committer's
        ``statement``), if the store has it."""
        return None

    def _committer(self) -> PgGroupCommitter:
        """The group committer; raises what :meth:`_db` raises, a server that cannot be
        reached as :class:`StoreUnavailableError` (for the operations that are not wrapped,
        see :func:`~sagaz.storage.unavailable.translates_unavailable`)."""
        try:
            self._db()  # the error for a store that is not started
        except Exception as exc:
            if self._unavailable(exc):
                raise unavailable_error(self, exc) from exc
            raise
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
        """Groups the group committer has committed since the store started (each holds the
        writes of every saga that wrote at the same time; one an operation of which failed
        is committed an operation at a time, and counted once)."""
        return 0 if self._groups is None else self._groups.commits
