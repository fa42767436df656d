"""How long each group of the SQLite store holds the event loop, and how large its WAL grows.

Run: ``python benchmarks/sqlite_loop_time.py [--events 30000]`` (``stores.py``'s SQLite run)
or ``python benchmarks/sqlite_loop_time.py --busy-loop`` (``sqlite_busy_loop.py``'s writers,
idle and busy loop).

Each group's SQL runs on the event loop's thread (:mod:`sagaz.storage.sqlite_groups`): the
loop does nothing else for that long, ``COMMIT`` with its sync included, and the automatic
checkpoint of the WAL about every 1,000 pages. This wraps the committer's group runner and
prints p50 / p99 / max of the time a group spent on the loop, and the largest size the
``-wal`` file had after a group. Not meaningful on a build that runs groups in a thread.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import sqlite_busy_loop
import stores

from sagaz.storage.sqlite_groups import GroupCommitter

held: list[float] = []  # seconds each group held the loop
wal_bytes = [0]  # the largest WAL seen after a group
_wal_files: dict[int, str] = {}


def wrap_groups() -> None:
    """Time each group that runs on the loop (``on_loop=True``)."""
    execute = GroupCommitter._execute

    def timed(self: GroupCommitter, *args: Any, **kwargs: Any) -> Any:
        if not kwargs.get("on_loop"):
            return execute(self, *args, **kwargs)
        start = time.perf_counter()
        try:
            return execute(self, *args, **kwargs)
        finally:
            held.append(time.perf_counter() - start)
            wal = _wal_files.get(id(self))
            if wal is None:
                database = self._conn.execute("PRAGMA database_list").fetchone()[2]
                wal = _wal_files[id(self)] = f"{database}-wal"
            if os.path.exists(wal):
                wal_bytes[0] = max(wal_bytes[0], os.path.getsize(wal))

    GroupCommitter._execute = timed  # type: ignore[method-assign]


def report(label: str) -> None:
    if not held:
        print(f"{label}: no group ran on the event loop")
        return
    times = sorted(held)
    p50, p99 = times[len(times) // 2], times[int(len(times) * 0.99)]
    print(
        f"{label}: {len(times):,} groups on the loop, ms held p50 {p50 * 1e3:.2f} / p99 "
        f"{p99 * 1e3:.2f} / max {times[-1] * 1e3:.2f}; largest WAL {wal_bytes[0] / 1e6:.1f} MB"
    )
    held.clear()
    wal_bytes[0] = 0


async def busy_loop(seconds: float) -> None:
    with tempfile.TemporaryDirectory() as folder:
        for busy in (False, True):
            path = Path(folder) / f"busy{busy}.db"
            rate = await sqlite_busy_loop.writes_per_second(path, seconds, busy=busy)
            report(f"{'busy' if busy else 'idle'} loop, {rate:,.0f} writes/s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=30000)
    parser.add_argument("--busy-loop", action="store_true")
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    wrap_groups()
    if args.busy_loop:
        asyncio.run(busy_loop(args.seconds))
    else:
        asyncio.run(stores.main(argparse.Namespace(events=args.events, stores="sqlite")))
        report(f"stores.py --events {args.events} --stores sqlite")
