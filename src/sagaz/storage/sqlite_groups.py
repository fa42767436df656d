"""Group commit for :class:`~sagaz.storage.sqlite.SQLiteSagaStore`: one thread, one connection.

>>> groups = await GroupCommitter.open(connect, error=store_error, label="…")  # doctest: +SKIP
>>> await groups.run(lambda conn: conn.execute("DELETE FROM inbox").rowcount)  # doctest: +SKIP

The connection is made, used and closed in one dedicated thread. An operation is a plain
function ``op(conn) -> result`` that runs all its SQL there. :meth:`GroupCommitter.run` queues
it; one flusher task hands every queued operation, as one group, to the thread, which runs
``BEGIN IMMEDIATE``, every operation, then one ``COMMIT``: one thread hop per group. Results
reach their callers only after that COMMIT. While a group runs, new operations queue up for the
next one. A group of reads only opens a deferred ``BEGIN``, so readers do not take the write
lock.

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
import contextlib
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from sagaz.exceptions import StoreError, StoreUnavailableError
from sagaz.storage.group_commit import Outcome, settle

__all__ = ["GroupCommitter"]

T = TypeVar("T")

Op = Callable[[sqlite3.Connection], Any]
"""An operation: runs all its SQL on the connection, in the thread, and returns a result."""


@dataclass(slots=True)
class _Queued:
    """An operation waiting for its group, and the future its caller awaits."""

    op: Op
    writes: bool
    future: asyncio.Future[Any]


class GroupCommitter:
    """Runs operations on one SQLite connection in its own thread, a group per transaction.

    Make one with :meth:`open`; ``error`` turns an ``sqlite3.Error`` into the
    :class:`~sagaz.exceptions.StoreError` a caller sees, ``label`` names the store in the
    errors made here.
    """

    def __init__(
        self,
        executor: ThreadPoolExecutor,
        conn: sqlite3.Connection,
        *,
        error: Callable[[sqlite3.Error], StoreError],
        label: str,
    ) -> None:
        self._executor = executor
        self._conn = conn  # touched only in the executor's thread
        self._error = error
        self._label = label
        self._queue: list[_Queued] = []
        self._flusher: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls,
        connect: Callable[[], sqlite3.Connection],
        *,
        error: Callable[[sqlite3.Error], StoreError],
        label: str,
    ) -> GroupCommitter:
        """Start the thread and make the connection in it with ``connect()``."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sagaz-sqlite")
        try:
            conn = await asyncio.get_running_loop().run_in_executor(executor, connect)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(executor, conn, error=error, label=label)

    # -- the event loop side ---------------------------------------------------------------
    async def run(self, op: Callable[[sqlite3.Connection], T], *, writes: bool = True) -> T:
        """Queue ``op`` for the next group; return its result once that group has committed.

        ``writes=False`` promises that ``op`` only reads (its group may skip the write lock).
        """
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append(_Queued(op, writes, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="sagaz-sqlite-flusher")
        return await future  # cancelling the caller cancels the future: the flusher drops it

    async def close(self) -> None:
        """Run what is queued, wait for the running group, then close the connection and end
        the thread. Queue nothing after calling it."""
        flusher = self._flusher
        try:
            if flusher is not None:
                await asyncio.wait({flusher})  # not cancelled with the caller
        finally:
            closed = self._executor.submit(self._conn.close)  # after the running group
            self._executor.shutdown(wait=False)
        await asyncio.wrap_future(closed)

    async def _flush(self) -> None:
        """Hand the queued operations to the thread, a group at a time, until none is left."""
        while self._queue:
            group = [queued for queued in self._queue if not queued.future.done()]
            self._queue.clear()  # the next group collects while this one runs
            if group:
                await self._run_group(group)

    async def _run_group(self, group: list[_Queued]) -> None:
        ops = [queued.op for queued in group]
        writes = any(queued.writes for queued in group)
        loop = asyncio.get_running_loop()
        try:
            outcomes = await loop.run_in_executor(self._executor, self._execute, ops, writes)
        except BaseException as exc:  # cancelled (the loop is shutting down) or no thread
            for queued in [*group, *self._queue]:
                settle(queued.future, (None, self._interrupted(exc)))
            self._queue.clear()
            raise
        for queued, outcome in zip(group, outcomes, strict=True):
            settle(queued.future, outcome)

    def _interrupted(self, exc: BaseException) -> StoreError:
        error = StoreError(
            f"{self._label}: the operation was interrupted ({exc!r}); "
            "it may or may not have been committed"
        )
        error.__cause__ = exc
        return error

    # -- the thread side -------------------------------------------------------------------
    def _execute(self, ops: list[Op], writes: bool) -> list[Outcome]:
        """One group (in the thread): ``BEGIN``, every operation, ``COMMIT``; with a savepoint
        per operation only if one of them failed."""
        conn = self._conn
        begin = "BEGIN IMMEDIATE" if writes else "BEGIN"
        try:
            conn.execute(begin)
        except sqlite3.Error as exc:  # e.g. another process kept the write lock too long
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
            if len(ops) == 1:
                return [(None, self._failure(exc))]
            return self._execute_with_savepoints(ops, begin)
        try:
            conn.execute("COMMIT")
        except Exception as exc:
            return self._lost(ops, self._failure(exc))
        return [(result, None) for result in results]

    def _execute_with_savepoints(self, ops: list[Op], begin: str) -> list[Outcome]:
        """The group again, after one of its operations failed: each in a savepoint."""
        conn = self._conn
        try:
            conn.execute(begin)
        except sqlite3.Error as exc:
            return [(None, self._failure(exc)) for _ in ops]
        outcomes: list[Outcome] = []
        try:
            for op in ops:
                outcome = self._execute_one(conn, op)
                if not conn.in_transaction:  # SQLite rolled the whole group back
                    return self._lost(ops, outcome[1])
                outcomes.append(outcome)
            conn.execute("COMMIT")
        except Exception as exc:
            return self._lost(ops, self._failure(exc))
        return outcomes

    def _execute_one(self, conn: sqlite3.Connection, op: Op) -> Outcome:
        """Run ``op`` in a savepoint: released if it succeeds, rolled back if it fails."""
        conn.execute("SAVEPOINT op")
        try:
            result = op(conn)
            conn.execute("RELEASE op")
        except Exception as exc:
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
