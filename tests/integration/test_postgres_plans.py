"""The PostgreSQL store's statements and indexes: the group statements look inbox keys up by
the primary key whatever plan the server caches (a generic plan made while the table is new,
never analyzed and taken for 10 pages, must not join the keys by a hash over a scan of the
whole inbox, a scan that grows with the table for as long as the plan stays cached); the
index by status leaves out the statuses every saga passes through (schema 8), and the list
by status still finds each through an index; the partial indexes on saga rows hold columns
derived from the status (schema 11), and every read and purge of saga rows still finds its
rows through its index."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
import pytest

from sagaz.clock import utcnow
from sagaz.exceptions import SchemaOutdatedError
from sagaz.records import SagaRecord, SchemaVersions
from sagaz.storage.postgres import PostgresSagaStore
from sagaz.storage.postgres_schema import DERIVED_COLUMNS, SCHEMA_VERSION, derived_values
from sagaz.types import SagaStatus
from tests.schema_support import rewind_schema
from tests.services import drop_postgres_schema, unique_name

_T = "'{820540800000000}'"  # an inbox completion's moment: 2026-01-01 in pg_micros


@pytest.fixture
async def store(postgres_dsn: str) -> AsyncIterator[PostgresSagaStore]:
    schema = unique_name("sagaz_plan")
    async with PostgresSagaStore(postgres_dsn, schema=schema) as store:
        try:
            yield store
        finally:
            await drop_postgres_schema(postgres_dsn, schema)


async def _generic_plan(dsn: str, sql: str, args: str) -> str:
    """The plan the server would cache for ``sql`` (run with the literals ``args``)."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        await conn.execute(f"PREPARE probe AS {sql}")
        rows = await conn.fetch(f"EXPLAIN EXECUTE probe({args})")
        return "\n".join(row[0] for row in rows)
    finally:
        await conn.close()


async def test_a_group_of_claims_and_completions_finds_inbox_rows_by_their_key(
    store: PostgresSagaStore, postgres_dsn: str
) -> None:
    # claims (an array of rows), then checkpoints that only complete inbox keys (3 arrays)
    sql = store._build_group_sql((True, False, False, (False, False, False, True, False)))
    claims = f"ARRAY[('t', 'k1', 's1', 'o', now(), now())]::\"{store.schema}\".inbox_claim[]"
    plan = await _generic_plan(postgres_dsn, sql, f"{claims}, '{{t}}', '{{k2}}', {_T}")
    assert "Seq Scan on inbox" not in plan, plan
    assert plan.count("Index Scan using inbox_pkey") == 2, plan  # the snapshot's, the completion's


async def test_a_group_of_event_claims_sent_as_keys_finds_inbox_rows_by_their_key(
    store: PostgresSagaStore, postgres_dsn: str
) -> None:
    # the events' claims as their keys beside their saga rows (one text[], one saga_row[])
    from sagaz.storage.postgres.group_statement import _KEYS

    sql = store._build_group_sql((False, False, _KEYS, None))
    sagas = (
        "ARRAY[('s1', 'order', 'pending', '{}', 0, NULL, 't', '{}', 'o', "
        f'820540800000000, 820540800000000, 820540800000000)]::"{store.schema}".saga_row[]'
    )
    plan = await _generic_plan(postgres_dsn, sql, f"'{{k1}}', {sagas}")
    assert "Seq Scan on inbox" not in plan, plan
    assert plan.count("Index Scan using inbox_pkey") == 1, plan  # the snapshot's


async def test_a_checkpoint_completing_its_inbox_key_finds_the_row_by_its_key(
    store: PostgresSagaStore, postgres_dsn: str
) -> None:
    sql = store._build_checkpoint_sql(False, False, False, True)
    plan = await _generic_plan(postgres_dsn, sql, f"'{{t}}', '{{k}}', {_T}")
    assert "Seq Scan on inbox" not in plan, plan
    assert "Index Scan using inbox_pkey" in plan, plan


_ACTIVE = ("saga_executions_active", "saga_executions_by_owner")  # both: pending, running
_RARE = ("saga_executions_by_rare_status",)


