"""The SQLite store's indexes on saga rows (schema 8): their conditions name the statuses with
``OR``, which SQLite checks with comparisons (an ``IN`` list of three values or more is an
ephemeral table every write of a saga row built again), the index by status leaves out the
statuses every saga passes through, and each reading statement still walks an index, in
order, on 12,000 sagas (``EXPLAIN QUERY PLAN``, the parameters unbound as when prepared)."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sagaz.exceptions import SchemaOutdatedError
from sagaz.records import SagaRecord, SchemaVersions
from sagaz.storage import sqlite_schema as tables
from sagaz.storage.sqlite import SQLiteSagaStore
from sagaz.storage.sqlite.inbox import _RENEW_SAGAS
from sagaz.storage.sqlite.retention import _CLEAR_EVENTS, _FINISHED
from sagaz.storage.sqlite.sagas import _RECOVERABLE, _UPDATE_SAGA, _UPSERT_SAGA, _list_sagas_sql
from sagaz.types import SagaStatus
from tests.schema_support import rewind_schema

_OLD = tuple(
    f"saga_executions_{name}"
    for name in ("by_status", "active", "by_owner", "stored_events", "finished")
)
_NOW = "2026-01-01T00:00:00.000000+00:00"


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    """The store's schema holding 12,000 sagas, nearly all completed."""
    path = str(tmp_path / "plans.db")
    conn = tables.open_database(path, 5_000, url=f"sqlite:///{path}")
    statuses = [s.value for s in SagaStatus if s != SagaStatus.COMPLETED]
    rows = []
    for n in range(12_000):
        status = statuses[n % len(statuses)] if n % 50 == 0 else SagaStatus.COMPLETED.value
        owner = "worker" if status in ("pending", "running") else None
        rows.append((uuid.uuid4().hex, f"saga{n % 3}", status, "{}", 1, None, "t", "{}", owner))
    conn.execute("BEGIN")
    conn.executemany(
        f"INSERT INTO saga_executions ({tables.SAGA_COLUMNS}) "
        f"VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, '{_NOW}', '{_NOW}')",
        rows,
    )
    conn.execute("COMMIT")
    try:
        yield conn
    finally:
        conn.close()


def _plan(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> str:
    return "\n".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params))


@pytest.mark.parametrize(
    ("status", "walk"),
    [
        (SagaStatus.PENDING, "SCAN saga_executions USING INDEX saga_executions_active"),
        (SagaStatus.RUNNING, "SCAN saga_executions USING INDEX saga_executions_active"),
        (SagaStatus.COMPENSATING, "USING INDEX saga_executions_by_rare_status (status=?)"),
        (SagaStatus.FAILED, "USING INDEX saga_executions_by_rare_status (status=?)"),
        (SagaStatus.COMPENSATED, "USING INDEX saga_executions_by_rare_status (status=?)"),
        (SagaStatus.CANCELLED, "USING INDEX saga_executions_by_rare_status (status=?)"),
        (SagaStatus.COMPLETED, "SCAN saga_executions"),  # seq backwards, no index
    ],
)
def test_the_list_by_status_walks_an_index_newest_first(
    conn: sqlite3.Connection, status: SagaStatus, walk: str
) -> None:
    plan = _plan(conn, *_list_sagas_sql(status, {}, 100))
    assert plan == walk or plan.endswith(walk), plan
    assert "TEMP B-TREE" not in plan, plan


def test_the_list_by_status_and_creation_time_walks_the_same_index(
    conn: sqlite3.Connection,
) -> None:  # the dashboard's chart: completed and failed sagas of the last hour
    conditions: dict[str, str | None] = {"created_at >= ?": _NOW}
    plan = _plan(conn, *_list_sagas_sql(SagaStatus.FAILED, conditions, 1000))
    assert "saga_executions_by_rare_status (status=?)" in plan, plan
    plan = _plan(conn, *_list_sagas_sql(SagaStatus.COMPLETED, conditions, 1000))
    assert plan == "SCAN saga_executions", plan


