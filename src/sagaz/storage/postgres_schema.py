"""The versioned PostgreSQL schema of :class:`~sagaz.storage.postgres.PostgresSagaStore`
(how its rows map to records: :mod:`sagaz.storage.postgres_rows`).

Every table lives in one schema (``sagaz`` by default) whose name replaces ``{s}`` in the
statements. A migration is a version number and the statements that bring the schema to it;
append new migrations, never edit a released one. :func:`migrate` runs under
``pg_advisory_xact_lock``, so processes starting at once apply each migration exactly once.
"""

from __future__ import annotations

import re
from typing import Any

from sagaz.exceptions import ConfigurationError, SchemaOutdatedError, StoreError
from sagaz.records import SchemaVersions
from sagaz.storage.sql import (
    ACTIVE_SQL,
    COMMON_SAGA_STATUSES,
    OUTBOX_COLUMNS,
    SAGA_COLUMNS,
    STEP_COLUMNS,
    TERMINAL_SQL,
    recovery_columns,
)

__all__ = [
    "ACTIVE_SQL",
    "COMMON_SAGA_STATUSES",
    "COMMON_SQL",
    "DERIVED_COLUMNS",
    "DERIVED_CONFLICT",
    "KEY_COLUMNS",
    "MIGRATIONS",
    "OUTBOX_COLUMNS",
    "SAGA_COLUMNS",
    "SCHEMA_VERSION",
    "STEP_COLUMNS",
    "TERMINAL_SQL",
    "derived_values",
    "migrate",
    "quote_schema",
    "read_versions",
]


COMMON_SQL = "(" + ", ".join(f"'{s.value}'" for s in sorted(COMMON_SAGA_STATUSES)) + ")"
"""SQL list of :data:`COMMON_SAGA_STATUSES`."""

DERIVED_COLUMNS = "finished_at, event_finished_at, rare_status"
"""The columns of ``saga_executions`` that its partial indexes hold (schema 11), each derived
from the row's ``status``, ``event`` and ``updated_at`` by :func:`derived_values`: every
statement that writes those three writes these too."""

DERIVED_CONFLICT = (
    "finished_at = EXCLUDED.finished_at, event_finished_at = EXCLUDED.event_finished_at, "
    "rare_status = EXCLUDED.rare_status"
)
"""An upsert's ``SET`` of :data:`DERIVED_COLUMNS` from the row it proposed."""


def derived_values(status: str, event: str, updated_at: str) -> str:
    """SQL: the values of :data:`DERIVED_COLUMNS` for a saga row whose status, event and
    updated_at are the expressions ``status``, ``event`` and ``updated_at``: the moment it
    finished (NULL while active), the same while it keeps its event, and its status if it is
    none of :data:`COMMON_SAGA_STATUSES`. A saga's start (pending -> running) changes none
    of them, so it is a HOT update."""
    return ", ".join(_derived(status, event, updated_at))


def _derived(status: str, event: str, updated_at: str) -> tuple[str, str, str]:
    """:func:`derived_values`, one expression per column."""
    finished = f"{status} IN {TERMINAL_SQL}"
    return (
        f"CASE WHEN {finished} THEN {updated_at} END",
        f"CASE WHEN {finished} AND {event} IS NOT NULL THEN {updated_at} END",
        f"CASE WHEN {status} NOT IN {COMMON_SQL} THEN {status} END",
    )


