"""Group commit for :class:`~sagaz.storage.postgres.PostgresSagaStore`: one transaction for
the writes that many sagas issue at once.

>>> groups = PgGroupCommitter(pool, unavailable=store._unavailable, label="…")  # doctest: +SKIP
>>> await groups.run(lambda conn: conn.execute("DELETE FROM inbox"))  # doctest: +SKIP

An operation is a coroutine function ``op(conn) -> result`` that runs all its SQL on the
connection it is given. :meth:`PgGroupCommitter.run` queues it; a flusher task takes every
queued operation as one group, runs the group on one pooled connection in one transaction and
commits it once; results and errors reach their callers only after that ``COMMIT``. While a
group runs, new operations queue up for the next one: the more sagas write at once, the
larger the groups and the fewer the commits. Up to ``connections`` groups run at once, each
on a connection of its own. Operations of one caller never overlap (each is awaited), so
their order is kept; a deadlock between two groups is retried (see below).

A group that comes back while no other group is at the server is handed to its callers in
two halves while the process has a core to spare
(:class:`~sagaz.storage.group_commit.HandOver`), so that the server and the client work at
the same time instead of in turn; meanwhile a group holding operations queued ``first``
(whose callers start new work: an event's claim) and others gives the first ones their
results a loop turn before the others, back alone or not.

An operation may also come with a batch form, ``(runner, item, rows)``: the group then runs
the items of every operation with the same ``runner`` as one call ``runner(conn, items)``
(one statement over arrays, one round trip for them all) instead of one call per operation.
``rows`` names the rows the item writes (hashables, e.g. ``("saga", saga_id)``); two items
that share one (rows the statement would touch twice) never share a batch: the later one
runs alone, after it, in the same transaction.

One statement: given ``statement``, a group whose operations are all batches and write no
row twice runs as ``statement(conn, {runner: items})``, a single statement (data-modifying
CTEs) that the server commits on its own: one round trip, no ``BEGIN``/``COMMIT``. Its
statements' CTEs all see the same snapshot, which is why a row written twice sends the group
the transaction's way. It returns ``{runner: results}``; a result :data:`UNRESOLVED` means
"that item wrote nothing, run its operation again": those operations then run as a group of
their own in a transaction (below). If the statement fails, it wrote nothing either, and the
whole group runs in a transaction.

One operation's error fails only its caller. The group first runs in one transaction (the
common case: nothing fails, one round trip per statement or batch, plus ``BEGIN`` and
``COMMIT``); if an operation raises, that transaction is rolled back and the group runs again,
each operation alone (no batches) in a transaction of its own, one after the other, so that
no row stays locked while the rest of the group runs: an operation that fails there is
rolled back alone and its caller gets its error (a deadlock or serialization failure is
retried in its transaction first, then queued again for a later group; after
:data:`_REQUEUES` groups, :class:`~sagaz.exceptions.StoreUnavailableError`). Operations must
therefore only touch the database: they may run several times, all but the last rolled back.

The committer keeps the pooled connections its groups ran on, one per group at the server at
most, until :meth:`PgGroupCommitter.close` (unless ``keep`` is false: a pool with no
connection to spare for the reads): taking a connection from an asyncpg pool and giving it
back cost a group more of the client's CPU than the round trip of its statement.
A connection whose group failed (the driver, the server, a cancellation), or that was closed
while kept, goes back to the pool, which replaces it if it is broken.

A lost connection or server fails every operation of the group: each caller gets its own
:class:`~sagaz.exceptions.StoreUnavailableError` (``unavailable(exc)`` decides which driver
errors mean that), or a :class:`~sagaz.exceptions.StoreError` when the transaction was lost
for another reason. A caller cancelled while its operation is queued drops it; once running,
it completes and its result is discarded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sagaz.exceptions import StoreError, StoreUnavailableError
from sagaz.storage.group_commit import HandOver, Outcome, settle
from sagaz.storage.postgres_group_ops import NO_ARG, Batch, BatchRunner, Queued, one_statement

__all__ = ["UNRESOLVED", "BatchRunner", "PgGroupCommitter", "Statement"]

T = TypeVar("T")

Statement = Callable[[Any, dict[BatchRunner, list[Any]]], Awaitable[dict[BatchRunner, list[Any]]]]
"""Runs the items of a group's batches as one statement; a result per item, by runner."""

UNRESOLVED: Any = type("Unresolved", (), {"__repr__": lambda self: "UNRESOLVED"})()
"""A one-statement result: the item wrote nothing; run its operation in a transaction."""

_RETRYABLE = frozenset({"40P01", "40001"})  # deadlock detected, serialization failure
_RETRIES = 3
_REQUEUES = 5  # then a deadlocking operation's caller gets the error
_MAX_GROUP = 1000  # operations in one transaction at most (bounds a group's duration)


