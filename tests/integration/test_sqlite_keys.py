"""The SQLite store's keys in arrival order (schema 9): a saga's steps are keyed by its row's
``seq`` (0 while it has no row), the inbox is a rowid table with its key as a unique index,
and a version 8 database is upgraded with every row kept."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

import pytest

from sagaz.clock import utcnow
from sagaz.exceptions import SchemaOutdatedError
from sagaz.records import ClaimOutcome, SagaRecord, SchemaVersions, StepRecord
from sagaz.storage import sqlite_schema as tables
from sagaz.storage.sqlite import SQLiteSagaStore, retention, sagas
from sagaz.types import SagaStatus, StepStatus
from tests.contract.store_backends import from_now

_OLD = "2026-01-01T00:00:00.000000+00:00"
_LEASE = "2999-01-01T00:00:00.000000+00:00"  # a live lease
_STEP_KEY = "SEARCH saga_steps USING PRIMARY KEY (saga_seq=? AND saga_id=?)"


def _rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def _version_8(path: Path) -> None:
    """A database as sagaz 8 left it: two sagas, steps of one of them and of a saga with no
    row, a pending inbox row (leased) and a completed one."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at)")
        for version, statements in tables.MIGRATIONS:
            if version > 8:
                break
            for statement in statements:
                conn.execute(statement)
            conn.execute("INSERT INTO schema_version VALUES (?, '')", (version,))
        for saga_id, status in (("s1", "running"), ("s2", "completed")):
            conn.execute(
                f"INSERT INTO saga_executions ({tables.SAGA_COLUMNS}) "
                "VALUES (?, 'order', ?, '{}', 1, NULL, 't', NULL, NULL, NULL, ?, ?)",
                (saga_id, status, _OLD, _OLD),
            )
        for saga_id, name, status, result in (
            ("s1", "reserve", "completed", '{"sku": "x"}'),
            ("s1", "charge", "running", None),
            ("orphan", "reserve", "failed", None),
        ):
            conn.execute(
                f"INSERT INTO saga_steps ({tables.STEP_COLUMNS}) "
                "VALUES (?, ?, ?, ?, NULL, 1, NULL, NULL, ?)",
                (saga_id, name, status, result, _OLD),
            )
        conn.execute(
            "INSERT INTO inbox (trigger_id, key, saga_id, owner, lease_until, status, "
            "created_at) VALUES ('t', 'k1', 's1', 'w1', ?, 'pending', ?)",
            (_LEASE, _OLD),
        )
        conn.execute(
            "INSERT INTO inbox (trigger_id, key, saga_id, owner, lease_until, status, "
            "created_at, completed_at) VALUES ('t', 'k2', 's2', 'w1', ?, 'completed', ?, ?)",
            (_OLD, _OLD, _OLD),
        )
    finally:
        conn.close()


async def test_a_version_8_database_is_upgraded_with_its_steps_and_inbox_rows(
    tmp_path: Path,
) -> None:
    path = tmp_path / "sagaz.db"
    _version_8(path)
    with pytest.raises(SchemaOutdatedError):
        await SQLiteSagaStore(path).start()
    store = SQLiteSagaStore(path)
    assert await store.upgrade_schema() == SchemaVersions(8, tables.SCHEMA_VERSION)
    assert _rows(path, "SELECT saga_seq, saga_id, name FROM saga_steps") == [
        (0, "orphan", "reserve"),  # no saga row: keyed by 0
        (1, "s1", "charge"),
        (1, "s1", "reserve"),
    ]
    async with store:
        steps = {s.name: s for s in await store.get_steps("s1")}
        assert {n: (s.status, s.result) for n, s in steps.items()} == {
            "reserve": (StepStatus.COMPLETED, {"sku": "x"}),
            "charge": (StepStatus.RUNNING, None),
        }
        assert [s.status for s in await store.get_steps("orphan")] == [StepStatus.FAILED]
        await store.save_step(StepRecord("s1", "charge", StepStatus.COMPLETED))
        steps = {s.name: s.status for s in await store.get_steps("s1")}
        assert steps == {"reserve": StepStatus.COMPLETED, "charge": StepStatus.COMPLETED}

        # the inbox rows keep their claims: k1 leased to w1, k2 completed
        busy = await store.claim_inbox("t", "k1", "s1", "w2", from_now())
        assert (busy.outcome, busy.owner) == (ClaimOutcome.BUSY, "w1")
        duplicate = await store.claim_inbox("t", "k2", "x", "w2", from_now())
        assert (duplicate.outcome, duplicate.saga_id) == (ClaimOutcome.DUPLICATE, "s2")
        assert (await store.claim_inbox("t", "k3", "s3", "w2", from_now())).outcome == (
            ClaimOutcome.CLAIMED
        )
        await store.complete_inbox("t", "k1")
        assert (await store.claim_inbox("t", "k1", "s1", "w2", from_now())).outcome == (
            ClaimOutcome.DUPLICATE
        )
        assert await store.purge_expired(utcnow()) >= 2  # k1 and k2: completed before now
    assert _rows(path, "SELECT key FROM inbox ORDER BY id") == [("k3",)]
    indexes = _rows(path, "SELECT name FROM sqlite_master WHERE tbl_name = 'inbox'")
    assert sorted(name for (name,) in indexes) == [
        "inbox",
        "inbox_by_key",
        "inbox_completed",
        "inbox_pending_by_owner",
    ]