KEY_COLUMNS: dict[str, tuple[str, ...]] = {
    "saga_executions": ("saga_id", "saga_name", "trigger_id", "owner"),
    "saga_steps": ("saga_id", "name"),
    "inbox": ("trigger_id", "key", "saga_id", "owner"),
    "outbox": ("saga_id",),
    "saga_history": ("saga_id",),
    "saga_requests": ("saga_id",),
    "trigger_executions": ("saga_id",),
    "dead_letters": ("saga_id",),
}
"""The text columns of schema 12's ``COLLATE "C"`` (byte order), by table: the keys of the
rows a saga writes and every saga id."""

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
    (
        10,
        (
            # the usual checkpoint (a saga row, one step of it, maybe its inbox key) as one
            # array element instead of two or five: the driver checks every element of an
            # array (4 isinstance checks through ABCMeta a row, ~10,000 instructions) and
            # a saga row, its step and its inbox key share the saga id and the moment
            "DROP TYPE IF EXISTS {s}.checkpoint_row",
            """CREATE TYPE {s}.checkpoint_row AS (
                saga_id text, saga_name text, status text, context text, attempt integer,
                error text, trigger_id text, event text, owner text,
                lease_expires_at bigint, created_at bigint, updated_at bigint,
                step_name text, step_status text, step_result text, step_error text,
                step_attempts integer, step_completed_seq integer,
                step_compensation_error text, inbox_trigger_id text, inbox_key text
            )""",
        ),
    ),
    (
        11,
        (
            # HOT updates: a row update adds no index entry when no indexed column changes
            # (a column of a partial index's predicate counts) and the new version fits on
            # the row's page. Every saga row goes pending -> running -> completed, and each
            # changed status and updated_at, which the indexes below held: three versions,
            # ~14 index entries. Now they hold columns derived from those, which pending ->
            # running leaves alone, and 30% of each page stays free for the new versions
            # (85% full, a third of the starts found no room). The columns are computed
            # here (the table is rewritten once), then written by the store's statements:
            # a generated column's expression is parsed from its text at every execution
            # of a statement that writes the table (PostgreSQL 15), more server CPU than
            # the index entries it saved
            "ALTER TABLE {s}.saga_executions SET (fillfactor = 70), "
            + ", ".join(
                f"ADD COLUMN IF NOT EXISTS {column} {kind} GENERATED ALWAYS AS ({value}) STORED"
                for column, kind, value in zip(
                    DERIVED_COLUMNS.split(", "),
                    ("timestamptz", "timestamptz", "text"),
                    _derived("status", "event", "updated_at"),
                    strict=True,
                )
            ),
            "ALTER TABLE {s}.saga_executions "
            + ", ".join(
                f"ALTER COLUMN {column} DROP EXPRESSION IF EXISTS"
                for column in DERIVED_COLUMNS.split(", ")
            ),
            "DROP INDEX IF EXISTS {s}.saga_executions_active, {s}.saga_executions_by_owner, "
            "{s}.saga_executions_stored_events, {s}.saga_executions_finished, "
            "{s}.saga_executions_by_rare_status",
            # active: not finished (updated_at is never NULL)
            "CREATE INDEX saga_executions_active ON {s}.saga_executions (seq) "
            "WHERE finished_at IS NULL",
            "CREATE INDEX saga_executions_by_owner ON {s}.saga_executions (owner) "
            "WHERE finished_at IS NULL",
            "CREATE INDEX saga_executions_finished ON {s}.saga_executions (finished_at) "
            "WHERE finished_at IS NOT NULL",
            "CREATE INDEX saga_executions_stored_events ON {s}.saga_executions "
            "(event_finished_at) WHERE event_finished_at IS NOT NULL",
            "CREATE INDEX saga_executions_by_rare_status ON {s}.saga_executions "
            "(rare_status, seq) WHERE rare_status IS NOT NULL",
        ),
    ),
    (
        12,
        # byte order for the key columns (their indexes are rebuilt, the tables are not
        # rewritten): a database's default collation, C.UTF-8 say, compares text through
        # strcoll and a locale looked up at each compare, and the indexes a saga writes
        # compare these at every insert and look-up (-4% of the server's instructions a
        # saga). Every saga_id column changes with them: a column compared with a "C" one
        # is compared in "C", and an index of another collation could not serve it
        tuple(
            f"ALTER TABLE {{s}}.{table} "
            + ", ".join(f'ALTER COLUMN {column} TYPE text COLLATE "C"' for column in columns)
            for table, columns in KEY_COLUMNS.items()
        ),
    ),
    (13, recovery_columns("{s}.saga_executions", if_not_exists=True)),  # take_over_saga
    (
        14,
        (
            # the index by name holds the finished sagas only: a saga's insert takes no
            # entry in it, its finish (not HOT: it moves between the partial indexes) one.
            # list_sagas by name reads the active sagas along saga_executions_active (a
            # few at a time) and the finished ones along this index
            "DROP INDEX IF EXISTS {s}.saga_executions_by_name",
            "CREATE INDEX saga_executions_by_name ON {s}.saga_executions (saga_name, seq) "
            "WHERE finished_at IS NOT NULL",
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
            f"invalid PostgreSQL schema name {schema!r}: use letters, digits, '_', '-' or '$', "
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
