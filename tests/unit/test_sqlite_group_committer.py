"""``GroupCommitter`` on its own, on a one-table database: operations queued together share
one transaction, without savepoints unless one of them fails
(``tests/unit/test_sqlite_group_commit.py`` covers the same through ``SQLiteSagaStore``)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from sagaz.exceptions import StoreError
from sagaz.storage.sqlite_groups import GroupCommitter

Op = Callable[[sqlite3.Connection], Any]


class Database:
    """A file with table ``t (k PRIMARY KEY)``, a committer on it, and the SQL it ran."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.statements: list[str] = []
        self.ran: list[str] = []  # operations that ran, in order (thread side)

    def connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=0.1)
        conn.execute("CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY)")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS child (k TEXT REFERENCES t (k) "
            "DEFERRABLE INITIALLY DEFERRED)"
        )
        conn.execute("PRAGMA foreign_keys = ON")
        conn.set_trace_callback(self.statements.append)
        return conn

    def insert(self, key: str) -> Op:
        def op(conn: sqlite3.Connection) -> str:
            self.ran.append(key)
            conn.execute("INSERT INTO t VALUES (?)", (key,))
            return key

        return op

    def committed(self) -> set[str]:
        """What another connection (another process) sees in the file."""
        with sqlite3.connect(self.path) as conn:
            return {row[0] for row in conn.execute("SELECT k FROM t")}

    def count(self, statement: str) -> int:
        return self.statements.count(statement)


class Hold:
    """An operation that holds the committer's thread (its group) until released."""

    def __init__(self) -> None:
        self.running, self.released = threading.Event(), threading.Event()

    def __call__(self, conn: sqlite3.Connection) -> str:
        self.running.set()
        self.released.wait(5)
        return "held"

    async def started(self) -> None:
        assert await asyncio.to_thread(self.running.wait, 5)


def store_error(exc: sqlite3.Error) -> StoreError:
    return StoreError(f"test store: {exc}")


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[tuple[Database, GroupCommitter]]:
    database = Database(tmp_path / "groups.db")
    groups = await GroupCommitter.open(database.connect, error=store_error, label="test store")
    try:
        yield database, groups
    finally:
        await groups.close()


async def test_operations_queued_together_commit_in_one_transaction_in_queue_order(
    db: tuple[Database, GroupCommitter],
) -> None:
    database, groups = db
    database.statements.clear()
    keys = [f"k{n}" for n in range(50)]
    assert await asyncio.gather(*(groups.run(database.insert(k)) for k in keys)) == keys
    assert database.ran == keys
    assert (database.count("BEGIN IMMEDIATE"), database.count("COMMIT")) == (1, 1)
    assert database.committed() == set(keys)


async def test_operations_queued_while_a_group_runs_form_the_next_group(
    db: tuple[Database, GroupCommitter],
) -> None:
    database, groups = db
    hold = Hold()
    database.statements.clear()
    first = asyncio.create_task(groups.run(hold))
    await hold.started()
    later = [asyncio.create_task(groups.run(database.insert(f"k{n}"))) for n in range(10)]
    await asyncio.sleep(0)  # all ten queued while the first group holds the thread
    hold.released.set()
    await asyncio.gather(first, *later)
    assert (database.count("BEGIN IMMEDIATE"), database.count("COMMIT")) == (2, 2)
    assert database.committed() == {f"k{n}" for n in range(10)}


async def test_a_result_is_returned_only_once_its_group_committed(
    db: tuple[Database, GroupCommitter],
) -> None:
    database, groups = db

    async def write(key: str) -> bool:
        await groups.run(database.insert(key))
        return key in database.committed()

    assert await asyncio.gather(*(write(f"k{n}") for n in range(20))) == [True] * 20


