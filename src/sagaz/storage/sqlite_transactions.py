"""One group's transaction on the SQLite store's connection, for
:class:`~sagaz.storage.sqlite_groups.GroupCommitter` (see its module for where a group runs):
``BEGIN``, every operation (all at once first if they may, see :data:`Together`), ``COMMIT``;
with a savepoint per operation only if one of them failed; every operation of a lost
transaction fails with a :class:`~sagaz.exceptions.StoreError` that says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable
from typing import Any

from sagaz.exceptions import StoreError, StoreUnavailableError
from sagaz.storage.group_commit import Outcome

__all__ = ["GroupTransactions", "Op", "Together"]

Op = Callable[[sqlite3.Cursor, Any], Any]
"""An operation: runs all its SQL on the group's cursor, given its argument; returns a
result."""

_Queued = tuple[Op, Any, bool, "asyncio.Future[Any]", bool]
"""An operation waiting for its group: the operation, its argument, whether it writes, the
future its caller awaits, and whether its caller starts new work once it has its result (an
event's claim); a tuple: one object per call, none for the collector to track beyond it."""


Together = Callable[[sqlite3.Cursor, list[_Queued]], "list[Any] | None"]
"""A group of writes run all at once (the SQLite store's
:func:`~sagaz.storage.sqlite.batches.run_together`): given the group's cursor in its
transaction and the queued operations, it returns their results in order, or None having
written nothing (the group then runs operation by operation), or raises: the committer rolls
back what it wrote and runs the group operation by operation (each operation finds its own
case there; one that fails fails its caller alone)."""


class _Busy(Exception):
    """A group on the event loop met a lock another connection holds (it was rolled back)."""


class GroupTransactions:
    """Runs a group of queued operations in one transaction on ``_conn`` (the committer's
    connection, set by the subclass with ``_error``, ``_label`` and ``_together``)."""

    _conn: sqlite3.Connection
    _error: Callable[[sqlite3.Error], StoreError]
    _label: str
    _together: Together | None

    # -- running a group (on the loop, or in the thread) -----------------------------------
    def _execute(
        self, ops: list[_Queued], writes: bool, *, on_loop: bool, commit: bool = True
    ) -> list[Outcome]:
        """One group: ``BEGIN``, every operation, ``COMMIT``; with a savepoint per operation
        only if one of them failed. ``on_loop``: raise :class:`_Busy`, the group rolled
        back, at the first lock another connection holds."""
        conn = self._conn
        begin = "BEGIN IMMEDIATE" if writes else "BEGIN"
        try:
            conn.execute(begin)
        except sqlite3.Error as exc:  # e.g. another process kept the write lock too long
            self._check_busy(exc, on_loop)
            return [(None, self._failure(exc)) for _ in ops]
        cursor = conn.cursor()  # the group's
        if self._together is not None and writes and len(ops) > 1:
            try:
                together = self._together(cursor, ops)
            except Exception as exc:  # not the common case: undone, then op by op
                together = None
                lost = self._undo_together(exc, begin, on_loop, ops)
                if lost is not None:
                    return lost
            if together is not None:
                if not commit:
                    return [(result, None) for result in together]
                return self._commit(ops, together, on_loop)
        results: list[Any] = []
        try:
            for op, arg, *_ in ops:
                results.append(op(cursor, arg))
                if not conn.in_transaction:  # the operation ended the group's transaction
                    return self._lost(ops, None)
        except Exception as exc:
            lost = self._roll_back(ops)
            if lost is not None:
                return lost
            self._check_busy(exc, on_loop)
            if len(ops) == 1:
                return [(None, self._failure(exc))]
            return self._execute_with_savepoints(ops, begin, on_loop)
        if not commit:
            return [(result, None) for result in results]
        return self._commit(ops, results, on_loop)

    def _commit(self, ops: list[_Queued], results: list[Any], on_loop: bool) -> list[Outcome]:
        """COMMIT the group whose operations gave ``results``; their outcomes."""
        conn = self._conn
        if not conn.in_transaction:  # an operation ended the group's transaction
            return self._lost(ops, None)
        try:
            conn.execute("COMMIT")
        except Exception as exc:
            self._check_busy(exc, on_loop)
            return self._lost(ops, self._failure(exc))
        return [(result, None) for result in results]

    def _roll_back(self, ops: list[_Queued]) -> list[Outcome] | None:
        """Roll back the group's open transaction; the outcomes of ``ops`` if that fails (the
        group is lost), else None."""
        if self._conn.in_transaction:
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.Error as rollback:
                return self._lost(ops, self._failure(rollback))
        return None

    def _undo_together(
        self, exc: Exception, begin: str, on_loop: bool, ops: list[_Queued]
    ) -> list[Outcome] | None:
        """Roll back what the operations run together wrote (``exc``: why they stopped) and
        begin the group again, to run it operation by operation; the outcomes if it cannot
        begin again, else None."""
        conn = self._conn
        lost = self._roll_back(ops)
        if lost is not None:
            return lost
        self._check_busy(exc, on_loop)
        try:
            conn.execute(begin)
        except sqlite3.Error as again:
            self._check_busy(again, on_loop)
            return [(None, self._failure(again)) for _ in ops]
        return None

    def _check_busy(self, exc: Exception, on_loop: bool) -> None:
        if on_loop and _is_busy(exc):
            if self._conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("ROLLBACK")
            raise _Busy from exc

    def _execute_with_savepoints(
        self, ops: list[_Queued], begin: str, on_loop: bool
    ) -> list[Outcome]:
        """The group again, after one of its operations failed: each in a savepoint."""
        conn = self._conn
        try:
            conn.execute(begin)
        except sqlite3.Error as exc:
            self._check_busy(exc, on_loop)
            return [(None, self._failure(exc)) for _ in ops]
        outcomes: list[Outcome] = []
        cursor = conn.cursor()
        try:
            for op in ops:
                outcome = self._execute_one(cursor, op, on_loop)
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

    def _execute_one(self, cursor: sqlite3.Cursor, op: _Queued, on_loop: bool) -> Outcome:
        """Run ``op`` in a savepoint: released if it succeeds, rolled back if it fails."""
        conn = cursor.connection
        conn.execute("SAVEPOINT op")
        try:
            result = op[0](cursor, op[1])
            conn.execute("RELEASE op")
        except Exception as exc:
            self._check_busy(exc, on_loop)
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK TO op")
                conn.execute("RELEASE op")
            return None, self._failure(exc)
        return result, None

    def _lost(self, ops: list[_Queued], cause: BaseException | None) -> list[Outcome]:
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
        and code & 0xFF == sqlite3.SQLITE_BUSY
    )
