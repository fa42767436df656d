"""The versioned PostgreSQL schema of :class:`~sagaz.storage.postgres.PostgresSagaStore` and
how its rows map to records.

Every table lives in one schema (``sagaz`` by default) whose name replaces ``{s}`` in the
statements. A migration is a version number and the statements that bring the schema to it;
append new migrations, never edit a released one. :func:`migrate` runs under
``pg_advisory_xact_lock``, so processes starting at once apply each migration exactly once.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from sagaz.exceptions import ConfigurationError, SchemaOutdatedError, StoreError
from sagaz.records import DeadLetterRecord, OutboxMessage, SagaRecord, SchemaVersions, StepRecord
from sagaz.storage.codec import dumps, loads, to_utc
from sagaz.storage.sql import (
    ACTIVE_SQL,
    COMMON_SAGA_STATUSES,
    OUTBOX_COLUMNS,
    SAGA_COLUMNS,
    STEP_COLUMNS,
    TERMINAL_SQL,
)
from sagaz.storage.texts import JsonMemo
from sagaz.types import SagaStatus, StepStatus

__all__ = [
    "ACTIVE_SQL",
    "COMMON_SAGA_STATUSES",
    "COMMON_SQL",
    "DEAD_LETTER_COLUMNS",
    "MIGRATIONS",
    "OUTBOX_COLUMNS",
    "SAGA_COLUMNS",
    "SAGA_VALUES",
    "SCHEMA_VERSION",
    "STEP_COLUMNS",
    "TERMINAL_SQL",
    "dead_letter_from_row",
    "init_connection",
    "keep_session",
    "migrate",
    "moment_sql",
    "outbox_from_row",
    "pg_micros",
    "quote_schema",
    "read_versions",
    "saga_from_row",
    "saga_params",
    "step_from_row",
]


COMMON_SQL = "(" + ", ".join(f"'{s.value}'" for s in sorted(COMMON_SAGA_STATUSES)) + ")"
"""SQL list of :data:`COMMON_SAGA_STATUSES`."""

_SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_$-]{0,62}$")

MIGRATIONS: list[tuple[int, tuple[str, ...]]] = [
    (
        1,
        (
            """CREATE TABLE {s}.saga_executions (
                seq bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
                saga_id text PRIMARY KEY,
                saga_name text NOT NULL,
                status text NOT NULL,
                context jsonb NOT NULL,
                attempt integer NOT NULL,
                error text,
                trigger_id text,
                event jsonb,
                owner text,
                lease_expires_at timestamptz,
                created_at timestamptz NOT NULL,
                updated_at timestamptz NOT NULL
            )""",
            "CREATE INDEX saga_executions_by_status ON {s}.saga_executions (status, seq)",
            "CREATE INDEX saga_executions_by_name ON {s}.saga_executions (saga_name, seq)",
            "CREATE INDEX saga_executions_active ON {s}.saga_executions (seq) "
            f"WHERE status IN {ACTIVE_SQL}",
            "CREATE INDEX saga_executions_by_owner ON {s}.saga_executions (owner) "
            f"WHERE status IN {ACTIVE_SQL}",
            "CREATE INDEX saga_executions_stored_events ON {s}.saga_executions (updated_at) "
            f"WHERE event IS NOT NULL AND status IN {TERMINAL_SQL}",
            """CREATE TABLE {s}.saga_steps (
                saga_id text NOT NULL,
                name text NOT NULL,
                status text NOT NULL,
                result jsonb,
                error text,
                attempts integer NOT NULL,
                completed_seq integer,
                compensation_error text,
                updated_at timestamptz NOT NULL,
                PRIMARY KEY (saga_id, name)
            )""",
            """CREATE TABLE {s}.inbox (
                trigger_id text NOT NULL,
                key text NOT NULL,
                saga_id text NOT NULL,
                owner text,
                lease_until timestamptz,
                status text NOT NULL,
                created_at timestamptz NOT NULL,
                completed_at timestamptz,
                PRIMARY KEY (trigger_id, key)
            )""",
            "CREATE INDEX inbox_pending_by_owner ON {s}.inbox (owner) WHERE status = 'pending'",
            "CREATE INDEX inbox_completed ON {s}.inbox (completed_at) WHERE status = 'completed'",
            """CREATE TABLE {s}.outbox (
                id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                saga_id text NOT NULL,
                topic text NOT NULL,
                payload jsonb,
                headers jsonb NOT NULL,
                created_at timestamptz NOT NULL,
                sent_at timestamptz
            )""",
            "CREATE INDEX outbox_unsent ON {s}.outbox (id) WHERE sent_at IS NULL",
            """CREATE TABLE {s}.dead_letters (
                id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                trigger_id text NOT NULL,
                saga_name text NOT NULL,
                payload jsonb,
                error text NOT NULL,
                reason text NOT NULL,
                traceback text,
                attempts integer NOT NULL,
                saga_id text,
                source text,
                meta jsonb NOT NULL,
                created_at timestamptz NOT NULL
            )""",
            "CREATE INDEX dead_letters_by_trigger ON {s}.dead_letters (trigger_id, id)",
            """CREATE TABLE {s}.trigger_schedules (
                trigger_name text PRIMARY KEY,
                saga_name text NOT NULL,
                poll_interval_ms bigint NOT NULL,
                allow_concurrent boolean NOT NULL,
                enabled boolean NOT NULL,
                last_poll_at timestamptz
            )""",
            """CREATE TABLE {s}.trigger_executions (
                id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                trigger_name text NOT NULL,
                context_hash text NOT NULL,
                saga_id text NOT NULL,
                exclusive boolean NOT NULL,
                started_at timestamptz NOT NULL,
                completed_at timestamptz
            )""",
            # at most one open exclusive execution per context, across every process
            "CREATE UNIQUE INDEX trigger_executions_open_exclusive "
            "ON {s}.trigger_executions (trigger_name, context_hash) "
            "WHERE completed_at IS NULL AND exclusive",
            "CREATE INDEX trigger_executions_by_trigger ON {s}.trigger_executions "
            "(trigger_name, id)",
            "CREATE INDEX trigger_executions_open_by_saga ON {s}.trigger_executions "
            "(trigger_name, saga_id) WHERE completed_at IS NULL",
            """CREATE TABLE {s}.cron_claims (
                trigger_id text NOT NULL,
                tick timestamptz NOT NULL,
                owner text NOT NULL,
                claimed_at timestamptz NOT NULL,
                PRIMARY KEY (trigger_id, tick)
            )""",
        ),
    ),
    (
        2,
        (
            # purge_expired deletes completed executions by age; the newest cron tick of a
            # trigger (the one it keeps) is found through the primary key (trigger_id, tick)
            "CREATE INDEX IF NOT EXISTS trigger_executions_completed "
            "ON {s}.trigger_executions (completed_at) WHERE completed_at IS NOT NULL",
        ),
    ),
    (
        3,
        (
            # named leases (acquire_lease): one holder at a time, until expires_at (server time)
            """CREATE TABLE IF NOT EXISTS {s}.leases (
                name text PRIMARY KEY,
                holder text NOT NULL,
                expires_at timestamptz NOT NULL
            )""",
        ),
    ),
    (
        4,
        (
            # trigger_executions name a poll trigger by its trigger id, as trigger_schedules
            # does (they named it by its Trigger's `name`): the rows of sagas still stored
            # take their saga's trigger_id, so both tables join on trigger_name
            """UPDATE {s}.trigger_executions AS e SET trigger_name = s.trigger_id
            FROM {s}.saga_executions AS s
            WHERE s.saga_id = e.saga_id AND s.trigger_id IS NOT NULL
            AND s.trigger_id <> e.trigger_name""",
        ),
    ),
    (
        5,
        (
            # shared token buckets (take_rate_token, limit_scope="cluster"): the bucket's
            # theoretical arrival time, GCRA-style, on the server's clock
            """CREATE TABLE IF NOT EXISTS {s}.rate_limits (
                name text PRIMARY KEY,
                tat timestamptz NOT NULL
            )""",
        ),
    ),
    (
        6,
        (
            # saga control (sagaz sagas cancel|resume|retry): what was done to each saga...
            """CREATE TABLE IF NOT EXISTS {s}.saga_history (
                id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                saga_id text NOT NULL,
                at timestamptz NOT NULL,
                action text NOT NULL,
                actor text,
                detail text
            )""",
            "CREATE INDEX IF NOT EXISTS saga_history_by_saga ON {s}.saga_history (saga_id, id)",
            # ...and the requests the engines have still to finish, at most one per saga
            """CREATE TABLE IF NOT EXISTS {s}.saga_requests (
                saga_id text PRIMARY KEY,
                action text NOT NULL,
                step text,
                actor text,
                reason text,
                attempt integer NOT NULL,
                requested_at timestamptz NOT NULL
            )""",
            # the status 'cancelled' is terminal: purge_expired's partial index includes it
            "DROP INDEX IF EXISTS {s}.saga_executions_stored_events",
            "CREATE INDEX saga_executions_stored_events ON {s}.saga_executions (updated_at) "
            f"WHERE event IS NOT NULL AND status IN {TERMINAL_SQL}",
        ),
    ),
    (
        7,
        (
            # purge_sagas (saga_retention_days) finds finished sagas oldest first, and the
            # outbox rows of each (also what list_saga_outbox reads)
            "CREATE INDEX IF NOT EXISTS saga_executions_finished ON {s}.saga_executions "
            f"(updated_at) WHERE status IN {TERMINAL_SQL}",
            "CREATE INDEX IF NOT EXISTS outbox_by_saga ON {s}.outbox (saga_id, id)",
        ),
    ),
    (
        8,
        (
            # every saga row passes pending -> running -> completed, a row version each,
            # and each version takes an entry in every index it meets the predicate of:
            # the list by status reads those three through saga_executions_active (pending,
            # running) and the seq index (completed, most rows), so the index by status
            # keeps the other statuses only (3 B-tree entries fewer per saga)
            "DROP INDEX IF EXISTS {s}.saga_executions_by_status",
            "CREATE INDEX IF NOT EXISTS saga_executions_by_rare_status ON {s}.saga_executions "
            f"(status, seq) WHERE status NOT IN {COMMON_SQL}",
        ),
    ),
    (
        9,
        (
            # the rows a group commit writes, one array parameter of these per table instead
            # of one array per column: the driver checks each element of an array it sends
            # (is it itself an array?), so a row costs it 4 checks instead of 1 or 2 per
            # column. JSON goes as text and is cast in the statement, as before; a saga's
            # and a step's moments as bigint microseconds (pg_micros: the driver's datetime
            # encoding costs 0.55 us a value, 11 a saga). (CREATE TYPE has no IF NOT
            # EXISTS: a type left from an earlier run goes first)
            "DROP TYPE IF EXISTS {s}.saga_row, {s}.step_row, {s}.inbox_claim",
            """CREATE TYPE {s}.saga_row AS (
                saga_id text, saga_name text, status text, context text, attempt integer,
                error text, trigger_id text, event text, owner text,
                lease_expires_at bigint, created_at bigint, updated_at bigint
            )""",
            """CREATE TYPE {s}.step_row AS (
                saga_id text, name text, status text, result text, error text,
                attempts integer, completed_seq integer, compensation_error text,
                updated_at bigint
            )""",
            """CREATE TYPE {s}.inbox_claim AS (
                trigger_id text, key text, saga_id text, owner text, lease_until timestamptz,
                created_at timestamptz
            )""",
        ),
    ),
]
"""Every migration, oldest first (``{s}`` is the quoted schema name)."""

SCHEMA_VERSION = MIGRATIONS[-1][0]
"""The schema version this code writes and expects."""


def quote_schema(schema: str) -> str:
    """``schema`` as a quoted SQL identifier, after checking it is a plain name."""
    if not _SCHEMA_NAME.match(schema):
        raise ConfigurationError(
            f"invalid PostgreSQL schema name {schema!r}: use letters, digits, '_' or '-', "
            "starting with a letter or '_', at most 63 characters"
        )
    return f'"{schema}"'


async def migrate(conn: Any, schema: str, *, url: str, upgrade: bool = False) -> SchemaVersions:
    """Create the schema in an empty database or, with ``upgrade``, bring an older one up to
    date, in one transaction; return the versions found.

    Without ``upgrade`` an older schema raises :class:`SchemaOutdatedError` (``url`` goes
    into its ``sagaz db upgrade --store URL``). ``conn`` is an asyncpg connection. The
    advisory lock is keyed on the schema name, so two processes starting at once queue up
    instead of racing on ``CREATE TABLE``.
    """
    s = quote_schema(schema)
    async with conn.transaction():
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"sagaz:{schema}"
        )
        exists = await conn.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = $1", schema)
        if not exists:
            await conn.execute(f"CREATE SCHEMA {s}")
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {s}.schema_version ("
            "version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        current = int(
            await conn.fetchval(f"SELECT COALESCE(MAX(version), 0) FROM {s}.schema_version")
        )
        if current > SCHEMA_VERSION:
            raise StoreError(
                f"the PostgreSQL schema {schema!r} has version {current}, newer than the "
                f"{SCHEMA_VERSION} this sagaz understands: upgrade sagaz (pip install -U sagaz)"
            )
        if 0 < current < SCHEMA_VERSION and not upgrade:
            raise SchemaOutdatedError(
                f"the PostgreSQL schema {schema!r}",
                store=url,
                found=current,
                expected=SCHEMA_VERSION,
            )
        for version, statements in MIGRATIONS:
            if version <= current:
                continue
            for statement in statements:
                await conn.execute(statement.replace("{s}", s))
            await conn.execute(f"INSERT INTO {s}.schema_version (version) VALUES ($1)", version)
    return SchemaVersions(current=current, expected=SCHEMA_VERSION)


async def read_versions(conn: Any, schema: str) -> SchemaVersions:
    """The versions of ``schema``, read without creating or changing anything."""
    table = f"{quote_schema(schema)}.schema_version"
    current = 0
    if await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", table):
        current = int(await conn.fetchval(f"SELECT COALESCE(MAX(version), 0) FROM {table}"))
    return SchemaVersions(current=current, expected=SCHEMA_VERSION)


# -- rows <-> records ----------------------------------------------------------------------
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def pg_micros(moment: datetime) -> int:
    """``moment`` (aware) as microseconds since PostgreSQL's epoch (2000-01-01 UTC): how a
    saga's and a step's moments are sent (:func:`moment_sql` turns them back)."""
    return (to_utc(moment) - _PG_EPOCH) // _MICROSECOND


def moment_sql(micros: str) -> str:
    """SQL: the ``timestamptz`` of the ``bigint`` microseconds ``micros`` (an expression
    without side effects), exact: its high and low bits are each multiplied by an
    interval of a power of two microseconds (``interval * float8`` computes in double,
    exact for such products; one product of a whole microsecond count would round beyond
    2^53, after the year 2285)."""
    return (
        f"(timestamptz '2000-01-01 00:00:00+00' + ({micros} >> 20) * "
        f"interval '1048576 microseconds' + ({micros} & 1048575) * interval '1 microsecond')"
    )


SAGA_VALUES = "$1, $2, $3, $4, $5, $6, $7, $8, $9, " + ", ".join(
    moment_sql(f"${n}::bigint") for n in (10, 11, 12)
)
"""The parameters of an insert of :data:`SAGA_COLUMNS` (:func:`saga_params`' values)."""
DEAD_LETTER_COLUMNS = (
    "trigger_id, saga_name, payload, error, reason, traceback, attempts, saga_id, source, meta"
)


def _json_text(text: str) -> str:
    return text


async def init_connection(conn: Any) -> None:
    """Read JSONB with the sagaz codec; parameters arrive as :func:`dumps` text already, so a
    value that cannot be stored fails with a clear :class:`StoreError` before any query runs."""
    await conn.set_type_codec("jsonb", encoder=_json_text, decoder=loads, schema="pg_catalog")


async def keep_session(conn: Any) -> None:
    """The pool's reset hook: nothing to undo. The store keeps no session state (no LISTEN,
    advisory locks, cursors or SET), and the pool still rolls back an open transaction; the
    default reset would cost every operation a second round trip."""


def saga_params(
    record: SagaRecord, created_at: datetime, updated_at: datetime, texts: JsonMemo | None = None
) -> tuple[Any, ...]:
    """The values of :data:`SAGA_COLUMNS` for ``record`` (JSON columns as text, moments as
    :func:`pg_micros`): a ``saga_row`` (migration 9), or :data:`SAGA_VALUES`. ``texts``: the
    saga's context and event texts (:class:`~sagaz.storage.texts.SagaJson`), reused while
    the values are unchanged."""
    lease, status, event = record.lease_expires_at, record.status, record.event
    encode_context, encode_event = (
        (dumps, dumps) if texts is None else (texts[0].encode, texts[1].encode)
    )
    context, event = encode_context(record.context), None if event is None else encode_event(event)
    return (
        record.saga_id,
        record.saga_name,
        # a member (most records) is its own value; SagaStatus() checks a plain string
        status.value if type(status) is SagaStatus else SagaStatus(status).value,
        context,
        record.attempt,
        record.error,
        record.trigger_id,
        event,
        record.owner,
        None if lease is None else pg_micros(lease),
        pg_micros(created_at),
        pg_micros(updated_at),
    )


def saga_from_row(row: Mapping[str, Any]) -> SagaRecord:
    """A row of :data:`SAGA_COLUMNS` as a record."""
    return SagaRecord(
        saga_id=row["saga_id"],
        saga_name=row["saga_name"],
        status=SagaStatus(row["status"]),
        context=row["context"],
        attempt=row["attempt"],
        error=row["error"],
        trigger_id=row["trigger_id"],
        event=row["event"],
        owner=row["owner"],
        lease_expires_at=row["lease_expires_at"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def outbox_from_row(row: Mapping[str, Any]) -> OutboxMessage:
    """A row of :data:`OUTBOX_COLUMNS` as a message."""
    return OutboxMessage(
        saga_id=row["saga_id"],
        topic=row["topic"],
        payload=row["payload"],
        headers=row["headers"],
        id=row["id"],
        created_at=row["created_at"],
        sent_at=row["sent_at"],
    )


def step_from_row(row: Mapping[str, Any]) -> StepRecord:
    """A row of :data:`STEP_COLUMNS` as a record."""
    return StepRecord(
        saga_id=row["saga_id"],
        name=row["name"],
        status=StepStatus(row["status"]),
        result=row["result"],
        error=row["error"],
        attempts=row["attempts"],
        completed_seq=row["completed_seq"],
        compensation_error=row["compensation_error"],
        updated_at=row["updated_at"],
    )


def dead_letter_from_row(row: Mapping[str, Any]) -> DeadLetterRecord:
    """A row of ``id``, :data:`DEAD_LETTER_COLUMNS`, ``created_at`` as a record."""
    return DeadLetterRecord(
        trigger_id=row["trigger_id"],
        saga_name=row["saga_name"],
        payload=row["payload"],
        error=row["error"],
        reason=row["reason"],
        traceback=row["traceback"],
        attempts=row["attempts"],
        saga_id=row["saga_id"],
        source=row["source"],
        meta=row["meta"],
        id=row["id"],
        created_at=row["created_at"],
    )
