"""Writes/s of the SQLite store's group committer while another task keeps the event loop busy.

Run: ``python benchmarks/sqlite_busy_loop.py [--seconds 2] [--runs 3]``

20 writers each insert a row through :class:`~sagaz.storage.sqlite_groups.GroupCommitter` on
a connection opened as the store opens it (WAL, ``synchronous=FULL``), and wait for it before
the next, for ``--seconds``: first on an idle event loop, then with a task that burns 200 µs
of CPU and yields (``await asyncio.sleep(0)``), again and again, as a loop busy with other
sagas' Python does. Every thread that needs the GIL back (the committer's thread after each
``sqlite3_step``, an executor's thread after a sync) then waits for a loop that hardly ever
blocks: CPython hands the GIL over on request only after the switch interval (5 ms) passed
without any switch, and the loop takes the GIL back at every iteration's ``select``, so the
request is rarely made and the thread gets the GIL by chance. See benchmarks/README.md
"SQLite: overlapping the WAL sync with the loop".
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import tempfile
import time
from pathlib import Path

from sagaz.exceptions import StoreError
from sagaz.storage import sqlite_schema as tables
from sagaz.storage.sqlite_groups import GroupCommitter

WRITERS = 20
BURN_SECONDS = 0.0002


def connect(path: Path) -> sqlite3.Connection:
    """The store's connection, with a scratch table."""
    conn = tables.open_database(str(path), 30_000, url=f"sqlite:///{path}")
    conn.execute("CREATE TABLE IF NOT EXISTS scratch (k TEXT PRIMARY KEY, v TEXT)")
    return conn


async def writes_per_second(path: Path, seconds: float, *, busy: bool) -> float:
    """Rows the writers committed per second, with or without the busy task."""
    groups = await GroupCommitter.open(
        lambda: connect(path), error=lambda exc: StoreError(str(exc)), label="bench"
    )
    done = asyncio.Event()
    writes = 0

    async def writer(name: int) -> None:
        nonlocal writes
        while not done.is_set():
            key = f"{busy}-{name}-{writes}"
            await groups.run(
                lambda conn, k=key: (
                    conn.execute(  # type: ignore[misc]
                        "INSERT INTO scratch VALUES (?, ?)", (k, "x" * 100)
                    ).rowcount
                )
            )
            writes += 1

    async def burner() -> None:
        while not done.is_set():
            end = time.perf_counter() + BURN_SECONDS
            while time.perf_counter() < end:
                pass
            await asyncio.sleep(0)

    tasks = [asyncio.create_task(writer(n)) for n in range(WRITERS)]
    if busy:
        tasks.append(asyncio.create_task(burner()))
    try:
        await asyncio.sleep(seconds)
    finally:
        done.set()
        await asyncio.gather(*tasks)
        await groups.close()
    return writes / seconds


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as folder:
        for run in range(args.runs):
            idle = await writes_per_second(Path(folder) / f"idle{run}.db", args.seconds, busy=False)
            busy = await writes_per_second(Path(folder) / f"busy{run}.db", args.seconds, busy=True)
            print(f"run {run + 1}: writes/s, idle loop {idle:,.0f}; busy loop {busy:,.0f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--runs", type=int, default=3)
    asyncio.run(main(parser.parse_args()))
