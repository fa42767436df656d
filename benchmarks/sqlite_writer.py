"""Where the SQLite store's writer thread spends its CPU: statement by statement, and COMMIT.

Run: ``python benchmarks/sqlite_writer.py [--sagas 10000] [--group 50] [--sequential-keys]``

``store_ops.py`` gives the store's CPU per saga and its event loop's share; the rest is the
writer thread (:mod:`sagaz.storage.sqlite_groups`). This script replays, on a connection opened
as the store opens it (WAL, ``synchronous=FULL``, the store's schema) and in this one thread,
the SQL that the writer runs for the three operations of a one-step saga (``claim_event``,
start checkpoint, finish checkpoint: the statements of
:mod:`sagaz.storage.sqlite.inbox` and :mod:`sagaz.storage.sqlite.sagas`), ``--group`` sagas
per transaction as the group committer coalesces them under load, and reads:

- ``CPU µs/saga`` of each statement kind and of the three ``COMMIT`` s (``time.thread_time``:
  SQLite's own work, the Python binding's and the kernel's for the writes and the fsync);
- ``WAL pages/commit``: the pages each kind of group writes to the WAL, the bulk of a
  ``COMMIT`` 's CPU (the WAL is checkpointed between rounds, untimed; the store's automatic
  checkpoint every 1000 pages is not in these figures).

The keys of a saga (its id, its inbox key) are random, as ``saga_id_for`` makes them: each
saga writes to its own leaf page of every index keyed by them (since schema 9 those are the
saga id's index and the inbox key's, at the claim only: the steps are keyed by the saga row's
``seq``, the inbox rows by their arrival). ``--sequential-keys`` makes them ascending instead,
to show what that costs (not something the store can choose: the inbox key is the event's,
the saga id a hash of it).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid
from collections.abc import Callable

from sagaz.storage import sqlite_schema as tables
from sagaz.storage.sqlite import inbox, sagas
from sagaz.storage.sqlite_rows import NO_INTEGER, NO_TEXT

NOW = "2026-12-05T12:00:00.000000+00:00"
CONTEXT = '{"id": 1234}'
EVENT = '{"trigger_id": "bench", "payload": {"id": 1234}, "meta": {"source": "memory"}}'
COMPLETE_INBOX = (
    "UPDATE inbox SET status = 'completed', completed_at = ? WHERE trigger_id = ? AND key = ?"
)
PHASES = ("claim_event", "checkpoint running", "checkpoint completed")


def saga_row(saga_id: str, status: str, owner: str | None, event: str | None) -> tuple[object, ...]:
    """The values of a ``saga_executions`` row, as ``sqlite_rows.saga_params`` makes them (an
    empty error or event: ``NO_TEXT``)."""
    lease = NOW if owner else None
    event_text = NO_TEXT if event is None else event
    return (
        saga_id,
        "bench",
        status,
        CONTEXT,
        1,
        NO_TEXT,
        "bench",
        event_text,
        owner,
        lease,
        NOW,
        NOW,
    )


def statements(phase: int, saga_id: str) -> list[tuple[str, str, tuple[object, ...]]]:
    """``(kind, sql, params)`` of one saga's operation ``phase``, in the writer's order."""
    if phase == 0:
        claim = ("bench", saga_id, saga_id, "worker", NOW, NOW)
        return [
            ("inbox claim", inbox._INSERT_CLAIM, claim),
            ("saga insert", sagas._CREATE_SAGA, saga_row(saga_id, "pending", "worker", EVENT)),
        ]
    if phase == 1:
        step = (saga_id, "noop", "running", NO_TEXT, NO_TEXT, 1, NO_INTEGER, NO_TEXT, NOW)
        return [
            ("step running", sagas._INSERT_STEP, step),
            ("saga running", sagas._UPDATE_SAGA, saga_row(saga_id, "running", "worker", None)),
        ]
    step = (saga_id, "noop", "completed", "{}", NO_TEXT, 1, 1, NO_TEXT, NOW)
    return [
        ("step completed", sagas._INSERT_STEP, step),
        ("saga completed", sagas._UPDATE_SAGA, saga_row(saga_id, "completed", None, None)),
        ("inbox completed", COMPLETE_INBOX, (NOW, "bench", saga_id)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sagas", type=int, default=10_000)
    parser.add_argument("--group", type=int, default=50, help="sagas per transaction")
    parser.add_argument("--sequential-keys", action="store_true")
    args = parser.parse_args()
    cpu: dict[str, int] = {}
    pages = dict.fromkeys(PHASES, 0)

    def timed(kind: str, call: Callable[[], object]) -> None:
        start = time.thread_time_ns()
        call()
        cpu[kind] = cpu.get(kind, 0) + time.thread_time_ns() - start

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "writer.db")
        conn = tables.open_database(path, 30_000, url=f"sqlite:///{path}")
        page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        # checkpoints between rounds, untimed, so that the WAL's growth counts each commit's
        # pages (the store checkpoints every 1000 pages, in a COMMIT: a small share of it)
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        rounds = max(1, args.sagas // args.group)
        for number in range(rounds):
            ids = [
                f"{number:08d}{n:06d}" if args.sequential_keys else uuid.uuid4().hex
                for n in range(args.group)
            ]
            for phase, name in enumerate(PHASES):
                conn.execute("BEGIN IMMEDIATE")
                for saga_id in ids:
                    for kind, sql, params in statements(phase, saga_id):
                        timed(kind, lambda sql=sql, params=params: conn.execute(sql, params))
                wal = os.path.getsize(f"{path}-wal")
                timed("COMMIT (3)", lambda: conn.execute("COMMIT"))
                pages[name] += (os.path.getsize(f"{path}-wal") - wal) // (page_size + 24)
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
    count = rounds * args.group
    keys = "sequential" if args.sequential_keys else "random"
    print(f"sqlite writer ({count} sagas, {args.group} per transaction, {keys} keys)")
    print(f"  {'statement':22} {'CPU µs/saga':>11}")
    for kind, nanoseconds in cpu.items():
        print(f"  {kind:22} {nanoseconds / count / 1000:11.1f}")
    print(f"  {'per saga':22} {sum(cpu.values()) / count / 1000:11.1f}")
    print("  WAL pages/commit: " + ", ".join(f"{k} {v / rounds:.0f}" for k, v in pages.items()))


if __name__ == "__main__":
    main()
