"""Client instructions per saga of the PostgreSQL store alone, counted by valgrind.

Run: ``python benchmarks/pg_instructions.py [--rounds 60] [--group 10]
[--postgres-dsn DSN]`` (needs ``valgrind`` and a PostgreSQL server; about half a minute).

The CPU time per saga of ``store_ops.py`` and ``stores.py`` moves by ±20% on a shared machine,
more than most changes to the store. This script runs the store's three operations of
one-step sagas in fixed groups: each round issues at once the event claims of ``--group``
new sagas, the running checkpoints of the previous round's and the completed checkpoints
(inbox completed) of the one before, so every group commit holds three times ``--group`` operations
of the shapes ``stores.py`` sends. It counts the client process's instructions (``valgrind
--tool=cachegrind --cache-sim=no``, ``PYTHONHASHSEED=0``) with the rounds and without (both
after the same warm-up), and divides the difference by the sagas: steady to about 0.2% from
run to run. The count holds the records' making (uuid, the pending event) and
``asyncio.gather``: compare the same script on two trees, or ``--store memory`` for what
that part costs. The server is not counted (it runs outside valgrind).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from collections.abc import Coroutine
from datetime import timedelta
from pathlib import Path
from typing import Any

from _cachegrind import instructions, require_valgrind, start

WARM_UP = 20  # rounds
TRIGGER = "bench-noop.on_event"


def _records(first: int, count: int) -> list[Any]:
    from sagaz.clock import utcnow
    from sagaz.engine.pending import pending_event
    from sagaz.events import Delivery, EventMeta
    from sagaz.records import SagaRecord
    from sagaz.types import SagaStatus

    lease = utcnow() + timedelta(seconds=30)
    records = []
    for n in range(first, first + count):
        saga_id = uuid.uuid4().hex
        delivery = Delivery(payload={"id": n}, meta=EventMeta(source="memory"), identity=saga_id)
        records.append(
            SagaRecord(
                saga_id=saga_id,
                saga_name="bench-noop",
                status=SagaStatus.PENDING,
                context={},
                trigger_id=TRIGGER,
                event=pending_event(TRIGGER, delivery),
                owner="worker",
                lease_expires_at=lease,
            )
        )
    return records


async def _start(store: Any, record: Any, n: int) -> None:
    from sagaz.records import StepRecord
    from sagaz.types import SagaStatus, StepStatus

    record.status, record.context, record.event = SagaStatus.RUNNING, {"id": n}, None
    step = StepRecord(record.saga_id, "noop", StepStatus.RUNNING, attempts=1)
    await store.save_checkpoint(record, [step])


async def _finish(store: Any, record: Any) -> None:
    from sagaz.records import StepRecord
    from sagaz.types import SagaStatus, StepStatus

    record.status = SagaStatus.COMPLETED
    step = StepRecord(
        record.saga_id, "noop", StepStatus.COMPLETED, result={}, attempts=1, completed_seq=1
    )
    await store.save_checkpoint(record, [step], complete_inbox=(TRIGGER, record.saga_id))


async def rounds(store: Any, count: int, group: int) -> None:
    """``count`` rounds of ``group`` sagas each, three rounds' operations at once."""
    started: list[Any] = []
    claimed: list[Any] = []
    for r in range(count + 2):
        new = _records(r * group, group) if r < count else []
        calls: list[Coroutine[Any, Any, Any]] = [
            store.claim_event(TRIGGER, record.saga_id, record) for record in new
        ]
        calls += [_start(store, record, n) for n, record in enumerate(claimed)]
        calls += [_finish(store, record) for record in started]
        await asyncio.gather(*calls)
        started, claimed = claimed, new


async def _server(count: int, group: int, dsn: str) -> None:
    """``--server``: the same rounds, natively, and what the server spent on them (its
    backends' CPU from ``/proc``, the WAL: ``_postgres.ServerProbe``), per saga."""
    sys.path.insert(0, str(Path(__file__).parent))
    from _postgres import ServerProbe, throwaway_database

    from sagaz.storage.postgres import PostgresSagaStore

    async with throwaway_database(dsn) as database:
        store = PostgresSagaStore(database, max_size=20)
        async with store:
            await rounds(store, WARM_UP, group)
            probe = ServerProbe(database)
            await probe.start()
            await rounds(store, count, group)
            await probe.stop()
    sagas = count * group
    print(
        f"postgres server: {probe.cpu_seconds / sagas * 1e6:.1f} CPU µs per saga, "
        f"{probe.wal_bytes / sagas:,.0f} WAL bytes, {probe.btree_records / sagas:.2f} B-tree "
        f"records ({sagas} sagas, groups of {3 * group} operations)"
    )


async def _child(kind: str, count: int, group: int, dsn: str) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from _postgres import throwaway_database

    from sagaz.storage.memory import MemorySagaStore

    if kind == "memory":
        async with MemorySagaStore() as memory:
            await rounds(memory, WARM_UP, group)
            await rounds(memory, count, group)
        return
    from sagaz.storage.postgres import PostgresSagaStore

    async with throwaway_database(dsn) as database:
        store = PostgresSagaStore(database, max_size=20)
        async with store:
            await rounds(store, WARM_UP, group)
            await rounds(store, count, group)


def _instructions(kind: str, count: int, group: int, dsn: str) -> int:
    args = ["--child", kind, "--rounds", str(count), "--group", str(group)]
    return instructions(start(__file__, *args, "--postgres-dsn", dsn))


def main(args: argparse.Namespace) -> None:
    require_valgrind()
    base = _instructions(args.store, 0, args.group, args.postgres_dsn)
    full = _instructions(args.store, args.rounds, args.group, args.postgres_dsn)
    sagas = args.rounds * args.group
    print(
        f"{args.store}: {(full - base) / sagas:,.0f} instructions per saga "
        f"({sagas} sagas, groups of {3 * args.group} operations)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--group", type=int, default=10)
    parser.add_argument("--store", choices=("postgres", "memory"), default="postgres")
    parser.add_argument("--postgres-dsn", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--child", choices=("postgres", "memory"))
    parser.add_argument(
        "--server",
        action="store_true",
        help="the server's CPU per saga instead (no valgrind; use --rounds 1000 or more)",
    )
    parsed = parser.parse_args()
    if parsed.server:
        asyncio.run(_server(parsed.rounds, parsed.group, parsed.postgres_dsn))
    elif parsed.child:
        asyncio.run(_child(parsed.child, parsed.rounds, parsed.group, parsed.postgres_dsn))
    else:
        main(parsed)
