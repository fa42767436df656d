"""``GroupCommitter`` on a WAL database: groups run on the event loop at ``synchronous =
NORMAL`` and reach their callers only after a sync of the WAL."""

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


async def test_the_connection_commits_at_normal_and_a_failed_sync_fails_the_callers(
    groups: GroupCommitter, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert await groups.run(lambda conn: conn.execute("PRAGMA synchronous").fetchone()[0]) == 1

    def broken(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(sqlite_wal, "sync_file", broken)
    with pytest.raises(StoreError, match="syncing the WAL failed"):
        await groups.run(insert("unsynced"))


async def test_the_wal_stays_bounded(groups: GroupCommitter, tmp_path: Path) -> None:
    wal = tmp_path / "wal.db-wal"
    sizes: list[int] = []
    for round_ in range(100):
        await asyncio.gather(*(groups.run(insert(f"{round_}-{n}-{'x' * 400}")) for n in range(25)))
        sizes.append(wal.stat().st_size)
    # 2,500 rows of 400 bytes: about 250 pages of 4 KiB a round without checkpoints
    assert max(sizes) < 2_000 * 4096
    with sqlite3.connect(tmp_path / "wal.db") as reader:
        assert reader.execute("SELECT count(*) FROM t").fetchone() == (2500,)