class _GroupLost(Exception):
    """The group's transaction or connection is gone: all but ``done`` (committed) fail."""

    def __init__(self, cause: BaseException, done: list[Outcome] | None = None) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.done: list[Outcome] = done or []


class PgGroupCommitter:
    """Runs write operations of many callers in shared transactions on an asyncpg pool.

    ``unavailable(exc)`` tells whether a driver error means the server cannot be reached;
    ``label`` names the store in the errors made here; ``statement`` runs an all-batch group
    as one statement (see the module docstring); ``keep``: keep the connections between
    groups (the pool must have others for the rest of the store). :attr:`commits` counts
    the transactions committed (a group, whatever its size, is one).
    """

    def __init__(
        self,
        pool: Any,
        *,
        unavailable: Callable[[BaseException], bool],
        label: str,
        connections: int = 1,
        statement: Statement | None = None,
        keep: bool = True,
    ) -> None:
        self._pool = pool
        self._statement = statement
        self._unavailable = unavailable
        self._label = label
        self._connections = max(1, connections)
        self._keep = keep
        self._queue: list[Queued] = []
        self._flushers: set[asyncio.Task[None]] = set()
        #: a flusher is started and has not yet taken the queue: it takes what comes meanwhile
        self._collecting = False
        #: groups at the server (sent, not yet back)
        self._in_flight = 0
        #: pooled connections kept between groups (see the module docstring)
        self._idle: list[Any] = []
        self._handing = HandOver()
        #: the event loop, taken at the first operation: ``asyncio.get_running_loop()``
        #: makes a ``getpid`` system call (about 0.5 µs here), per operation in ``run``
        self._loop: asyncio.AbstractEventLoop | None = None
        #: transactions committed by this committer
        self.commits = 0
        #: operations whose results reached their callers through a commit
        self.operations = 0
        #: groups run as one statement (see the module docstring)
        self.statements = 0

    def run(
        self,
        op: Callable[..., Awaitable[T]] | None,
        arg: Any = NO_ARG,
        *,
        batch: Batch | None = None,
        first: bool = False,
    ) -> asyncio.Future[T]:
        """Queue ``op`` for the next group; await the future returned for its result, set
        once that group has committed.

        The operation is ``op(conn)``, or ``op(conn, arg)`` given ``arg``; ``op`` None runs
        the batch's runner on its item alone. ``batch`` is its batch form (see the module
        docstring): the operation and the batch must write the same. ``first``: its caller
        starts new work once it has the result (an event's claim): it gets it a loop turn
        before the group's other callers (:class:`HandOver`). A plain function, not a
        coroutine: one object less per operation, alive until its group is done."""
        if op is None and batch is None:
            raise TypeError("PgGroupCommitter.run: give an operation, a batch, or both")
        loop = self._loop
        if loop is None or loop.is_closed():  # the first operation, or a new loop (tests)
            loop = self._loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.append(Queued(op, future, batch, arg, first))
        # a flusher about to take the queue takes this one too: another would find it empty
        if not self._collecting and len(self._flushers) < self._connections:
            self._collecting = True
            self._flushers.add(loop.create_task(self._flush(), name="sagaz-postgres-flusher"))
        return future  # cancelling its awaiting caller cancels it: the flusher drops it

    async def close(self) -> None:
        """Run what is queued and wait for the running group, then give the connections
        kept back to the pool. Queue nothing after it."""
        while self._flushers:
            await asyncio.wait(set(self._flushers))  # not cancelled with the caller
        while self._idle:
            await self._give_back(self._idle.pop())

    async def _flush(self) -> None:
        """Run the queued operations, a group at a time, until none is left."""
        this = asyncio.current_task()
        try:
            try:
                await asyncio.sleep(0)  # let the callers of this moment queue theirs first
            finally:
                self._collecting = False  # what is queued from now on may need a flusher
            while self._queue:
                group = [q for q in self._queue[:_MAX_GROUP] if not q.future.done()]
                del self._queue[:_MAX_GROUP]  # the next group collects while this one runs
                if group:
                    await self._run_group(group)
        finally:
            # in the same step as the empty queue was seen: a caller queueing after this
            # finds a free place and starts a flusher (a done callback would come too late)
            self._flushers.discard(this)

    async def _run_group(self, group: list[Queued]) -> None:
        self._in_flight += 1
        try:
            conn = await self._connection()
            try:
                outcomes, healthy = await self._execute(conn, group)
            except BaseException:
                await self._give_back(conn)
                raise
            if healthy and self._keep:
                self._idle.append(conn)
            else:
                await self._give_back(conn)
        except asyncio.CancelledError as exc:  # the loop is shutting down
            self._interrupt(group, exc)
            raise
        except _GroupLost as lost:
            outcomes = self._lost_group(lost, group)
        except Exception as exc:  # no connection, or releasing it failed
            outcomes = [(None, self._lost(exc)) for _ in group]
        else:
            self.commits += 1
            self.operations += len(group)
        finally:
            self._in_flight -= 1
        group, outcomes = self._requeue_deadlocked(group, outcomes)
        await self._hand_over(group, outcomes)

    async def _connection(self) -> Any:
        """A kept connection, or one from the pool; a kept one the server closed meanwhile
        (a restart, an idle timeout) goes back to the pool, which replaces it."""
        while self._idle:
            conn = self._idle.pop()
            if _open(conn):
                return conn
            await self._give_back(conn)
        return await self._pool.acquire()

    async def _give_back(self, conn: Any) -> None:
        """Return a connection to the pool, which replaces it if it is broken (a release
        that fails changes nothing for the callers: the pool's close ends the connection)."""
        try:
            await self._pool.release(conn)
        except Exception:  # the connection is broken: the pool's close ends it
            return

    def _requeue_deadlocked(
        self, group: list[Queued], outcomes: list[Outcome]
    ) -> tuple[list[Queued], list[Outcome]]:
        """Queue again, for a later group, the operations that kept deadlocking in their
        own transactions (the other transaction may be done by then); the others, with
        their outcomes. One still deadlocking after :data:`_REQUEUES` groups fails as
        unavailable for now: a saga then waits for the store and resumes from its last
        checkpoint, where a raw driver error would fail its step (compensated,
        dead-lettered, its steps all done)."""
        if all(error is None or _sqlstate(error) not in _RETRYABLE for _, error in outcomes):
            return group, outcomes  # the usual case
        settled: list[tuple[Queued, Outcome]] = []
        for queued, (result, error) in zip(group, outcomes, strict=True):
            if error is None or _sqlstate(error) not in _RETRYABLE or queued.future.done():
                settled.append((queued, (result, error)))
            elif queued.requeued < _REQUEUES:
                queued.requeued += 1
                self._queue.append(queued)
            else:
                unavailable = StoreUnavailableError(
                    f"{self._label}: the operation kept deadlocking ({error}); retry it"
                )
                unavailable.__cause__ = error
                settled.append((queued, (None, unavailable)))
        return [q for q, _ in settled], [o for _, o in settled]

    async def _hand_over(self, group: list[Queued], outcomes: list[Outcome]) -> None:
        """Give each caller of ``group`` its outcome (:class:`HandOver`: the callers that
        start new work first, else in two halves if no other group is at the server)."""
        futures = [queued.future for queued in group]
        first = [index for index, queued in enumerate(group) if queued.first]
        if 0 < len(first) < len(group):  # theirs first, each part in the group's order
            order = first + [index for index, queued in enumerate(group) if not queued.first]
            futures = [futures[index] for index in order]
            outcomes = [outcomes[index] for index in order]
        try:
            await self._handing(
                futures, outcomes, settle, alone=not self._in_flight, first=len(first)
            )
        except asyncio.CancelledError as exc:  # the loop is shutting down
            self._interrupt([], exc)
            raise

    def _interrupt(self, group: list[Queued], exc: BaseException) -> None:
        """The flusher is cancelled: ``group`` and everything queued fail as interrupted."""
        for queued in [*group, *self._queue]:
            settle(queued.future, (None, self._lost(exc, interrupted=True)))
        self._queue.clear()

    async def _execute(self, conn: Any, group: list[Queued]) -> tuple[list[Outcome], bool]:
        """One group: as one statement if it can, else in one transaction. Its outcomes, and
        whether the connection may run the next group (no transaction of it was lost)."""
        batches = None if self._statement is None else one_statement(group)
        if batches is None or self._statement is None:
            return await self._transaction(conn, group), True
        try:
            results = await self._statement(
                conn, {runner: items for runner, (_, items) in batches.items()}
            )
        except Exception as exc:
            if self._unavailable(exc):
                raise _GroupLost(exc) from exc
            return await self._transaction(conn, group), True  # it wrote nothing: the safe way
        self.statements += 1
        healthy = True
        outcomes: list[Outcome] = [(None, None)] * len(group)
        again: list[int] = []
        for runner, (indexes, _) in batches.items():
            for index, result in zip(indexes, results[runner], strict=True):
                if result is UNRESOLVED:
                    again.append(index)
                outcomes[index] = (result, None)
        if again:
            again.sort()  # the group's order
            rest = [group[index] for index in again]
            try:
                redone = await self._transaction(conn, rest)
            except _GroupLost as lost:
                redone = self._lost_group(lost, rest)
                healthy = False
            else:
                self.commits += 1  # (the group's own is counted by _run_group)
            for index, outcome in zip(again, redone, strict=True):
                outcomes[index] = outcome
        return outcomes, healthy

    async def _transaction(self, conn: Any, group: list[Queued]) -> list[Outcome]:
        """One group in one transaction; if an op fails, each op in a transaction of its own."""
        transaction = conn.transaction()
        await self._guard(transaction.start())
        try:
            results = await self._run_all(conn, group)
        except Exception as exc:
            if self._unavailable(exc):
                raise _GroupLost(exc) from exc
            await self._guard(transaction.rollback())
            if len(group) == 1 and _sqlstate(exc) not in _RETRYABLE:
                return [(None, exc)]
            return await self._execute_each(conn, group)
        except BaseException:
            await self._abandon(transaction)
            raise
        await self._guard(transaction.commit())
        return [(result, None) for result in results]

    @staticmethod
    async def _run_all(conn: Any, group: list[Queued]) -> list[Any]:
        """Every operation of the group: the batches first, then the others one by one."""
        results: list[Any] = [None] * len(group)
        batches: dict[BatchRunner, tuple[list[int], list[Any], set[Any]]] = {}
        alone: list[int] = []
        for index, queued in enumerate(group):
            if queued.batch is None:
                alone.append(index)
                continue
            runner, item, rows = queued.batch
            indexes, items, keys = batches.setdefault(runner, ([], [], set()))
            if not keys.isdisjoint(rows):
                alone.append(index)  # would touch a row of the batch a second time
                continue
            keys.update(rows)
            indexes.append(index)
            items.append(item)
        for runner, (indexes, items, _) in batches.items():
            for index, result in zip(indexes, await runner(conn, items), strict=True):
                results[index] = result
        for index in alone:
            results[index] = await group[index].call(conn)
        return results

    async def _execute_each(self, conn: Any, group: list[Queued]) -> list[Outcome]:
        """Run each operation of a failed group in a transaction of its own, in order (in
        savepoints of one transaction, a group of hundreds held its rows 25 s and more on a
        loaded machine). A group lost midway is lost from the operation it was in."""
        outcomes: list[Outcome] = []
        for queued in group:
            try:
                outcomes.append(await self._execute_alone(conn, queued))
            except _GroupLost as lost:
                raise _GroupLost(lost.cause, outcomes) from lost.cause
        return outcomes

    async def _execute_alone(self, conn: Any, op: Queued) -> Outcome:
        """Run ``op`` in a transaction of its own: committed if it succeeds, rolled back if
        it fails (a deadlock or serialization failure is retried first)."""
        for attempt in range(_RETRIES):
            transaction = conn.transaction()
            await self._guard(transaction.start())
            try:
                result = await op.call(conn)
            except Exception as exc:
                if self._unavailable(exc):
                    raise _GroupLost(exc) from exc
                await self._guard(transaction.rollback())
                if _sqlstate(exc) in _RETRYABLE and attempt + 1 < _RETRIES:
                    continue
                return None, exc
            except BaseException:
                await self._abandon(transaction)
                raise
            await self._guard(transaction.commit())
            return result, None
        raise AssertionError("unreachable")  # pragma: no cover

    async def _guard(self, step: Awaitable[Any]) -> None:
        """Run a BEGIN, COMMIT, SAVEPOINT or ROLLBACK; its failure loses the whole group."""
        try:
            await step
        except Exception as exc:
            raise _GroupLost(exc) from exc

    @staticmethod
    async def _abandon(transaction: Any) -> None:
        """Roll back a transaction the group cannot finish (the pool resets the connection
        anyway; this only tries to leave it clean)."""
        try:
            await transaction.rollback()
        except Exception:  # the connection is broken: the pool replaces it
            return

    def _lost_group(self, lost: _GroupLost, group: list[Queued]) -> list[Outcome]:
        """The outcomes of lost ``group``: ``lost.done``, then the loss's error for the rest."""
        return lost.done + [(None, self._lost(lost.cause)) for _ in group[len(lost.done) :]]

    def _lost(self, cause: BaseException, *, interrupted: bool = False) -> StoreError:
        """The error each caller of a lost group gets (a new one per caller)."""
        if interrupted:
            error: StoreError = StoreError(
                f"{self._label}: the operation was interrupted ({cause!r}); "
                "it may or may not have been committed"
            )
        elif self._unavailable(cause):
            error = StoreUnavailableError(
                f"{self._label} is unavailable ({type(cause).__name__}: {cause}); "
                "the transaction may or may not have been committed; retry once it is back"
            )
        else:
            error = StoreError(
                f"{self._label}: the transaction was lost ({type(cause).__name__}: {cause})"
            )
        error.__cause__ = cause
        return error


def _open(conn: Any) -> bool:
    """Whether a kept connection is still open (a closed one's pool proxy raises)."""
    try:
        return not conn.is_closed()
    except Exception:
        return False


def _sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of an asyncpg error, if it has one."""
    state = getattr(exc, "sqlstate", None)
    return state if isinstance(state, str) else None