@pytest.mark.parametrize(
    ("status", "indexes"),
    [
        (SagaStatus.FAILED, _RARE),
        (SagaStatus.COMPENSATED, _RARE),
        (SagaStatus.CANCELLED, _RARE),
        (SagaStatus.COMPENSATING, _RARE),
        (SagaStatus.RUNNING, _ACTIVE),
        (SagaStatus.PENDING, _ACTIVE),
    ],
)
async def test_the_list_by_status_reads_a_partial_index_in_any_cached_plan(
    store: PostgresSagaStore, postgres_dsn: str, status: SagaStatus, indexes: tuple[str, ...]
) -> None:
    sql, params = store._list_sagas_sql(status, None, None, None, None, None, 100)
    plan = await _generic_plan(postgres_dsn, sql, ", ".join(str(p) for p in params))
    assert any(index in plan for index in indexes), plan
    assert "Seq Scan" not in plan, plan


async def test_a_version_7_schema_is_upgraded_to_index_the_rare_statuses_only(
    postgres_dsn: str,
) -> None:
    schema = unique_name("sagaz_v7")
    statuses = list(SagaStatus)
    try:
        async with PostgresSagaStore(postgres_dsn, schema=schema) as store:
            for n, status in enumerate(statuses):
                await store.save_saga(SagaRecord(f"s{n}", "order", status, {"n": n}))
        # as sagaz 7 left it: one index of every status
        await rewind_schema(store, 7, drop=[("INDEX", "saga_executions_by_rare_status")])
        conn = await asyncpg.connect(postgres_dsn)
        try:
            await conn.execute(
                f'CREATE INDEX saga_executions_by_status ON "{schema}".saga_executions '
                "(status, seq)"
            )
        finally:
            await conn.close()
        with pytest.raises(SchemaOutdatedError):
            await PostgresSagaStore(postgres_dsn, schema=schema).start()
        upgraded = PostgresSagaStore(postgres_dsn, schema=schema)
        assert await upgraded.upgrade_schema() == SchemaVersions(7, SCHEMA_VERSION)
        async with upgraded:
            for n, status in enumerate(statuses):
                assert [r.saga_id for r in await upgraded.list_sagas(status=status)] == [f"s{n}"]
        conn = await asyncpg.connect(postgres_dsn)
        try:
            indexes = dict(
                await conn.fetch(
                    "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = $1", schema
                )
            )
        finally:
            await conn.close()
        assert "saga_executions_by_status" not in indexes
        # since schema 11, by the column that holds the rare statuses only
        assert indexes["saga_executions_by_rare_status"].endswith(
            "(rare_status, seq) WHERE (rare_status IS NOT NULL)"
        )
    finally:
        await drop_postgres_schema(postgres_dsn, schema)


_T1 = "'2026-01-01T00:00:00+00:00'::timestamptz"


@pytest.fixture
async def filled(store: PostgresSagaStore, postgres_dsn: str) -> PostgresSagaStore:
    """``store`` holding 5,000 sagas, never analyzed: 98% finished, the newest half of those
    keeping their event, the rest active (owner ``w``)."""
    s = f'"{store.schema}"'
    conn = await asyncpg.connect(postgres_dsn)
    try:
        await conn.execute(f"ALTER TABLE {s}.saga_executions SET (autovacuum_enabled = false)")
        await conn.execute(
            f"INSERT INTO {s}.saga_executions (saga_id, saga_name, status, context, attempt, "
            f"event, owner, created_at, updated_at, {DERIVED_COLUMNS}) SELECT v.*, "
            + derived_values("v.status", "v.event", "v.updated_at")
            + " FROM (SELECT 's' || n, 'order', CASE WHEN n % 50 = 0 THEN 'running' "
            "ELSE 'completed' END AS status, '{}'::jsonb, 1, CASE WHEN n > 2500 THEN "
            "'{}'::jsonb END AS event, CASE WHEN n % 50 = 0 THEN 'w' END, now() - (5000 - n) "
            "* interval '1 s', now() - (5000 - n) * interval '1 s' AS updated_at "
            "FROM generate_series(1, 5000) AS n) AS v"
        )
    finally:
        await conn.close()
    return store


