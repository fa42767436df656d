"""SQLite group commit: concurrent writes share COMMITs, yet each is atomic and durable alone."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from sagaz.exceptions import StoreError
from sagaz.records import SagaRecord, StepRecord
from sagaz.storage.sqlite import SQLiteSagaStore
from sagaz.types import SagaStatus, StepStatus


def record(n: int) -> SagaRecord:
    return SagaRecord(str(n), "orders", SagaStatus.RUNNING, {"n": n})


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
    commits = 0
    async with SQLiteSagaStore(path) as store:
        conn = store._connection()
        original = conn.execute

        def counting(sql: str, *args: object) -> object:
            nonlocal commits
            commits += sql == "COMMIT"
            return original(sql, *args)

        conn.execute = counting  # type: ignore[method-assign]
        await asyncio.gather(*(store.create_saga(record(n)) for n in range(200)))
        conn.execute = original  # type: ignore[method-assign]
    assert committed_sagas(path) == {str(n) for n in range(200)}
    assert commits < 50  # one per operation without grouping


async def test_a_failing_operation_undoes_only_itself(tmp_path: Path) -> None:
    path = tmp_path / "sagaz.db"
    async with SQLiteSagaStore(path) as store:

        async def broken() -> None:
            async with store._transaction() as conn:
                await conn.execute(
                    "INSERT INTO saga_steps (saga_id, name, status, attempts, updated_at) "
                    "VALUES ('x', 'half', 'running', 1, '2026-01-01T00:00:00+00:00')"
                )
                await conn.execute("INSERT INTO no_such_table VALUES (1)")

        results = await asyncio.gather(
            *(store.create_saga(record(n)) for n in range(20)),
            broken(),
            *(store.create_saga(record(n)) for n in range(20, 40)),
            return_exceptions=True,
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        assert len(errors) == 1 and isinstance(errors[0], StoreError)
        assert await store.get_steps("x") == []  # its first statement was undone too
        await store.save_step(StepRecord("1", "pay", StepStatus.COMPLETED, result={}))
    assert committed_sagas(path) == {str(n) for n in range(40)}


async def test_stop_commits_the_open_group(tmp_path: Path) -> None:
    path = tmp_path / "sagaz.db"
    store = SQLiteSagaStore(path)
    await store.start()
    writes = [asyncio.create_task(store.create_saga(record(n))) for n in range(10)]
    await asyncio.sleep(0)
    await store.stop()
    await asyncio.gather(*writes, return_exceptions=True)
    done = {str(n) for n, w in enumerate(writes) if w.exception() is None}
    assert done <= committed_sagas(path)
    with pytest.raises(StoreError, match="not started"):
        await store.get_saga("0")
