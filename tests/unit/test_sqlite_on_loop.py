"""The SQLite store runs its groups on the event loop's thread: writes go on while other tasks
keep the loop busy, a file another process holds never blocks the loop, and the WAL is
checkpointed and starts over."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from sagaz.exceptions import StoreError
from sagaz.records import SagaRecord
from sagaz.storage.sqlite import SQLiteSagaStore
from sagaz.storage.sqlite_groups import GroupCommitter
from sagaz.types import SagaStatus
from tests.busy_loop import busy_loop


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, timeout=5, check_same_thread=False)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA wal_autocheckpoint = 50")  # SQLite's default: 1,000 pages
    conn.execute("CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY)")
    return conn


def insert(key: str) -> Any:
    return lambda conn: conn.execute("INSERT INTO t VALUES (?)", (key,)).rowcount


@pytest.fixture
async def groups(tmp_path: Path) -> AsyncIterator[GroupCommitter]:
    committer = await GroupCommitter.open(
        lambda: connect(tmp_path / "wal.db"),
        error=lambda exc: StoreError(f"test store: {exc}"),
        label="test store",
    )
    try:
        yield committer
    finally:
        await committer.close()


async def until(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` until it holds (5 s at most)."""
    async with asyncio.timeout(5):
        while not condition():
            await asyncio.sleep(0.001)


async def test_writes_go_on_while_another_task_keeps_the_loop_busy(tmp_path: Path) -> None:
    # A task that burns CPU and yields, again and again, never lets the loop block: a thread
    # that runs the SQL got the GIL back only tens of times a second and these 20 writers
    # managed 20-70 writes/s (minutes for these 10,000). On the loop: a few seconds at most.
    async def writer(store: SQLiteSagaStore, first: int) -> None:
        for n in range(first, first + 500):
            await store.create_saga(SagaRecord(str(n), "orders", SagaStatus.RUNNING, {"n": n}))

    async with SQLiteSagaStore(tmp_path / "sagaz.db") as store:
        async with busy_loop(), asyncio.timeout(30):  # generous: a loaded machine must pass
            await asyncio.gather(*(writer(store, 500 * w) for w in range(20)))
        assert len(await store.list_sagas(limit=11000)) == 10000


async def test_a_file_another_connection_writes_to_does_not_block_the_event_loop(
    groups: GroupCommitter, tmp_path: Path
) -> None:
    other = sqlite3.connect(tmp_path / "wal.db", isolation_level=None)
    ticks = 0

    async def heartbeat() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.001)

    beat = asyncio.create_task(heartbeat())
    try:
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        write = asyncio.create_task(groups.run(insert("waited")))
        await until(lambda: groups._in_thread is not None)  # it waits in the thread
        before = ticks
        await until(lambda: ticks > before + 3)  # the loop keeps running meanwhile
        assert not write.done()
        other.execute("ROLLBACK")
        assert await write == 1
        assert await groups.run(insert("on the loop again")) == 1
    finally:
        beat.cancel()
        other.close()


async def test_the_wal_is_checkpointed_and_starts_over(
    groups: GroupCommitter, tmp_path: Path
) -> None:
    wal = tmp_path / "wal.db-wal"
    sizes: list[int] = []
    for round_ in range(40):
        await asyncio.gather(*(groups.run(insert(f"{round_}-{n}-{'x' * 200}")) for n in range(25)))
        sizes.append(wal.stat().st_size)
    # without checkpoints 1,000 rows of 200 bytes grow the WAL past 60 pages of 4 KiB
    assert max(sizes) < 60 * 4096
    with sqlite3.connect(tmp_path / "wal.db") as reader:
        assert reader.execute("SELECT count(*) FROM t").fetchone() == (1000,)
