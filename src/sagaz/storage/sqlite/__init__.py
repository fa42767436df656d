"""The embedded default store: one SQLite file, through the standard ``sqlite3`` module.

>>> async with SQLiteSagaStore("sqlite:///sagaz.db") as store:  # doctest: +SKIP
...     await store.get_saga("...")

One connection serves the process (:mod:`sagaz.storage.sqlite_groups`). Every operation
prepares its parameters on the event loop, then queues a plain function that runs all its SQL
on that connection. Operations are grouped (group commit): the queued ones run, on the event
loop's thread, as one ``BEGIN IMMEDIATE`` transaction ended by one ``COMMIT``; those queued
meanwhile form the next group. A group that finds another process's lock runs again in the
store's own thread, which waits for it. If an operation fails, its group is rolled back and
run again with each operation in its own ``SAVEPOINT``, so the error undoes that operation
only and only its caller gets it.
Every operation returns only after its group's COMMIT, so a claim (insert the row, or read it
and then update it) holds SQLite's write lock throughout, stays atomic even against another
process on the same file, and is durable when it returns: the database runs in WAL mode with
``synchronous=FULL``. A lost transaction (an error rolled it back, or the COMMIT failed) fails
every operation of its group; reads are queued like writes and return after their group's
COMMIT too, so no caller acts on a write that did not last (a group of reads only does not
take the write lock). A caller cancelled while its operation is queued drops it; once
running, it completes.
"""

from __future__ import annotations

from sagaz.storage.sqlite.store import SQLiteSagaStore

__all__ = ["SQLiteSagaStore"]