async def test_steps_and_inbox_rows_are_stored_in_arrival_order(tmp_path: Path) -> None:
    path = tmp_path / "sagaz.db"
    keys = [uuid.uuid4().hex for _ in range(20)]  # random, as saga ids and event keys are
    async with SQLiteSagaStore(path) as store:
        for key in keys:
            record = SagaRecord(
                key, "order", SagaStatus.PENDING, {}, owner="w", lease_expires_at=from_now()
            )
            assert (await store.claim_event("t", key, record)).created
            running = SagaRecord(key, "order", SagaStatus.RUNNING, {}, owner="w")
            await store.save_checkpoint(running, [StepRecord(key, "pay", StepStatus.RUNNING)])
        for key in keys:
            done = SagaRecord(key, "order", SagaStatus.COMPLETED, {})
            await store.save_checkpoint(
                done, [StepRecord(key, "pay", StepStatus.COMPLETED)], complete_inbox=("t", key)
            )
    # the table's own order (its key), not the ids' order
    assert [row[0] for row in _rows(path, "SELECT saga_id FROM saga_steps")] == keys
    assert [row[0] for row in _rows(path, "SELECT key FROM inbox ORDER BY rowid")] == keys


async def test_steps_saved_before_their_saga_row_give_way_to_later_saves(tmp_path: Path) -> None:
    path = tmp_path / "sagaz.db"
    async with SQLiteSagaStore(path) as store:
        await store.save_step(StepRecord("s1", "reserve", StepStatus.RUNNING))
        await store.save_step(StepRecord("s1", "charge", StepStatus.RUNNING))
        await store.create_saga(SagaRecord("s1", "order", SagaStatus.RUNNING, {}))
        await store.save_step(StepRecord("s1", "reserve", StepStatus.COMPLETED, result={"a": 1}))
        assert _rows(path, "SELECT saga_seq, name FROM saga_steps") == [
            (0, "charge"),
            (0, "reserve"),
            (1, "reserve"),
        ]
        steps = {s.name: (s.status, s.result) for s in await store.get_steps("s1")}
        assert steps == {
            "reserve": (StepStatus.COMPLETED, {"a": 1}),  # the newer, keyed by the saga's seq
            "charge": (StepStatus.RUNNING, None),
        }
        await store.delete_steps("s1", ["reserve"])
        assert [s.name for s in await store.get_steps("s1")] == ["charge"]
        await store.save_step(StepRecord("s1", "reserve", StepStatus.COMPLETED))
        await store.reset_steps("s1")
        assert await store.get_steps("s1") == []

        await store.save_step(StepRecord("s1", "reserve", StepStatus.COMPLETED))
        await store.save_step(StepRecord("s2", "reserve", StepStatus.COMPLETED))  # no row yet
        await store.save_saga(SagaRecord("s2", "order", SagaStatus.COMPLETED, {}))
        await store.save_step(StepRecord("s2", "charge", StepStatus.COMPLETED))
        await store.save_saga(SagaRecord("s1", "order", SagaStatus.COMPLETED, {}))
        await store.delete_saga("s1")
        assert await store.purge_sagas(from_now()) == 1  # s2, with both of its steps
        assert await store.get_steps("s1") == await store.get_steps("s2") == []
    assert _rows(path, "SELECT saga_id FROM saga_steps") == []


@pytest.mark.parametrize(
    ("sql", "count", "search"),
    [
        (sagas._INSERT_STEP, 9, "saga_executions USING COVERING INDEX sqlite_autoindex"),
        (f"SELECT * FROM saga_steps WHERE {tables.STEPS_OF}", 1, _STEP_KEY),
        (sagas._DELETE_STEPS, 1, _STEP_KEY),
        (retention._STEPS_OF_SAGAS[0].format(marks="?, ?"), 2, "saga_steps USING PRIMARY KEY"),
        (retention._STEPS_OF_SAGAS[1].format(marks="?, ?"), 2, _STEP_KEY),
        (sagas._COMPLETE_INBOX, 3, "inbox USING INDEX inbox_by_key (trigger_id=? AND key=?)"),
    ],
    ids=["save_step", "get_steps", "reset_steps", "purge_steps", "purge_keyless", "inbox"],
)
def test_steps_and_inbox_rows_are_found_by_their_keys(
    tmp_path: Path, sql: str, count: int, search: str
) -> None:
    path = str(tmp_path / "plans.db")
    conn = tables.open_database(path, 5_000, url=f"sqlite:///{path}")
    try:
        rows = conn.execute(f"EXPLAIN QUERY PLAN {sql}", (None,) * count).fetchall()
    finally:
        conn.close()
    plan = "\n".join(row[3] for row in rows)
    assert search in plan, plan
    assert "SCAN" not in plan, plan