async def test_a_failing_operation_fails_alone_and_its_own_writes_are_undone(
    db: tuple[Database, GroupCommitter],
) -> None:
    database, groups = db

    def half_done(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO t VALUES ('half')")
        raise ValueError("the op gave up")

    results = await asyncio.gather(
        groups.run(database.insert("a")),
        groups.run(half_done),
        groups.run(database.insert("a")),  # duplicate key: an sqlite3 error
        groups.run(database.insert("b")),
        return_exceptions=True,
    )
    assert results[0] == "a" and results[3] == "b"
    assert isinstance(results[1], ValueError)  # not an sqlite3 error: raised as it is
    assert isinstance(results[2], StoreError)  # through the store's own error
    assert str(results[2]) == "test store: UNIQUE constraint failed: t.k"
    assert isinstance(results[2].__cause__, sqlite3.IntegrityError)
    assert database.count("COMMIT") == 1
    assert database.committed() == {"a", "b"}


async def test_a_group_where_nothing_fails_runs_no_savepoint(
    db: tuple[Database, GroupCommitter],
) -> None:
    database, groups = db
    results = await asyncio.gather(*(groups.run(database.insert(f"k{n}")) for n in range(5)))
    assert results == [f"k{n}" for n in range(5)]
    assert not [sql for sql in database.statements if "SAVEPOINT" in sql or "ROLLBACK" in sql]
    assert database.count("COMMIT") == 1
    assert database.ran == [f"k{n}" for n in range(5)]  # each ran once


async def test_a_failing_operation_reruns_its_group_with_a_savepoint_per_operation(
    db: tuple[Database, GroupCommitter],
) -> None:
    database, groups = db
    results = await asyncio.gather(
        groups.run(database.insert("a")),
        groups.run(database.insert("a")),  # duplicate key: fails, in either run
        groups.run(database.insert("b")),
        return_exceptions=True,
    )
    assert results[0] == "a" and results[2] == "b"
    assert isinstance(results[1], StoreError)
    # the first run stopped at the failure and was rolled back; the second ran all three
    assert database.ran == ["a", "a", "a", "a", "b"]
    assert database.count("ROLLBACK") == 1
    assert database.count("SAVEPOINT op") == 3
    assert database.count("ROLLBACK TO op") == 1
    assert database.count("COMMIT") == 1
    assert database.committed() == {"a", "b"}


async def test_a_failing_operation_alone_is_rolled_back_without_a_second_run(
    db: tuple[Database, GroupCommitter],
) -> None:
    database, groups = db
    await groups.run(database.insert("a"))
    with pytest.raises(StoreError, match="UNIQUE constraint failed"):
        await groups.run(database.insert("a"))
    assert database.ran == ["a", "a"]
    assert database.count("SAVEPOINT op") == 0
    assert database.committed() == {"a"}


async def test_a_cancelled_queued_operation_never_runs(
    db: tuple[Database, GroupCommitter],
) -> None:
    database, groups = db
    hold = Hold()
    first = asyncio.create_task(groups.run(hold))
    await hold.started()
    cancelled = asyncio.create_task(groups.run(database.insert("cancelled")))
    kept = asyncio.create_task(groups.run(database.insert("kept")))
    await asyncio.sleep(0)  # both queued behind the running group
    cancelled.cancel()
    hold.released.set()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert await first == "held"
    assert await kept == "kept"
    assert database.ran == ["kept"]
    assert database.committed() == {"kept"}


async def test_an_operation_that_ends_the_transaction_fails_its_whole_group(
    db: tuple[Database, GroupCommitter],
) -> None:
    database, groups = db

    def rollback(conn: sqlite3.Connection) -> None:
        conn.execute("ROLLBACK")

    results = await asyncio.gather(
        groups.run(database.insert("a")),
        groups.run(rollback),
        groups.run(database.insert("b")),
        return_exceptions=True,
    )
    for result in results:
        assert isinstance(result, StoreError)
        assert str(result).startswith("test store: the transaction was lost")
    assert database.ran == ["a"]  # nothing runs after the transaction is gone
    assert database.committed() == set()
    assert await groups.run(database.insert("c")) == "c"  # the next group starts afresh
    assert database.committed() == {"c"}


async def test_a_failed_commit_fails_every_operation_of_the_group(
    db: tuple[Database, GroupCommitter],
) -> None:
    database, groups = db

    def orphan(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO child VALUES ('nobody')")  # checked at COMMIT only

    results = await asyncio.gather(
        groups.run(database.insert("a")), groups.run(orphan), return_exceptions=True
    )
    for result in results:
        assert isinstance(result, StoreError)
        assert "the transaction was lost" in str(result)
        assert "FOREIGN KEY constraint failed" in str(result)
    assert database.committed() == set()


async def test_a_group_that_cannot_begin_fails_every_operation_and_runs_none(
    db: tuple[Database, GroupCommitter],
) -> None:
    database, groups = db
    other = sqlite3.connect(database.path, isolation_level=None)  # another process writing
    try:
        other.execute("BEGIN IMMEDIATE")
        results = await asyncio.gather(
            groups.run(database.insert("a")),
            groups.run(database.insert("b")),
            return_exceptions=True,
        )
        other.execute("ROLLBACK")
    finally:
        other.close()
    for result in results:
        assert isinstance(result, StoreError)
        assert str(result) == "test store: database is locked"
    assert database.ran == []
    assert await groups.run(database.insert("c")) == "c"


async def test_a_group_of_reads_does_not_take_the_write_lock(
    db: tuple[Database, GroupCommitter],
) -> None:
    database, groups = db
    await groups.run(database.insert("a"))
    other = sqlite3.connect(database.path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        database.statements.clear()
        rows = await groups.run(
            lambda conn: conn.execute("SELECT k FROM t").fetchall(), writes=False
        )
        other.execute("ROLLBACK")
    finally:
        other.close()
    assert rows == [("a",)]
    assert database.statements[0] == "BEGIN"


async def test_close_runs_what_is_queued_first(tmp_path: Path) -> None:
    database = Database(tmp_path / "groups.db")
    groups = await GroupCommitter.open(database.connect, error=store_error, label="test store")
    writes = [asyncio.create_task(groups.run(database.insert(f"k{n}"))) for n in range(5)]
    await asyncio.sleep(0)  # all five queued
    await groups.close()
    assert [w.result() for w in writes] == [f"k{n}" for n in range(5)]
    assert database.committed() == {f"k{n}" for n in range(5)}
