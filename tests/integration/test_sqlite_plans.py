"""The SQLite store's indexes on saga rows (schema 8): their conditions name the statuses with
``OR``, which SQLite checks with comparisons (an ``IN`` list of three values or more is an
ephemeral table every write of a saga row built again), the index by status leaves out the
statuses every saga passes through, and each reading statement still walks an index, in
order, on 12,000 sagas (``EXPLAIN QUERY PLAN``, the parameters unbound as when prepared)."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sagaz.exceptions import SchemaOutdatedError
from sagaz.records import SagaRecord, SchemaVersions
from sagaz.storage import sqlite_schema as tables
from sagaz.storage.codec import from_text
from sagaz.storage.sqlite import SQLiteSagaStore, batches
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
_LATER = "2026-01-01T00:01:00.000000+00:00"


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
        (_RENEW_SAGAS, (_NOW, "worker"), "SCAN saga_executions USING INDEX saga_executions_active"),
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
    [(active,)] = conn.execute(
        "SELECT rootpage FROM sqlite_master WHERE name = 'saga_executions_active'"
    ).fetchall()
    program = conn.execute(f"EXPLAIN {_UPDATE_SAGA}", (None,) * 11).fetchall()
    written = {op[3] for op in program if op[1] == "OpenWrite"}  # (addr, opcode, p1, p2...)
    assert active in written  # the check sees the indexes the update writes
    assert by_name not in written


def _written_indexes(conn: sqlite3.Connection, sql: str, count: int) -> set[str]:
    """The indexes on saga rows that ``sql`` (``count`` parameters) opens for writing."""
    roots = dict(
        conn.execute(
            "SELECT rootpage, name FROM sqlite_master WHERE type = 'index' "
            "AND tbl_name = 'saga_executions'"
        ).fetchall()
    )
    program = conn.execute(f"EXPLAIN {sql}", (None,) * count).fetchall()
    return {roots[op[3]] for op in program if op[1] == "OpenWrite" and op[3] in roots}


def _saga_indexes(path: Path) -> dict[str, str]:
    """The statements of the indexes on ``saga_executions`` in the file ``path``, by name."""
    conn = sqlite3.connect(path)
    try:
        return dict(
            conn.execute(
                "SELECT name, sql FROM sqlite_master WHERE type = 'index' "
                "AND tbl_name = 'saga_executions' AND sql IS NOT NULL"
            ).fetchall()
        )
    finally:
        conn.close()


def test_a_saga_row_update_rewrites_one_index_of_active_sagas(conn: sqlite3.Connection) -> None:
    # every checkpoint sets the status, so SQLite rewrites each partial index on the active
    # statuses (its entry deleted and inserted again, even from pending to running): since
    # schema 10 there is one, which also carries the owner that renew_leases looks for
    active = {
        name
        for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND sql LIKE ?",
            (f"%{tables.ACTIVE_WHERE}",),
        )
    }
    assert active == {"saga_executions_active"}
    for sql, count in ((_UPDATE_SAGA, 11), (_UPSERT_SAGA, 12)):
        assert _written_indexes(conn, sql, count) & active == {"saga_executions_active"}


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
            old.execute(f"DROP INDEX IF EXISTS {name}")  # by_owner: none since schema 10
        for version, statements in tables.MIGRATIONS:
            if version > 7:
                break
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
    indexes = _saga_indexes(path)
    assert "saga_executions_by_status" not in indexes
    assert not [sql for sql in indexes.values() if "status IN" in sql], indexes
    assert indexes["saga_executions_by_rare_status"].endswith(
        "WHERE (status = 'cancelled' OR status = 'compensated' OR status = 'compensating' "
        "OR status = 'failed')"
    )


async def test_a_version_9_database_is_upgraded_to_one_index_of_active_sagas(
    tmp_path: Path,
) -> None:
    path = tmp_path / "sagaz.db"
    old = sqlite3.connect(path, isolation_level=None)
    try:  # as sagaz 9 left it: saga_executions_active (seq) and _by_owner (owner)
        old.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at)")
        for version, statements in tables.MIGRATIONS:
            if version > 9:
                break
            for statement in statements:
                old.execute(statement)
            old.execute("INSERT INTO schema_version VALUES (?, '')", (version,))
        for saga_id, status, owner, lease in (
            ("a1", "pending", "w1", _NOW),
            ("b1", "running", "w2", _NOW),
            ("a2", "running", "w1", "2999-01-01T00:00:00.000000Z"),
            ("a3", "completed", "w1", _NOW),
        ):
            old.execute(
                f"INSERT INTO saga_executions ({tables.SAGA_COLUMNS}) "
                f"VALUES (?, 'order', ?, '{{}}', 1, NULL, 't', NULL, ?, ?, '{_NOW}', '{_NOW}')",
                (saga_id, status, owner, lease),
            )
    finally:
        old.close()
    with pytest.raises(SchemaOutdatedError):
        await SQLiteSagaStore(path).start()
    upgraded = SQLiteSagaStore(path)
    assert await upgraded.upgrade_schema() == SchemaVersions(9, tables.SCHEMA_VERSION)
    indexes = _saga_indexes(path)
    assert "saga_executions_by_owner" not in indexes
    assert "(seq, owner) WHERE" in indexes["saga_executions_active"]
    async with upgraded:
        # the rows kept: recovery walks the active ones in order, the lists find them
        assert [r.saga_id for r in await upgraded.list_recoverable(from_text(_LATER))] == [
            "a1",
            "b1",
        ]
        assert [r.saga_id for r in await upgraded.list_sagas(status=SagaStatus.RUNNING)] == [
            "a2",
            "b1",
        ]
        assert await upgraded.renew_leases("w1", from_text(_LATER)) == 2  # a1, a2
        renewed = {r.saga_id: r.lease_expires_at for r in await upgraded.list_sagas()}
        assert renewed == {
            "a1": from_text(_LATER),
            "a2": from_text(_LATER),
            "b1": from_text(_NOW),
            "a3": from_text(_NOW),
        }


@pytest.mark.parametrize(
    ("sql", "width"),
    [
        (batches._claims_sql, 6),
        (batches._sagas_sql, 12),
        (batches._saves_sql, 12),
        (batches._steps_sql, 9),
    ],
)
def test_the_rows_of_a_group_are_written_without_temporary_tables(
    conn: sqlite3.Connection, sql: Callable[[int], str], width: int
) -> None:
    # the values go through a co-routine, row by row: a FROM (VALUES ...) the planner
    # materialises is an ephemeral table per statement (about 60,000 instructions)
    program = conn.execute(f"EXPLAIN {sql(8)}", (None,) * (8 * width)).fetchall()
    assert not [op for op in program if op[1] == "OpenEphemeral"], sql(8)
    plan = _plan(conn, sql(8), (None,) * (8 * width))
    assert "SCAN saga_executions" not in plan and "SCAN inbox" not in plan, plan


def test_the_inbox_rows_a_group_completes_are_sought_by_key(conn: sqlite3.Connection) -> None:
    plan = _plan(conn, batches._completions_sql(8), (None,) * 17)
    assert "MULTI-INDEX OR" in plan, plan
    assert plan.count("INDEX inbox_by_key (trigger_id=? AND key=?)") == 8, plan
