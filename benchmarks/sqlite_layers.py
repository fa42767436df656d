"""Where the SQLite store's CPU per saga goes, layer by layer, in ``stores.py``'s pipeline.

Run: ``python benchmarks/sqlite_layers.py [--events 3000] [--runs 3]``

Four runs of the same pipeline (``stores.py``: 20 producers, 100 concurrent sagas, a one-step
no-op saga), in turn, ``--runs`` times, in one process; printed: the process's CPU µs per saga
(``time.process_time``) of each, min / median / max, and the sagas/s:

- ``memory``: ``MemorySagaStore``, the baseline of ``stores.py``;
- ``suspending``: the memory store, but ``claim_event`` and ``save_checkpoint`` return only
  after a flusher task ran them, a group at a time, as the SQLite store's group committer
  does: what any store that makes its callers wait costs the engine (a future, a wake-up and
  the resumed coroutines per call), beside the store's own work;
- ``sqlite, no SQL``: ``SQLiteSagaStore`` whose connection, once open, is swapped for a stub
  that runs nothing (every statement changed one row, read none): the store's Python, its
  group committer and the engine's waiting, without SQLite;
- ``sqlite``: the store as it is, SQL, ``COMMIT`` and its sync included.

The differences are the layers' shares: suspending - memory (the engine's cost of waiting),
no SQL - suspending (the store's Python), sqlite - no SQL (SQLite and the binding).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import uuid
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import stores

from sagaz.abc import SagaStore
from sagaz.records import EventClaim
from sagaz.storage.memory import MemorySagaStore
from sagaz.storage.sqlite import SQLiteSagaStore

KINDS = ("memory", "suspending", "sqlite, no SQL", "sqlite")


class SuspendingMemoryStore(MemorySagaStore):
    """The memory store whose frequent calls wait for a flusher task, a group at a time."""

    def __init__(self) -> None:
        super().__init__()
        self._queue: list[tuple[Coroutine[Any, Any, Any], asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None

    def _queued(self, call: Coroutine[Any, Any, Any]) -> asyncio.Future[Any]:
        future = asyncio.get_running_loop().create_future()
        self._queue.append((call, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return future

    async def _flush(self) -> None:
        while self._queue:
            group, self._queue = self._queue, []
            for call, future in group:
                try:
                    call.send(None)  # the memory store's calls never suspend
                except StopIteration as done:
                    future.set_result(done.value)

    async def claim_event(self, trigger_id: str, key: str, record: Any) -> EventClaim:
        return await self._queued(super().claim_event(trigger_id, key, record))  # type: ignore[no-any-return]

    async def save_checkpoint(self, *args: Any, **kwargs: Any) -> None:
        await self._queued(super().save_checkpoint(*args, **kwargs))


class _Changed:
    rowcount = 1

    def __init__(self, rowcount: int = 1) -> None:
        self.rowcount = rowcount

    def fetchall(self) -> list[Any]:
        return []


_ONE = _Changed()


class _NoSQL:
    """A connection that runs nothing: every statement changed one row, or each of the rows
    it was given (the group's rows written together), and read none (and its own cursor:
    the group's)."""

    in_transaction = True

    def __init__(self, real: Any) -> None:
        self._real = real
        self.connection = self

    def cursor(self) -> _NoSQL:
        return self

    def execute(self, sql: str, *args: Any) -> _Changed:
        if "FROM (VALUES" in sql:  # sagaz.storage.sqlite.batches: a row of ?s per row given
            return _Changed(sql.count("(?"))
        return _ONE

    def executemany(self, *args: Any) -> _Changed:
        return _Changed()

    def close(self) -> None:
        self._real.close()


class SQLiteWithoutSQL(SQLiteSagaStore):
    """The SQLite store, its connection swapped for :class:`_NoSQL` once it is open."""

    async def start(self) -> None:
        await super().start()
        groups = self._committer()
        groups._conn = _NoSQL(groups._conn)  # type: ignore[assignment]


def make(kind: str, folder: Path) -> SagaStore:
    path = folder / f"{uuid.uuid4().hex}.db"
    if kind == "memory":
        return MemorySagaStore()
    if kind == "suspending":
        return SuspendingMemoryStore()
    if kind == "sqlite, no SQL":
        return SQLiteWithoutSQL(path)
    return SQLiteSagaStore(path)


async def main(args: argparse.Namespace) -> None:
    results: dict[str, list[tuple[float, float]]] = {kind: [] for kind in KINDS}
    with tempfile.TemporaryDirectory() as folder:
        await stores.throughput(MemorySagaStore(), min(args.events, 1000))  # warm-up
        for _ in range(args.runs):
            for kind in KINDS:
                results[kind].append(await stores.throughput(make(kind, Path(folder)), args.events))
    print(f"events: {args.events}, runs: {args.runs} (min / median / max)")
    print(f"{'store':<16} {'CPU µs/saga':>22} {'sagas/s':>26}")
    for kind, runs in results.items():
        cpu = sorted(c for _, c in runs)
        rate = sorted(r for r, _ in runs)
        print(
            f"{kind:<16} {cpu[0]:>6,.0f} / {statistics.median(cpu):>5,.0f} / {cpu[-1]:>5,.0f}"
            f" {rate[0]:>8,.0f} / {statistics.median(rate):>6,.0f} / {rate[-1]:>6,.0f}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--runs", type=int, default=3)
    asyncio.run(main(parser.parse_args()))
