"""The connection of :class:`~sagaz.storage.sqlite.SQLiteSagaStore`: its lifecycle, the schema,
and the read and write paths that every part of the store shares.
"""

from __future__ import annotations

import asyncio
import functools
import os
import sqlite3
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

from sagaz.abc import SagaStore
from sagaz.exceptions import StoreError, StoreUnavailableError
from sagaz.records import SchemaVersions
from sagaz.storage import sqlite_schema as tables
from sagaz.storage.sqlite_groups import GroupCommitter, Together
from sagaz.storage.url import sqlite_path

__all__ = ["SQLiteConnection"]

T = TypeVar("T")
A = TypeVar("A")

_IN_CHUNK = 500  # well under SQLite's bound-parameter limit

#: SQLite's words for a file that cannot be used right now (StoreUnavailableError)
_UNAVAILABLE = ("locked", "disk I/O error", "unable to open", "disk is full")

_INSERT_SAGA = (  # the values of sqlite_rows.saga_params (NO_TEXT for an empty error, event,
    # created_at: a saga created now stores the update's moment, bound once)
    f"INSERT INTO saga_executions ({tables.SAGA_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, "
    "NULLIF(?6, 0), ?7, NULLIF(?8, 0), ?9, ?10, COALESCE(NULLIF(?11, 0), ?12), ?12)"
)


_Handle = sqlite3.Connection | sqlite3.Cursor
"""What an operation runs its SQL on: the store's connection (an operation of
:meth:`GroupCommitter.run`) or its group's cursor (of :meth:`GroupCommitter.submit`)."""


def _rows(sql_on: _Handle, sql: str, params: Sequence[Any] = ()) -> list[Any]:
    """Every row of one query."""
    return sql_on.execute(sql, params).fetchall()


def _change(sql_on: _Handle, sql: str, params: Sequence[Any] = ()) -> int:
    """Execute one statement; return the number of rows it changed."""
    return sql_on.execute(sql, params).rowcount


def _change_args(cursor: sqlite3.Cursor, args: tuple[str, Sequence[Any]]) -> int:
    """:func:`_change` of ``(sql, params)``."""
    return cursor.execute(*args).rowcount


def _rows_args(cursor: sqlite3.Cursor, args: tuple[str, Sequence[Any]]) -> list[Any]:
    """:func:`_rows` of ``(sql, params)``."""
    return cursor.execute(*args).fetchall()


class SQLiteConnection(SagaStore):
    """What every part of :class:`~sagaz.storage.sqlite.SQLiteSagaStore` shares: the connection,
    its lifecycle and the read and write paths (the operations are in the sibling modules).
    """

    def __init__(
        self, path_or_url: str | os.PathLike[str] = "sagaz.db", *, busy_timeout: float = 30.0
    ) -> None:
        self.path = sqlite_path(os.fspath(path_or_url))
        self._busy_timeout_ms = int(busy_timeout * 1000)
        self._groups: GroupCommitter | None = None  # the connection, the queue, the thread
        self._lifecycle_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"SQLiteSagaStore({self.path!r})"

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Open the file (WAL mode) and create the schema if the file has none. Idempotent.

        An older schema raises :class:`~sagaz.exceptions.SchemaOutdatedError`: migrate it
        with ``sagaz db upgrade`` (:meth:`upgrade_schema`)."""
        async with self._lifecycle_lock:
            if self._groups is not None:
                return
            connect = functools.partial(
                tables.open_database, self.path, self._busy_timeout_ms, url=self._store_url()
            )
            try:
                self._groups = await GroupCommitter.open(
                    connect,
                    error=self._error,
                    label=f"SQLite store {self.path!r}",
                    together=self._together(),
                )
            except sqlite3.Error as exc:
                raise self._error(exc) from exc
            self._started = True

    async def stop(self) -> None:
        """Run the queued operations, wait for the running group, then close the connection
        and its thread. Idempotent."""
        async with self._lifecycle_lock:
            groups, self._groups = self._groups, None
            self._started = False
            if groups is not None:
                try:
                    await groups.close()
                except sqlite3.Error as exc:
                    raise self._error(exc) from exc

    def _store_url(self) -> str:
        """The ``sqlite:///`` URL of the file (for ``--store`` and messages)."""
        return f"sqlite:///{self.path}"

    async def schema_version(self) -> int:
        """The schema version recorded in the database."""
        rows = await self._fetch("SELECT MAX(version) FROM schema_version")
        return int(rows[0][0])

    async def schema_versions(self) -> SchemaVersions:
        try:
            return await asyncio.to_thread(tables.read_versions, self.path)
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    async def upgrade_schema(self) -> SchemaVersions:
        upgrade = functools.partial(
            tables.upgrade_database, self.path, self._busy_timeout_ms, url=self._store_url()
        )
        try:
            return await asyncio.to_thread(upgrade)
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    def _together(self) -> Together | None:
        """How the group committer may run a group of writes all at once (None: operation
        by operation; the store's: :func:`~sagaz.storage.sqlite.batches.run_together`)."""
        return None

    def _committer(self) -> GroupCommitter:
        if self._groups is None:
            raise StoreError(
                f"{self!r} is not started: call await store.start() or use async with store"
            )
        return self._groups

    def _error(self, exc: sqlite3.Error) -> StoreError:
        """The :class:`StoreError` for ``exc``: a :class:`StoreUnavailableError` when the
        file cannot be used right now (locked by another process, I/O error, disk full), so
        the engine waits for it instead of failing the event."""
        hint = ""
        text = str(exc)
        if "locked" in text:
            hint = (
                "; another process held the write lock longer than busy_timeout: raise "
                "SQLiteSagaStore(..., busy_timeout=) or use PostgreSQL for many writers"
            )
        elif "unable to open" in text:
            hint = "; check that the directory exists and that this process may write to it"
        message = f"SQLite store {self.path!r}: {exc}{hint}"
        if isinstance(exc, sqlite3.OperationalError) and any(
            condition in text for condition in _UNAVAILABLE
        ):
            return StoreUnavailableError(message)
        return StoreError(message)

    async def _write(self, op: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``op`` (all of its SQL, on the store's connection) as one atomic operation of the
        next group; return its result once that group has committed."""
        return await self._committer().run(op)

    def _submit(
        self, op: Callable[[sqlite3.Cursor, A], T], arg: A, *, writes: bool = True
    ) -> asyncio.Future[T]:
        """:meth:`_write` of ``op(cursor, arg)`` on the group's cursor: a module-level function
        and its argument, no closure (the frequent operations: see
        :meth:`GroupCommitter.submit`); ``writes=False`` promises that ``op`` only reads."""
        return self._committer().submit(op, arg, writes=writes)

    def _moment(self) -> tuple[datetime, str]:
        """The time that stamps the writes of the next group, and its text
        (:meth:`GroupCommitter.moment`)."""
        return self._committer().moment()

    async def _write_one(self, sql: str, params: Sequence[Any] = ()) -> int:
        """:meth:`_write` one statement; return the number of rows it changed."""
        return await self._submit(_change_args, (sql, params))

    async def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """The rows of one query, read in the next group (after the writes queued before it)."""
        return await self._submit(_rows_args, (sql, params), writes=False)
