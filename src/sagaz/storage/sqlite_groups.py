"""Group commit for :class:`~sagaz.storage.sqlite.SQLiteSagaStore`: one connection, a
transaction per group of operations, run on the event loop's thread.

>>> groups = await GroupCommitter.open(connect, error=store_error, label="…")  # doctest: +SKIP
>>> await groups.run(lambda conn: conn.execute("DELETE FROM inbox").rowcount)  # doctest: +SKIP

An operation is a plain function ``op(conn) -> result`` that runs all its SQL on the
connection. :meth:`GroupCommitter.run` queues it; one flusher task takes every queued
operation as one group: ``BEGIN IMMEDIATE``, every operation, then one ``COMMIT``. Results
reach their callers only after that COMMIT. A group of reads only opens a deferred ``BEGIN``,
so readers do not take the write lock. :meth:`GroupCommitter.submit` is the same for a
store's frequent operations, without a coroutine or a closure per call: it queues a
module-level ``op(cursor, arg)`` with its argument and returns the future to await (a closure
and the coroutine awaiting it are objects that outlive a young collection of the garbage
collector while the operation waits for its group: the SQLite run made twice as many young
collections as the memory store's, each six times dearer, benchmarks/README.md). Such an
operation runs its SQL on one cursor the whole group shares: ``Connection.execute`` makes
and frees a cursor per statement, about 0.3 µs each (benchmarks/README.md, "SQLite: the
store's Python and its bindings").

Where a group runs. The connection is made in a thread of the committer's own (it may wait
for another process's lock). On a file in WAL mode opened with ``check_same_thread=False``
(the store's), every group then runs on the event loop's thread, at ``synchronous = FULL``
(the COMMIT syncs the WAL before it returns) and with a zero busy timeout. No thread has to
take the GIL back after each statement: a thread running SQL for a loop that is busy but
never blocks (tasks doing CPU work between ``await asyncio.sleep(0)``) got the GIL tens of
times a second, and the store wrote 20-60 rows/s (benchmarks/README.md, "SQLite: the groups
on the event loop"). A group that finds a lock another connection holds (``SQLITE_BUSY``) is
rolled back and runs again in the thread, which waits up to the store's busy timeout: a busy
file never blocks the loop. Groups run one at a time, wherever they run. SQLite's automatic
checkpoint stays on: about every 1,000 pages a COMMIT on the loop copies the WAL into the
database and syncs both, a few milliseconds (a checkpoint in the thread would wait for the
GIL as the groups did). Any other connection (another journal mode, made for one thread)
runs every group in the thread.

Claims first (``submit(..., first=True)``: an event's claim, whose caller fires its next event
and starts its saga once it has its result). A group holding such operations and others hands
the first ones their results, then a loop turn, and keeps the others' results back (their
group has committed) until the next group's SQL has run on the loop: that group's ``COMMIT``
(the WAL's ``fdatasync``, about 0.4 ms, and any checkpoint) then runs in the committer's
thread, which the loop waits for to start (``sqlite3`` lets the GIL go inside it); meanwhile
the kept results are handed over and the loop gives their callers one turn, then waits for
the ``COMMIT`` blocking (a thread that needs the GIL back from a loop kept busy by other tasks
would get it by chance: tens of times a second). So the loop runs the others' Python while
the WAL syncs, and each result still comes only after its own group's ``COMMIT``. Done only
while that turn takes at least :data:`_WORTH` (else the hop to the thread costs more than it
hides; tried again every :data:`_PROBE` groups). In ``benchmarks/stores.py``: about +10%
SQLite sagas/s at +10 CPU µs a saga (benchmarks/README.md, "SQLite: an event claim's caller
first").

A group of writes may first run all at once (``together``, see :data:`Together`: the store
writes its claims and checkpoints with one statement per kind of row); if that gives up
midway, the group is rolled back and runs operation by operation as below.

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
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from typing import Any, TypeVar

from sagaz.clock import utcnow
from sagaz.exceptions import StoreError
from sagaz.storage.group_commit import Outcome, settle
from sagaz.storage.sqlite_rows import lasting_text
from sagaz.storage.sqlite_transactions import GroupTransactions, Together, _Busy, _Queued

__all__ = ["GroupCommitter", "Together"]

T = TypeVar("T")
A = TypeVar("A")

_WORTH = 0.0003
"""Seconds the loop's turn for a group's other callers must take for their hand-over to be
worth overlapping with the next group's COMMIT in the thread (see :meth:`_run_group`)."""
_PROBE = 32
"""While not worth it, every this many groups try it again."""


def _call(cursor: sqlite3.Cursor, op: Callable[[sqlite3.Connection], T]) -> T:
    """The operation of :meth:`GroupCommitter.run`: ``op`` on the connection."""
    return op(cursor.connection)


