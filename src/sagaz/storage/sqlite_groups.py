"""Group commit for :class:`~sagaz.storage.sqlite.SQLiteSagaStore`: one connection, a
transaction per group of operations, each group durable before its callers see a result.

>>> groups = await GroupCommitter.open(connect, error=store_error, label="…")  # doctest: +SKIP
>>> await groups.run(lambda conn: conn.execute("DELETE FROM inbox").rowcount)  # doctest: +SKIP

An operation is a plain function ``op(conn) -> result`` that runs all its SQL on the
connection. :meth:`GroupCommitter.run` queues it; one flusher task takes every queued
operation as one group: ``BEGIN IMMEDIATE``, every operation, then one ``COMMIT``. A group of
reads only opens a deferred ``BEGIN``, so readers do not take the write lock.

Where the group runs. On a database in WAL mode (the store's) the connection is at
``synchronous = NORMAL`` and the group runs on the event loop's thread, with a zero busy
timeout: SQLite's own work, no thread hop and no GIL hand-over per statement. Its ``COMMIT``
writes the WAL without syncing it; :mod:`sagaz.storage.sqlite_wal` explains why one
``fdatasync`` of the WAL afterwards makes it as durable as ``synchronous = FULL``. A syncer
task runs that sync in a thread (the loop keeps running) and hands the group's results to
their callers only once it returned: a caller still sees its result only when it is durable.
One sync covers every group committed before it started, so while it runs, the next groups
commit and wait for the next sync. A group that finds the write lock taken (another process
writing: ``SQLITE_BUSY``) is rolled back and runs again in the committer's thread, where the
connection waits up to its busy timeout: a busy file never blocks the event loop. The WAL is
checkpointed in that thread too, from a connection of its own (:class:`WalFile`). Any other
database (another journal mode, in memory) runs every group in the thread, synced by SQLite.

One operation's error fails only its caller, as the PostgreSQL committer
(:mod:`sagaz.storage.postgres_groups`) does it: the group first runs without savepoints (the
common case: nothing fails, no statement beyond the operations' own); if an operation raises,
that transaction is rolled back and the group runs again with each operation inside its own
``SAVEPOINT``: one that fails there is rolled back alone and only its caller gets its error.
Operations must therefore only touch the database: they may run twice, the first run rolled
back. If the whole transaction is lost (an error rolled it back, or the COMMIT failed), every
operation of its group fails with a :class:`~sagaz.exceptions.StoreError` that says so.
A caller cancelled while its operation is queued drops it; once running, it completes and its
result is discarded.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from sagaz.exceptions import StoreError, StoreUnavailableError
from sagaz.storage.group_commit import Outcome, settle
from sagaz.storage.sqlite_wal import CHECKPOINT_CHANGES, WalFile

__all__ = ["GroupCommitter"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

Op = Callable[[sqlite3.Connection], Any]
"""An operation: runs all its SQL on the connection and returns a result."""

_SQLITE_BUSY = 5


@dataclass(slots=True)
class _Queued:
    """An operation waiting for its group, and the future its caller awaits."""

    op: Op
    writes: bool
    future: asyncio.Future[Any]


@dataclass(slots=True)
class _Committed:
    """A group that ran, waiting until the sync of its commit (``commit``) returned."""

    commit: int
    group: list[_Queued]
    outcomes: list[Outcome]


class _Busy(Exception):
    """The group met another connection's lock on the event loop (zero busy timeout)."""