@pytest.mark.parametrize(
    ("statement", "args", "indexes"),
    [
        ("_recoverable_sql", f"{_T1}, 100", ("Index Scan using saga_executions_active",)),
        ("_renew_leases_sql", f"'w', {_T1}", ("Index Scan using saga_executions_by_owner",)),
        ("_purge_sagas_sql", f"{_T1}, 500, {_T1}", ("Index Scan using saga_executions_finished",)),
        # the events still kept: along their index, then each row by its key
        (
            "_purge_expired_sql",
            f"{_T1}, 1000",
            ("Index Scan using saga_executions_stored_events", "saga_executions_pkey"),
        ),
        (
            "list completed",
            "100",
            ("Index Scan Backward using saga_executions_seq_key",),
        ),
    ],
)
async def test_recovery_renewals_purges_and_lists_find_saga_rows_by_an_index_in_any_cached_plan(
    filled: PostgresSagaStore,
    postgres_dsn: str,
    statement: str,
    args: str,
    indexes: tuple[str, ...],
) -> None:
    if statement == "list completed":  # (most rows: along the sequence, newest first)
        sql = filled._list_sagas_sql(SagaStatus.COMPLETED, None, None, None, None, None, 1)[0]
    else:
        sql = getattr(filled, statement)
    plan = await _generic_plan(postgres_dsn, sql, args)
    assert all(index in plan for index in indexes), plan
    assert "Seq Scan on saga_executions" not in plan, plan


async def test_a_group_statement_is_planned_once_per_connection_however_small_its_groups(
    store: PostgresSagaStore,
) -> None:
    # groups of one event's claim, then of one checkpoint: the server's plan for an array
    # parameter counts 10 rows, a plan for one row's values is estimated cheaper, and in
    # the server's default mode it planned each such statement anew (~700 us of its CPU)
    for n in range(8):
        record = SagaRecord(
            f"s{n}", "order", SagaStatus.PENDING, {}, trigger_id="t", owner="w",
            lease_expires_at=utcnow() + timedelta(minutes=5),
        )  # fmt: skip
        await store.claim_event("t", f"k{n}", record)
        record.status = SagaStatus.RUNNING
        await store.save_checkpoint(record)
    kept = store._committer()._idle
    assert kept, "the committer keeps its connections between groups"
    plans = [
        (row["generic_plans"], row["custom_plans"])
        for conn in kept
        for row in await conn.fetch(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements "
            "WHERE statement LIKE 'WITH %'"
        )
    ]
    assert sum(generic for generic, _ in plans) >= 16, plans
    assert sum(custom for _, custom in plans) == 0, plans


_FINISHED_BY_NAME = ("saga_executions_by_name", "saga_executions_by_rare_status")
#: by status (none: every saga), the indexes a list by name reads (each: one of those)
_BY_NAME: dict[SagaStatus | None, tuple[tuple[str, ...], ...]] = {
    # the active ones along their index and the finished ones along the index by name
    None: (("saga_executions_active",), ("saga_executions_by_name",)),
    SagaStatus.COMPLETED: (("saga_executions_by_name",),),
    SagaStatus.FAILED: (_FINISHED_BY_NAME,),
    SagaStatus.RUNNING: (_ACTIVE,),
}


async def test_the_list_by_name_reads_the_active_and_the_finished_sagas_by_an_index(
    filled: PostgresSagaStore, postgres_dsn: str
) -> None:
    # schema 14: the index by name holds the finished sagas only
    statements = {
        status: filled._list_sagas_sql(status, "order", None, None, None, None, 100)[0]
        for status in _BY_NAME
    }
    for status, sql in statements.items():
        plan = await _generic_plan(postgres_dsn, sql, "'order', 100")
        assert all(any(index in plan for index in one) for one in _BY_NAME[status]), plan
        assert "Seq Scan" not in plan, plan
    conn = await asyncpg.connect(postgres_dsn)
    try:  # analyzed: a name that every saga has may be walked along seq instead
        await conn.execute(f'ANALYZE "{filled.schema}".saga_executions')
    finally:
        await conn.close()
    for sql in statements.values():
        plan = await _generic_plan(postgres_dsn, sql, "'order', 100")
        assert "Seq Scan" not in plan, plan
