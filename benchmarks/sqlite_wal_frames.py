"""WAL frames per group commit of ``stores.py``'s SQLite run, by the B-tree they belong to.

Run: ``python benchmarks/sqlite_wal_frames.py [--events 3000] [--stored 0]``

One run of ``stores.throughput`` on a fresh file with SQLite's automatic checkpoint off, so
the ``-wal`` file keeps every frame the run's commits wrote; before the store closes (which
checkpoints and removes it) the frames' headers are read and each page is attributed to its
table or index through ``dbstat``. Printed: the commits, the frames per commit and per saga,
and the same for each B-tree. Each frame is a 4 KiB page written (two ``pwrite`` calls) and
checksummed, and the ``COMMIT``'s sync waits for them: fewer B-trees touched per group, or
fewer leaves of one, is less of the kernel's share that the instruction counts miss.

``--stored N`` first fills the file with ``N`` finished sagas and their completed inbox rows
(random ids and keys, finished an hour ago: retention keeps them), as a file in use holds:
an index of random keys then has more leaves than a group has sagas, and each new saga
writes a leaf of its own, where on a fresh file they share the few there are.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sqlite3
import struct
import tempfile
import uuid
from datetime import timedelta
from pathlib import Path

import stores

from sagaz.clock import utcnow
from sagaz.storage import sqlite_schema as tables
from sagaz.storage.codec import to_text
from sagaz.storage.sqlite import SQLiteSagaStore

_WAL_HEADER = 32
_FRAME_HEADER = 24


class _KeptWal(SQLiteSagaStore):
    """The SQLite store with the automatic checkpoint off, keeping its WAL's bytes at stop."""

    wal = b""

    async def start(self) -> None:
        await super().start()
        self._committer()._conn.execute("PRAGMA wal_autocheckpoint = 0")

    async def stop(self) -> None:
        self.wal = await asyncio.to_thread(_read_wal, self.path)
        await super().stop()


def _read_wal(path: str) -> bytes:
    wal = Path(f"{path}-wal")
    return wal.read_bytes() if wal.exists() else b""


def _frames(wal: bytes, path: str) -> tuple[int, collections.Counter[str]]:
    """The commits in ``wal`` and its frames counted by the B-tree of their page."""
    conn = sqlite3.connect(path)
    try:
        owner = {page: name for name, page in conn.execute("SELECT name, pageno FROM dbstat")}
    finally:
        conn.close()
    (page_size,) = struct.unpack(">I", wal[8:12])
    frames: collections.Counter[str] = collections.Counter()
    commits, offset = 0, _WAL_HEADER
    while offset + _FRAME_HEADER + page_size <= len(wal):
        page, size_after = struct.unpack(">II", wal[offset : offset + 8])
        frames[owner.get(page, "?")] += 1
        commits += size_after != 0  # a commit's last frame holds the database's size
        offset += _FRAME_HEADER + page_size
    return commits, frames


def _fill(path: Path, sagas: int) -> None:
    """``sagas`` finished sagas and their completed inbox rows in a new file at ``path``."""
    conn = tables.open_database(str(path), 5_000, url=f"sqlite:///{path}")
    moment = to_text(utcnow() - timedelta(hours=1))
    try:
        conn.execute("BEGIN")
        conn.executemany(
            f"INSERT INTO saga_executions ({tables.SAGA_COLUMNS}) VALUES (?, 'stored', "
            f"'completed', '{{}}', 1, NULL, 'stored', NULL, NULL, NULL, '{moment}', '{moment}')",
            ((str(uuid.uuid4()),) for _ in range(sagas)),
        )
        conn.execute(
            "INSERT INTO inbox (trigger_id, key, saga_id, status, created_at, completed_at) "
            f"SELECT 'stored', hex(randomblob(16)), saga_id, 'completed', '{moment}', "
            f"'{moment}' FROM saga_executions"
        )
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


async def main(events: int, stored: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        if stored:
            _fill(Path(folder) / "frames.db", stored)
        store = _KeptWal(Path(folder) / "frames.db")
        await stores.throughput(store, events)
        commits, frames = _frames(store.wal, store.path)
    total = sum(frames.values())
    print(f"events: {events}, commits: {commits}")
    print(f"all       {total / commits:6.1f} frames per commit  {total / events:5.2f} per saga")
    for name, count in frames.most_common():
        if count >= commits / 10:
            print(f"  {count / commits:6.2f} per commit  {count / events:5.2f} per saga  {name}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--stored", type=int, default=0, help="finished sagas stored first")
    arguments = parser.parse_args()
    asyncio.run(main(arguments.events, arguments.stored))
