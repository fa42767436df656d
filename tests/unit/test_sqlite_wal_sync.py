"""``GroupCommitter`` on a WAL database: groups run on the event loop at ``synchronous =
NORMAL`` and reach their callers only after a sync of the WAL; a busy file never blocks the
loop; the WAL is checkpointed and starts over."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from sagaz.exceptions import StoreError
from sagaz.storage import sqlite_wal
from sagaz.storage.sqlite_groups import GroupCommitter


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, timeout=5, check_same_thread=False)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
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


async def test_no_result_reaches_its_caller_before_a_sync_of_the_wal_returned(
    groups: GroupCommitter, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []  # syncs that returned
    seen: list[tuple[str, int]] = []  # (key, syncs returned when its caller got the result)
    real = sqlite_wal.sync_file

    def spy(fd: int) -> None:
        real(fd)
        synced.append(fd)

    monkeypatch.setattr(sqlite_wal, "sync_file", spy)

    async def write(key: str) -> None:
        await groups.run(insert(key))
        seen.append((key, len(synced)))

    for round_ in range(3):
        await asyncio.gather(*(write(f"{round_}-{n}") for n in range(10)))
    assert len(seen) == 30
    assert all(syncs >= 1 for _, syncs in seen)
    # each round waited for a sync of its own: the first round's one does not count
    assert min(syncs for key, syncs in seen if key.startswith("2-")) >= 3


async def test_a_file_another_connection_writes_to_does_not_block_the_event_loop(
    groups: GroupCommitter, tmp_path: Path
) -> None:
    other = sqlite3.connect(tmp_path / "wal.db", isolation_level=None)
    ticks = 0
    stop = asyncio.Event()

    async def heartbeat() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0.005)

    beat = asyncio.create_task(heartbeat())
    try:
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        write = asyncio.create_task(groups.run(insert("waited")))
        await asyncio.sleep(0.3)
        assert not write.done()  # waits for the lock, in the thread
        before = ticks
        await asyncio.sleep(0.2)
        assert ticks > before  # the loop kept running meanwhile
        other.execute("ROLLBACK")
        assert await write == 1
    finally:
        stop.set()
        await beat
        other.close()


async def test_the_wal_is_checkpointed_and_starts_over(
    groups: GroupCommitter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sagaz.storage.sqlite_groups.CHECKPOINT_CHANGES", 50)
    wal = tmp_path / "wal.db-wal"
    sizes: list[int] = []
    for round_ in range(40):
        await asyncio.gather(*(groups.run(insert(f"{round_}-{n}-{'x' * 200}")) for n in range(25)))
        sizes.append(wal.stat().st_size)
    # without checkpoints 1,000 rows of 200 bytes grow the WAL past 60 pages of 4 KiB
    assert max(sizes) < 60 * 4096
    with sqlite3.connect(tmp_path / "wal.db") as reader:
        assert reader.execute("SELECT count(*) FROM t").fetchone() == (1000,)