class GroupCommitter:
    """Runs operations on one SQLite connection, a group per transaction.

    Make one with :meth:`open`; ``error`` turns an ``sqlite3.Error`` into the
    :class:`~sagaz.exceptions.StoreError` a caller sees, ``label`` names the store in the
    errors made here.
    """

    def __init__(
        self,
        executor: ThreadPoolExecutor,
        conn: sqlite3.Connection,
        wal: WalFile | None,
        *,
        error: Callable[[sqlite3.Error], StoreError],
        label: str,
    ) -> None:
        self._executor = executor  # busy groups, checkpoints, close (and every group without WAL)
        self._syncs = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sagaz-sqlite-sync")
        self._conn = conn  # used by one thread at a time: the loop's, or the executor's
        self._wal = wal
        self._patience_ms = 0
        if wal is not None:  # the loop never waits for a lock; the executor's thread does
            self._patience_ms = int(conn.execute("PRAGMA busy_timeout").fetchone()[0])
            conn.execute("PRAGMA busy_timeout = 0")
        self._error = error
        self._label = label
        self._queue: list[_Queued] = []
        self._flusher: asyncio.Task[None] | None = None
        self._committed: collections.deque[_Committed] = collections.deque()
        self._syncer: asyncio.Task[None] | None = None
        self._commits = 0  # groups that wrote, so far
        self._durable = 0  # of them, those a sync covered
        self._checkpoint: asyncio.Future[None] | None = None
        self._changes = 0  # conn.total_changes at the last checkpoint
        self._catch_up = False  # the next write group finishes the checkpoint, in the thread

    @classmethod
    async def open(
        cls,
        connect: Callable[[], sqlite3.Connection],
        *,
        error: Callable[[sqlite3.Error], StoreError],
        label: str,
    ) -> GroupCommitter:
        """Start the thread and make the connection in it with ``connect()``.

        To run groups on the event loop, ``connect()`` must open the file in WAL mode with
        ``check_same_thread=False``; otherwise every group runs in the thread."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sagaz-sqlite")
        loop = asyncio.get_running_loop()
        try:
            conn = await loop.run_in_executor(executor, connect)
            try:
                wal = None
                if _usable_here(conn):
                    wal = await loop.run_in_executor(executor, WalFile.open, conn)
            except BaseException:
                await loop.run_in_executor(executor, conn.close)
                raise
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(executor, conn, wal, error=error, label=label)

    # -- the event loop side ---------------------------------------------------------------
    async def run(self, op: Callable[[sqlite3.Connection], T], *, writes: bool = True) -> T:
        """Queue ``op`` for the next group; return its result once that group has committed
        durably.

        ``writes=False`` promises that ``op`` only reads (its group may skip the write lock).
        """
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append(_Queued(op, writes, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="sagaz-sqlite-flusher")
        return await future  # cancelling the caller cancels the future: the flusher drops it

    async def close(self) -> None:
        """Run what is queued, wait for the running group, its sync and the checkpoint, then
        close the connection and end the threads. Queue nothing after calling it."""
        try:
            for task in (self._flusher, self._syncer, self._checkpoint):
                if task is not None:
                    await asyncio.wait({task})  # not cancelled with the caller
        finally:
            closed = self._executor.submit(self._close_connections)
            self._executor.shutdown(wait=False)
            self._syncs.shutdown(wait=False)
        await asyncio.wrap_future(closed)

    def _close_connections(self) -> None:
        try:
            if self._wal is not None:
                self._wal.close()
        finally:
            self._conn.close()

    async def _flush(self) -> None:
        """Run the queued operations, a group at a time, until none is left."""
        while self._queue:
            group = [queued for queued in self._queue if not queued.future.done()]
            self._queue.clear()  # the next group collects while this one runs
            if group:
                await self._run_group(group)

    async def _run_group(self, group: list[_Queued]) -> None:
        ops = [queued.op for queued in group]
        writes = any(queued.writes for queued in group)
        outcomes: list[Outcome] | None = None
        catch_up = writes and self._catch_up
        if self._wal is not None and not catch_up:
            with contextlib.suppress(_Busy):
                outcomes = self._execute(ops, writes, on_loop=True)
        if outcomes is None:  # no WAL, the file was busy, or a checkpoint to finish: in the
            self._catch_up = False  # thread, which may wait
            try:
                outcomes = await asyncio.get_running_loop().run_in_executor(
                    self._executor, self._execute_patiently, ops, writes, catch_up
                )
            except BaseException as exc:  # cancelled (the loop is shutting down) or no thread
                self._fail_all([*group, *self._queue], exc)
                raise
        if self._wal is None:
            self._settle(group, outcomes)
            return
        if writes:
            self._commits += 1
            self._maybe_checkpoint()
        if not self._committed and self._durable >= self._commits:
            self._settle(group, outcomes)  # reads after durable writes: nothing to wait for
            return
        self._committed.append(_Committed(self._commits, group, outcomes))
        if self._syncer is None or self._syncer.done():
            self._syncer = asyncio.create_task(self._sync(), name="sagaz-sqlite-sync")

    async def _sync(self) -> None:
        """Sync the WAL, and hand the groups it covers their results, until none waits."""
        assert self._wal is not None
        loop = asyncio.get_running_loop()
        try:
            while self._committed:
                covered = self._commits  # every commit so far is in the WAL file
                failure: BaseException | None = None
                if self._durable < covered:
                    try:
                        await loop.run_in_executor(self._syncs, self._wal.sync)
                    except OSError as exc:
                        failure = self._unsynced(exc)
                    self._durable = covered
                while self._committed and self._committed[0].commit <= covered:
                    done = self._committed.popleft()
                    if failure is None:
                        self._settle(done.group, done.outcomes)
                    else:
                        for queued in done.group:
                            settle(queued.future, (None, failure))
        except BaseException as exc:  # cancelled: the loop is shutting down
            self._fail_all([queued for done in self._committed for queued in done.group], exc)
            self._committed.clear()
            raise

    def _unsynced(self, exc: OSError) -> StoreError:
        error = StoreUnavailableError(
            f"{self._label}: syncing the WAL failed ({exc}); the transaction was committed "
            "but may not survive a power loss"
        )
        error.__cause__ = exc
        return error

    def _maybe_checkpoint(self) -> None:
        """Start a passive checkpoint in the thread once enough rows changed since the last.

        It copies the WAL into the database while groups keep committing, so it never
        catches up with them; the write group after it runs in the thread
        (:meth:`_execute_patiently`) and first checkpoints what they added, writing nothing
        meanwhile, so that its commit starts the WAL over (SQLite's sync of the new WAL
        header happens in the thread too) and the WAL stays about as large as
        :data:`~sagaz.storage.sqlite_wal.CHECKPOINT_CHANGES` pages."""
        changes = self._conn.total_changes
        if changes - self._changes < CHECKPOINT_CHANGES:
            return
        if self._checkpoint is not None and not self._checkpoint.done():
            return
        assert self._wal is not None
        self._changes = changes
        self._checkpoint = asyncio.get_running_loop().run_in_executor(
            self._executor, self._wal.checkpoint
        )
        self._checkpoint.add_done_callback(self._checkpointed)

    def _checkpointed(self, future: asyncio.Future[None]) -> None:
        if future.cancelled():
            return
        error = future.exception()
        if error is None:
            self._catch_up = True
        else:
            self._log_checkpoint_failure(error)

    def _log_checkpoint_failure(self, error: BaseException) -> None:
        logger.warning(
            "%s: checkpointing the WAL failed: %s; the next checkpoint tries again",
            self._label,
            error,
            extra={"store": self._label},
        )

    def _settle(self, group: list[_Queued], outcomes: list[Outcome]) -> None:
        for queued, outcome in zip(group, outcomes, strict=True):
            settle(queued.future, outcome)

    def _fail_all(self, queued: list[_Queued], exc: BaseException) -> None:
        for item in queued:
            settle(item.future, (None, self._interrupted(exc)))
        self._queue.clear()

    def _interrupted(self, exc: BaseException) -> StoreError:
        error = StoreError(
            f"{self._label}: the operation was interrupted ({exc!r}); "
            "it may or may not have been committed"
        )
        error.__cause__ = exc
        return error

    # -- running a group (on the loop, or in the thread) -----------------------------------
    def _execute_patiently(
        self, ops: list[Op], writes: bool, catch_up: bool = False
    ) -> list[Outcome]:
        """:meth:`_execute` in the thread, waiting up to the busy timeout for a lock;
        ``catch_up``: after a checkpoint (see :meth:`_maybe_checkpoint`)."""
        if self._wal is None:
            return self._execute(ops, writes, on_loop=False)
        self._conn.execute(f"PRAGMA busy_timeout = {self._patience_ms}")
        try:
            if catch_up:
                try:
                    self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as exc:  # the next checkpoint tries again
                    self._log_checkpoint_failure(exc)
            return self._execute(ops, writes, on_loop=False)
        finally:
            self._conn.execute("PRAGMA busy_timeout = 0")

    def _execute(self, ops: list[Op], writes: bool, *, on_loop: bool) -> list[Outcome]:
        """One group: ``BEGIN``, every operation, ``COMMIT``; with a savepoint per operation
        only if one of them failed. ``on_loop``: raise :class:`_Busy` (rolled back) at the
        first lock another connection holds."""
        conn = self._conn
        begin = "BEGIN IMMEDIATE" if writes else "BEGIN"
        try:
            conn.execute(begin)
        except sqlite3.Error as exc:  # e.g. another process kept the write lock too long
            self._check_busy(exc, on_loop)
            return [(None, self._failure(exc)) for _ in ops]
        results: list[Any] = []
        try:
            for op in ops:
                results.append(op(conn))
                if not conn.in_transaction:  # the operation ended the group's transaction
                    return self._lost(ops, None)
        except Exception as exc:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error as rollback:
                    return self._lost(ops, self._failure(rollback))
            self._check_busy(exc, on_loop)
            if len(ops) == 1:
                return [(None, self._failure(exc))]
            return self._execute_with_savepoints(ops, begin, on_loop)
        try:
            conn.execute("COMMIT")
        except Exception as exc:
            self._check_busy(exc, on_loop)
            return self._lost(ops, self._failure(exc))
        return [(result, None) for result in results]

    def _check_busy(self, exc: Exception, on_loop: bool) -> None:
        if on_loop and _is_busy(exc):
            if self._conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("ROLLBACK")
            raise _Busy from exc

    def _execute_with_savepoints(self, ops: list[Op], begin: str, on_loop: bool) -> list[Outcome]:
        """The group again, after one of its operations failed: each in a savepoint."""
        conn = self._conn
        try:
            conn.execute(begin)
        except sqlite3.Error as exc:
            self._check_busy(exc, on_loop)
            return [(None, self._failure(exc)) for _ in ops]
        outcomes: list[Outcome] = []
        try:
            for op in ops:
                outcome = self._execute_one(conn, op, on_loop)
                if not conn.in_transaction:  # SQLite rolled the whole group back
                    return self._lost(ops, outcome[1])
                outcomes.append(outcome)
            conn.execute("COMMIT")
        except _Busy:
            raise
        except Exception as exc:
            self._check_busy(exc, on_loop)
            return self._lost(ops, self._failure(exc))
        return outcomes

    def _execute_one(self, conn: sqlite3.Connection, op: Op, on_loop: bool) -> Outcome:
        """Run ``op`` in a savepoint: released if it succeeds, rolled back if it fails."""
        conn.execute("SAVEPOINT op")
        try:
            result = op(conn)
            conn.execute("RELEASE op")
        except Exception as exc:
            self._check_busy(exc, on_loop)
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK TO op")
                conn.execute("RELEASE op")
            return None, self._failure(exc)
        return result, None

    def _lost(self, ops: list[Op], cause: BaseException | None) -> list[Outcome]:
        """Roll back what is left of the group; every operation of it fails."""
        if self._conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")
        reason = "an operation ended it" if cause is None else str(cause)
        # a file that cannot be used right now fails the whole group the same way
        kind = StoreUnavailableError if isinstance(cause, StoreUnavailableError) else StoreError
        outcomes: list[Outcome] = []
        for _ in ops:
            error = kind(f"{self._label}: the transaction was lost ({reason})")
            error.__cause__ = cause
            outcomes.append((None, error))
        return outcomes

    def _failure(self, exc: Exception) -> BaseException:
        """The error a caller sees for ``exc``: a StoreError for an ``sqlite3.Error``."""
        if not isinstance(exc, sqlite3.Error):
            return exc
        error = self._error(exc)
        error.__cause__ = exc
        return error


def _is_busy(exc: BaseException) -> bool:
    """Whether ``exc`` is SQLite's ``SQLITE_BUSY``: another connection holds a lock."""
    code = getattr(exc, "sqlite_errorcode", None)
    return (
        isinstance(exc, sqlite3.OperationalError)
        and code is not None
        and (code & 0xFF == _SQLITE_BUSY)
    )


def _usable_here(conn: sqlite3.Connection) -> bool:
    """Whether this thread may use ``conn`` (made in another with ``check_same_thread=False``)."""
    try:
        conn.execute("SELECT 1")
    except sqlite3.ProgrammingError:
        return False
    return True
