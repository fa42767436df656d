"""The WAL file of :class:`~sagaz.storage.sqlite.SQLiteSagaStore`: the sync that makes its
commits durable, and its checkpoints, both run off the event loop.

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

The WAL's automatic checkpoint is off on the store's connection (at NORMAL it would sync the
WAL and the database inside a ``COMMIT``, on the event loop): :meth:`WalFile.checkpoint`
runs ``PRAGMA wal_checkpoint(PASSIVE)`` on a connection of its own, in a thread, once about
as many rows changed as SQLite's own threshold (1,000 pages) would allow, so the WAL does not
grow without end. A passive checkpoint takes no lock a writer waits for; the next write after
a complete one starts the WAL over, and SQLite syncs the new WAL header then (once per
checkpoint, at NORMAL as at FULL).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3

__all__ = ["CHECKPOINT_CHANGES", "WalFile", "sync_file"]

CHECKPOINT_CHANGES = 1000
"""Rows changed between two checkpoints: a changed row writes about one page to the WAL (the
keys are random), so this is near SQLite's own ``wal_autocheckpoint`` of 1,000 pages."""

sync_file = getattr(os, "fdatasync", os.fsync)
"""What SQLite's unix VFS calls to sync a file: ``fdatasync`` where there is one."""


class WalFile:
    """The ``-wal`` file of a database in WAL mode: its sync and its checkpoints.

    Make it with :meth:`open` (it blocks: call it in a thread); it holds a descriptor of the
    file and a second connection for checkpoints, which :meth:`close` releases.
    """

    def __init__(self, fd: int, checkpointer: sqlite3.Connection) -> None:
        self._fd = fd
        self._checkpointer = checkpointer

    @classmethod
    def open(cls, conn: sqlite3.Connection) -> WalFile | None:
        """Switch ``conn`` to ``synchronous = NORMAL`` without automatic checkpoints, if its
        database is a file in WAL mode, and return its WAL; ``None`` (``conn`` unchanged) for
        any other journal mode or an in-memory database."""
        mode = str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower()
        path = str(conn.execute("PRAGMA database_list").fetchone()[2])
        if mode != "wal" or not path:
            return None
        # a read opens (creates) the WAL; it is not deleted while a connection (ours) is open
        conn.execute("SELECT count(*) FROM sqlite_master").fetchall()
        fd = os.open(path + "-wal", os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            checkpointer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except BaseException:
            os.close(fd)
            raise
        checkpointer.execute("PRAGMA synchronous = FULL")  # its checkpoints' own syncs
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        return cls(fd, checkpointer)

    def sync(self) -> None:
        """Make every commit written to the WAL so far durable (blocks: call it in a thread)."""
        sync_file(self._fd)

    def checkpoint(self) -> None:
        """Copy what the WAL holds into the database, without waiting for any lock (blocks:
        call it in a thread)."""
        self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def close(self) -> None:
        """Close the checkpoint connection and the file descriptor."""
        try:
            with contextlib.suppress(sqlite3.Error):
                self._checkpointer.close()
        finally:
            os.close(self._fd)