class GroupCommitter(GroupTransactions):
    """Runs operations on one SQLite connection, a group per transaction, on the event loop's
    thread (or in its own thread, see the module's documentation).

    Make one with :meth:`open`; ``error`` turns an ``sqlite3.Error`` into the
    :class:`~sagaz.exceptions.StoreError` a caller sees, ``label`` names the store in the
    errors made here.
    """

    def __init__(
        self,
        executor: ThreadPoolExecutor,
        conn: sqlite3.Connection,
        *,
        patience_ms: int | None,
        error: Callable[[sqlite3.Error], StoreError],
        label: str,
        together: Together | None = None,
    ) -> None:
        self._executor = executor  # made the connection; runs the groups that find it busy
        self._conn = conn  # used by one thread at a time: the loop's or the executor's
        self._on_loop = patience_ms is not None
        self._patience_ms = patience_ms or 0  # the busy timeout in the executor's thread
        self._in_thread: Future[Any] | None = None  # the executor's work on the connection
        self._error = error
        self._label = label
        self._queue: list[_Queued] = []
        self._flusher: asyncio.Task[None] | None = None
        self._loop = asyncio.get_running_loop()
        self._moment: tuple[datetime, str] | None = None  # see moment()
        self._together = together
        self._rest: list[tuple[asyncio.Future[Any], Outcome]] = []  # see _run_group
        self._worth = True
        self._skipped = 0

    @classmethod
    async def open(
        cls,
        connect: Callable[[], sqlite3.Connection],
        *,
        error: Callable[[sqlite3.Error], StoreError],
        label: str,
        together: Together | None = None,
    ) -> GroupCommitter:
        """Start the thread and make the connection in it with ``connect()``.

        Groups run on the event loop only if ``connect()`` opened the file in WAL mode with
        ``check_same_thread=False``; otherwise every group runs in the thread. ``together``:
        how a group of writes may run all at once (see :data:`Together`)."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sagaz-sqlite")
        loop = asyncio.get_running_loop()
        try:
            conn = await loop.run_in_executor(executor, connect)
            try:
                patience_ms = None
                if _usable_here(conn):
                    patience_ms = await loop.run_in_executor(executor, _prepare, conn)
            except BaseException:
                await loop.run_in_executor(executor, conn.close)
                raise
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(
            executor, conn, patience_ms=patience_ms, error=error, label=label, together=together
        )

    # -- the event loop side ---------------------------------------------------------------
    async def run(self, op: Callable[[sqlite3.Connection], T], *, writes: bool = True) -> T:
        """Queue ``op`` for the next group; return its result once that group has committed.

        ``writes=False`` promises that ``op`` only reads (its group may skip the write lock).
        """
        return await self.submit(_call, op, writes=writes)

    def moment(self) -> tuple[datetime, str]:
        """The time that stamps the writes of the group now forming, and its
        :func:`~sagaz.storage.codec.to_text`: the clock is read once per group, when the
        first of them asks (its operations commit together; formatting the time cost about
        a tenth of a saga's Python in the store). Read it just before :meth:`submit`: a
        moment read while nothing is queued is read again by the next caller."""
        moment = self._moment
        if moment is None or not self._queue:  # read by a caller that queued nothing after all
            now = utcnow()
            # through the cache: a saga created now stores it again as its created_at
            moment = self._moment = (now, lasting_text(now))
        return moment

    def submit(
        self,
        op: Callable[[sqlite3.Cursor, A], T],
        arg: A,
        *,
        writes: bool = True,
        first: bool = False,
    ) -> asyncio.Future[T]:
        """Queue ``op(cursor, arg)`` for the next group; return the future of its result, set
        once that group has committed (:meth:`run` without a coroutine or a closure). The
        cursor is the group's: read what a statement gives before the next one runs.

        Cancelling the future (as cancelling a caller that awaits it does) drops the
        operation if its group has not taken it yet."""
        future = self._loop.create_future()
        self._queue.append((op, arg, writes, future, first))
        if self._flusher is None or self._flusher.done():
            self._flusher = self._loop.create_task(self._flush(), name="sagaz-sqlite-flusher")
        return future

    async def close(self) -> None:
        """Run what is queued, wait for the running group, then close the connection and end
        the thread. Queue nothing after calling it."""
        flusher = self._flusher
        try:
            if flusher is not None:
                await asyncio.wait({flusher})  # not cancelled with the caller
        finally:
            closed = self._executor.submit(self._conn.close)  # after the thread's work
            self._executor.shutdown(wait=False)
        await asyncio.wrap_future(closed)

    async def _flush(self) -> None:
        """Run the queued operations, a group at a time, until none is left."""
        while self._queue:
            await self._thread_done()
            group = [queued for queued in self._queue if not queued[3].done()]
            self._queue = []  # the next group collects while this one runs
            self._moment = None  # and reads the clock again
            if group:
                await self._run_group(group)
        self._give_rest()

    async def _run_group(self, group: list[_Queued]) -> None:
        writes = any(queued[2] for queued in group)
        outcomes: list[Outcome] | None = None
        rest = self._rest
        try:
            if self._on_loop:
                with contextlib.suppress(_Busy):
                    outcomes = self._execute(group, writes, on_loop=True, commit=not rest)
                if outcomes is not None and self._conn.in_transaction:
                    # the COMMIT (its sync) in the thread, the last group's rest handed over
                    # meanwhile: their callers' Python runs while the WAL syncs
                    results = [result for result, _ in outcomes]
                    started = threading.Event()
                    self._in_thread = self._executor.submit(
                        self._commit_started, started, group, results
                    )
                    started.wait()  # the thread has the GIL only until the COMMIT lets it go
                    turn = time.perf_counter()
                    self._give_rest()
                    await asyncio.sleep(0)  # one turn: the rest's callers run on
                    self._worth = time.perf_counter() - turn >= _WORTH
                    # then wait for the COMMIT blocking the loop: a thread that needs the GIL
                    # back from a busy loop would wait for it by chance
                    outcomes = self._in_thread.result()
            if outcomes is None:  # in the thread (which touches no future), may wait for the lock
                self._give_rest()  # committed: not kept waiting for another process's lock
                outcomes = await self._in_the_thread(self._execute_patiently, group, writes)
        except BaseException as exc:  # cancelled (the loop is shutting down) or no thread
            self._give_rest()
            for queued in [*group, *self._queue]:
                settle(queued[3], (None, self._interrupted(exc)))
            self._queue = []
            raise
        self._give_rest()
        split = self._on_loop and self._worth_it()
        firsts = 0
        for queued, (result, error) in zip(group, outcomes, strict=True):
            future = queued[3]  # settle(), inlined: three calls a saga
            if future.done():  # its caller is gone (cancelled)
                continue
            if split:
                if not queued[4]:  # handed over during the next group's COMMIT
                    self._rest.append((future, (result, error)))
                    continue
                firsts += 1
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)
        if firsts and self._rest:
            await asyncio.sleep(0)  # the first callers queue their next operations
        else:
            self._give_rest()

    def _commit_started(
        self, started: threading.Event, ops: list[_Queued], results: list[Any]
    ) -> list[Outcome]:
        """:meth:`_commit` in the thread, once it told the loop it has started."""
        started.set()
        return self._commit(ops, results, False)

    def _worth_it(self) -> bool:
        """Whether to overlap this group's COMMIT with the rest's turn: yes while the last
        such turn took at least _WORTH, and every _PROBE groups to look again."""
        if self._worth:
            return True
        self._skipped += 1
        if self._skipped >= _PROBE:
            self._skipped = 0
            return True
        return False

    def _give_rest(self) -> None:
        """Hand over the outcomes kept back of the last group (committed)."""
        rest, self._rest = self._rest, []
        for future, outcome in rest:
            settle(future, outcome)

    async def _in_the_thread(self, work: Callable[..., T], *args: Any) -> T:
        self._in_thread = self._executor.submit(work, *args)
        return await asyncio.wrap_future(self._in_thread)

    async def _thread_done(self) -> None:
        """Wait until the thread is done with the connection (a flusher cancelled while it
        ran left it running)."""
        if self._in_thread is not None and not self._in_thread.done():
            await asyncio.wait({asyncio.wrap_future(self._in_thread)})

    def _interrupted(self, exc: BaseException) -> StoreError:
        error = StoreError(
            f"{self._label}: the operation was interrupted ({exc!r}); "
            "it may or may not have been committed"
        )
        error.__cause__ = exc
        return error

    # -- the thread side -------------------------------------------------------------------
    def _execute_patiently(self, ops: list[_Queued], writes: bool) -> list[Outcome]:
        """:meth:`_execute` in the thread, waiting up to the busy timeout for a lock."""
        if not self._on_loop:
            return self._execute(ops, writes, on_loop=False)
        self._conn.execute(f"PRAGMA busy_timeout = {self._patience_ms}")
        try:
            return self._execute(ops, writes, on_loop=False)
        finally:
            self._conn.execute("PRAGMA busy_timeout = 0")


def _prepare(conn: sqlite3.Connection) -> int | None:
    """If the event loop may run the groups of ``conn`` (in WAL mode), set it up for that (no
    busy timeout) and return its busy timeout, for the groups that must run in the thread;
    else None."""
    if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
        return None
    patience_ms = int(conn.execute("PRAGMA busy_timeout").fetchone()[0])
    conn.execute("PRAGMA busy_timeout = 0")
    return patience_ms


def _usable_here(conn: sqlite3.Connection) -> bool:
    """Whether this thread may use ``conn`` (made in another with ``check_same_thread=False``)."""
    try:
        conn.cursor().close()  # checks the thread, touches no file
    except sqlite3.ProgrammingError:
        return False
    return True
