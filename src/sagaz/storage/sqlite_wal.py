"""The WAL file of :class:`~sagaz.storage.sqlite.SQLiteSagaStore`: the sync that makes its
commits durable, run off the event loop.

The store's connection runs in WAL mode at ``PRAGMA synchronous = NORMAL``, and
:class:`~sagaz.storage.sqlite_groups.GroupCommitter` calls :meth:`WalFile.sync` after the
``COMMIT`` of a group and before any of its callers sees a result. That is what
``synchronous = FULL`` does, moved out of the ``COMMIT``:

- SQLite's documentation (https://www.sqlite.org/pragma.html#pragma_synchronous): in WAL mode,
  NORMAL syncs the WAL before each checkpoint, the database after it, and the WAL's header
  when the WAL starts over; "with synchronous=FULL in WAL mode, an additional sync operation
  of the WAL file happens after each transaction commit", which is what makes the commit
  durable across a power loss.
- SQLite's source (``sqlite3WalFrames`` in ``wal.c``): the frames of a commit are written,
  then, only at FULL, the WAL is synced (``sqlite3OsSync``: ``fdatasync`` on Linux), after
  padding the last frame to a sector boundary on a device without powersafe overwrite
  (``SQLITE_POWERSAFE_OVERWRITE`` is on by default, so no padding: only the sync).

So one ``fdatasync`` of the ``-wal`` file, started after a ``COMMIT`` returned, makes that
commit (and every earlier one) as durable as FULL would have. It runs in a thread (it releases
the GIL for its whole length), so the event loop keeps running while the disk works. The
caveat: on a device without powersafe overwrite (opened with ``psow=0``), FULL's padding is
not done, as under NORMAL.

SQLite's automatic checkpoint stays on: at NORMAL as at FULL, a checkpoint syncs the WAL,
copies it into the database and syncs that, inside the ``COMMIT`` that crosses the threshold,
and the WAL starts over (its header synced) at the next write: the file the descriptor names
is reused, not replaced, so its sync still covers every commit.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys

__all__ = ["WalFile", "sync_file"]

sync_file = getattr(os, "fdatasync", os.fsync)
"""What SQLite's unix VFS calls to sync a file: ``fdatasync`` where there is one."""


class WalFile:
    """The ``-wal`` file of a database in WAL mode, held open to sync it.

    Make it with :meth:`open` (it touches the file: call it in a thread); :meth:`close`
    releases the descriptor.
    """

    def __init__(self, fd: int, path: str = "") -> None:
        self._fd = fd
        self._path = path
        self._child: subprocess.Popen[bytes] | None = None
        self._waiting: asyncio.Future[bytes] | None = None

    @classmethod
    def open(cls, conn: sqlite3.Connection) -> WalFile | None:
        """Switch ``conn`` to ``synchronous = NORMAL`` if its database is a file in WAL mode,
        and return its WAL; ``None`` (``conn`` unchanged) for any other journal mode or an
        in-memory database."""
        mode = str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower()
        path = str(conn.execute("PRAGMA database_list").fetchone()[2])
        if mode != "wal" or not path:
            return None
        # a read opens (creates) the WAL; it is not deleted while a connection (ours) is open
        conn.execute("SELECT count(*) FROM sqlite_master").fetchall()
        fd = os.open(path + "-wal", os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        conn.execute("PRAGMA synchronous = NORMAL")
        return cls(fd, path + "-wal")

    async def sync_in_child(self) -> None:
        """:meth:`sync` in a child process: no thread of ours needs the GIL back after it."""
        loop = asyncio.get_running_loop()
        if self._child is None:
            self._child = subprocess.Popen(
                [sys.executable, "-c", _CHILD, self._path],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                bufsize=0,
            )
            assert self._child.stdout is not None
            os.set_blocking(self._child.stdout.fileno(), False)
            loop.add_reader(self._child.stdout.fileno(), self._answered)
        assert self._child.stdin is not None
        self._waiting = loop.create_future()
        os.write(self._child.stdin.fileno(), b"s")
        if await self._waiting != b"k":
            raise OSError("syncing the WAL failed in the child process")

    def forget(self) -> None:
        """Stop reading the child's answers (on the loop, before :meth:`close`)."""
        if self._child is not None and self._child.stdout is not None:
            asyncio.get_running_loop().remove_reader(self._child.stdout.fileno())

    def _answered(self) -> None:
        assert self._child is not None and self._child.stdout is not None
        data = os.read(self._child.stdout.fileno(), 1)
        if self._waiting is not None and not self._waiting.done():
            self._waiting.set_result(data)

    def sync(self) -> None:
        """Make every commit written to the WAL so far durable (blocks: call it in a thread)."""
        sync_file(self._fd)

    def close(self) -> None:
        """Close the descriptor (and end the child)."""
        if self._child is not None:
            assert self._child.stdin is not None and self._child.stdout is not None
            self._child.stdin.close()
            self._child.wait()
            self._child.stdout.close()
        os.close(self._fd)


_CHILD = """
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
while os.read(0, 1):
    try:
        os.fdatasync(fd)
        os.write(1, b"k")
    except OSError:
        os.write(1, b"e")
"""
