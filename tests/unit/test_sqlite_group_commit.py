"""SQLite group commit: concurrent writes share COMMITs, yet each is atomic and durable alone."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from sagaz.exceptions import StoreError
from sagaz.records import SagaRecord, StepRecord
from sagaz.storage.sqlite import SQLiteSagaStore
from sagaz.types import SagaStatus, StepStatus


def record(n: int) -> SagaRecord:
    return SagaRecord(str(n), "orders", SagaStatus.RUNNING, {"n": n})


def tables_insert_saga(saga_id: str) -> str:
    """An INSERT of a minimal saga row, as an operation would run it."""
    return (
        "INSERT INTO saga_executions (saga_id, saga_name, status, context, attempt, "
        f"created_at, updated_at) VALUES ('{saga_id}', 'orders', 'running', '{{}}', 0, "
        "'2026-01-01T00:00:00+00:00', '2026-01-01T00:00:00+00:00')"
    )


def committed_sagas(path: Path) -> set[str]:
    """What another connection (another process) sees in the file."""
    with sqlite3.connect(path) as conn:
        return {row[0] for row in conn.execute("SELECT saga_id FROM saga_executions")}


async def test_every_write_is_committed_when_it_returns(tmp_path: Path) -> None:
    path = tmp_path / "sagaz.db"
    async with SQLiteSagaStore(path) as store:
        seen_on_return: list[bool] = []

        async def write(n: int) -> None:
            await store.create_saga(record(n))
            seen_on_return.append(str(n) in committed_sagas(path))

        await asyncio.gather(*(write(n) for n in range(200)))
        assert seen_on_return == [True] * 200


async def test_concurrent_writes_share_commits(tmp_path: Path) -> None:
    path = tmp_path / "sagaz.db"
    statements: list[str] = []
    async with SQLiteSagaStore(path) as store:
        await store._write(lambda conn: conn.set_trace_callback(statements.append))
        statements.clear()
        await asyncio.gather(*(store.create_saga(record(n)) for n in range(200)))
        await store._write(lambda conn: conn.set_trace_callback(None))
    assert committed_sagas(path) == {str(n) for n in range(200)}
    assert 1 <= statements.count("COMMIT") < 50  # one per operation without grouping


async def test_a_failing_operation_undoes_only_itself(tmp_path: Path) -> None:
    path = tmp_path / "sagaz.db"
    statements: list[str] = []

    def broken(conn: sqlite3.Connection) -> None:
        conn.execute(
            "INSERT INTO saga_steps (saga_id, name, status, attempts, updated_at) "
            "VALUES ('x', 'half', 'running', 1, '2026-01-01T00:00:00+00:00')"
        )
        conn.execute("INSERT INTO no_such_table VALUES (1)")

    async with SQLiteSagaStore(path) as store:
        await store._write(lambda conn: conn.set_trace_callback(statements.append))
        statements.clear()
        results = await asyncio.gather(
            *(store.create_saga(record(n)) for n in range(20)),
            store._write(broken),
            *(store.create_saga(record(n)) for n in range(20, 40)),
            return_exceptions=True,
        )
        assert statements.count("COMMIT") == 1  # all 41 in one group
        errors = [r for r in results if isinstance(r, BaseException)]
        assert len(errors) == 1 and isinstance(errors[0], StoreError)
        assert "no such table" in str(errors[0])
        assert await store.get_steps("x") == []  # its first statement was undone too
        await store.save_step(StepRecord("1", "pay", StepStatus.COMPLETED, result={}))
    assert committed_sagas(path) == {str(n) for n in range(40)}


async def test_a_lost_transaction_fails_every_operation_of_its_group(tmp_path: Path) -> None:
    path = tmp_path / "sagaz.db"

    def rollback_all(conn: sqlite3.Connection) -> None:
        conn.execute("ROLLBACK")  # ends the group's transaction, savepoints and all

    async with SQLiteSagaStore(path) as store:
        results = await asyncio.gather(
            *(store.create_saga(record(n)) for n in range(10)),
            store._write(rollback_all),
            *(store.create_saga(record(n)) for n in range(10, 20)),
            return_exceptions=True,
        )
        assert len(results) == 21
        for result in results:
            assert isinstance(result, StoreError)
            assert "the transaction was lost" in str(result)
        assert committed_sagas(path) == set()
        await store.create_saga(record(99))  # the next group starts afresh
    assert committed_sagas(path) == {"99"}


async def test_a_cancelled_operation_is_dropped_while_queued_and_completes_once_running(
    tmp_path: Path,
) -> None:
    path = tmp_path / "sagaz.db"
    async with SQLiteSagaStore(path) as store:
        groups = store._committer()
        other = sqlite3.connect(path, isolation_level=None)  # another process writing
        try:
            other.execute("BEGIN IMMEDIATE")
            running = asyncio.create_task(store.create_saga(record(1)))
            # its group finds the file busy and waits for the lock in the store's thread
            await until(lambda: groups._in_thread is not None)
            queued = asyncio.create_task(store.create_saga(record(2)))
            await asyncio.sleep(0)  # queued behind the running group
            queued.cancel()
            running.cancel()  # already running: it completes, its result is discarded
            other.execute("ROLLBACK")
        finally:
            other.close()
        for task in (queued, running):
            with pytest.raises(asyncio.CancelledError):
                await task
        await store.create_saga(record(3))
    assert committed_sagas(path) == {"1", "3"}  # saga 2 was never written


async def until(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` until it holds (5 s at most)."""
    async with asyncio.timeout(5):
        while not condition():
            await asyncio.sleep(0.001)


async def test_reads_do_not_take_the_write_lock(tmp_path: Path) -> None:
    path = tmp_path / "sagaz.db"
    async with SQLiteSagaStore(path, busy_timeout=0.1) as store:
        await store.create_saga(record(1))
        other = sqlite3.connect(path, isolation_level=None)  # another process writing
        try:
            other.execute("BEGIN IMMEDIATE")
            assert await store.get_saga("1") is not None
            with pytest.raises(StoreError, match="busy_timeout"):
                await store.create_saga(record(2))
            other.execute("ROLLBACK")
        finally:
            other.close()
        await store.create_saga(record(2))
    assert committed_sagas(path) == {"1", "2"}


async def test_stop_commits_the_queued_operations(tmp_path: Path) -> None:
    path = tmp_path / "sagaz.db"
    store = SQLiteSagaStore(path)
    await store.start()
    writes = [asyncio.create_task(store.create_saga(record(n))) for n in range(10)]
    await asyncio.sleep(0)  # all ten queued
    await store.stop()
    assert all(w.done() and w.exception() is None for w in writes)
    assert committed_sagas(path) == {str(n) for n in range(10)}
    with pytest.raises(StoreError, match="not started"):
        await store.get_saga("0")
    with pytest.raises(StoreError, match="not started"):
        await store.create_saga(record(10))
    await store.stop()  # idempotent