@pytest.mark.parametrize(
    ("sql", "params", "index"),
    [
        (_RECOVERABLE, (_NOW, 100), "SCAN saga_executions USING INDEX saga_executions_active"),
        (_RENEW_SAGAS, (_NOW, "worker"), "saga_executions_by_owner (owner=?)"),
        (_FINISHED, (_NOW, _NOW, 500), "SEARCH e USING INDEX saga_executions_finished"),
        (_CLEAR_EVENTS, (_NOW, 1000), "saga_executions_stored_events (updated_at<?)"),
    ],
    ids=["recovery", "renew_leases", "purge_sagas", "purge_expired_events"],
)
def test_recovery_leases_and_purges_read_the_partial_indexes_in_order(
    conn: sqlite3.Connection, sql: str, params: tuple[Any, ...], index: str
) -> None:
    plan = _plan(conn, sql, params)
    assert index in plan, plan
    assert "TEMP B-TREE" not in plan, plan


def test_a_saga_row_update_checks_the_index_conditions_without_ephemeral_tables(
    conn: sqlite3.Connection,
) -> None:
    # OpenEphemeral is an IN list's table: these statements need no other
    for sql, count in ((_UPDATE_SAGA, 11), (_UPSERT_SAGA, 12)):
        program = conn.execute(f"EXPLAIN {sql}", (None,) * count).fetchall()
        assert not [op for op in program if op[1] == "OpenEphemeral"], sql


def test_a_saga_row_update_leaves_the_index_by_name_alone(conn: sqlite3.Connection) -> None:
    # a column the update sets is a rewrite of every index holding it (the entry deleted and
    # inserted again): the usual checkpoint must not set saga_name, which does not change
    [(by_name,)] = conn.execute(
        "SELECT rootpage FROM sqlite_master WHERE name = 'saga_executions_by_name'"
    ).fetchall()
    [(by_owner,)] = conn.execute(
        "SELECT rootpage FROM sqlite_master WHERE name = 'saga_executions_by_owner'"
    ).fetchall()
    program = conn.execute(f"EXPLAIN {_UPDATE_SAGA}", (None,) * 11).fetchall()
    written = {op[3] for op in program if op[1] == "OpenWrite"}  # (addr, opcode, p1, p2...)
    assert by_owner in written  # the check sees the indexes the update writes
    assert by_name not in written


async def test_a_version_7_database_is_upgraded_to_the_or_conditions(tmp_path: Path) -> None:
    path = tmp_path / "sagaz.db"
    statuses = list(SagaStatus)
    async with SQLiteSagaStore(path) as store:
        for n, status in enumerate(statuses):
            await store.save_saga(SagaRecord(f"s{n}", "order", status, {"n": n}))
    # as sagaz 7 left it: an index of every status, the partial ones with IN lists
    await rewind_schema(store, 7, drop=[("INDEX", "saga_executions_by_rare_status")])
    old = sqlite3.connect(path)
    try:
        for name in _OLD[1:]:
            old.execute(f"DROP INDEX {name}")
        for _, statements in tables.MIGRATIONS[:-1]:
            for statement in (s.replace("IF NOT EXISTS ", "") for s in statements):
                if any(f"CREATE INDEX {name} " in statement for name in _OLD):
                    old.execute(statement.replace("INDEX ", "INDEX IF NOT EXISTS ", 1))
        old.commit()
        assert old.execute(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND sql LIKE '%status IN%'"
        ).fetchone() == (4,)
    finally:
        old.close()
    with pytest.raises(SchemaOutdatedError):
        await SQLiteSagaStore(path).start()
    upgraded = SQLiteSagaStore(path)
    assert await upgraded.upgrade_schema() == SchemaVersions(7, tables.SCHEMA_VERSION)
    async with upgraded:
        for n, status in enumerate(statuses):
            assert [r.saga_id for r in await upgraded.list_sagas(status=status)] == [f"s{n}"]
    new = sqlite3.connect(path)
    try:
        indexes = dict(
            new.execute(
                "SELECT name, sql FROM sqlite_master WHERE type = 'index' "
                "AND tbl_name = 'saga_executions' AND sql IS NOT NULL"
            ).fetchall()
        )
    finally:
        new.close()
    assert "saga_executions_by_status" not in indexes
    assert not [sql for sql in indexes.values() if "status IN" in sql], indexes
    assert indexes["saga_executions_by_rare_status"].endswith(
        "WHERE (status = 'cancelled' OR status = 'compensated' OR status = 'compensating' "
        "OR status = 'failed')"
    )
