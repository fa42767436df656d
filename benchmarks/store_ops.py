"""CPU per store operation: the three operations of a one-step saga, store by store.

Run: ``python benchmarks/store_ops.py [--sagas 2000] [--stores sqlite,postgres,redis]``
(PostgreSQL and Redis at their default local ports: ``--postgres-dsn`` / ``--redis-url``).

``stores.py`` measures the whole pipeline; this script measures the store alone, without the
engine: rounds of ``--concurrency`` sagas (50) issue each of the three operations the pipeline
makes per saga (``claim_event``: inbox claim + pending row keeping the event, as
``fire_event`` admits it; start checkpoint: running row with the context + step running;
finish checkpoint: step completed + completed row + inbox completed) at once, so a store with
group commit coalesces them as it does under load, and the script reads the CPU spent per
operation:

- ``CPU µs`` is this process's CPU (``time.process_time``): encoding, the group committer,
  the driver, the event loop, and for SQLite its writer thread (sqlite3 and the fsync);
- ``main thread`` is the event loop's thread only (``time.thread_time``): for SQLite the rest
  is the writer thread;
- ``server µs/saga`` is the CPU the local server's processes (``postgres``, ``redis-server``)
  used meanwhile, read from ``/proc`` (Linux, server on this machine; other jobs using the
  same server count too). The server of PostgreSQL is the larger half of a saga's cost on a
  small machine: see benchmarks/README.md "Profiles".

The engine's own share (the memory store's pipeline, plus a suspension per store call) is
what ``stores.py`` measures beyond this.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path

import stores

from sagaz.abc import SagaStore
from sagaz.clock import utcnow
from sagaz.engine.pending import pending_event
from sagaz.events import Delivery, EventMeta
from sagaz.records import SagaRecord, StepRecord
from sagaz.types import SagaStatus, StepStatus

OPERATIONS = ("claim_event", "checkpoint running", "checkpoint completed")
SERVERS = {"postgres": "postgres", "redis": "redis-server"}
TRIGGER = "bench-noop.on_event"


def server_ticks(name: str) -> int | None:
    """CPU clock ticks of every process called ``name`` (its exited children included);
    ``None`` without ``/proc``."""
    if not os.path.isdir("/proc"):
        return None
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as comm:
                if comm.read().strip() != name:
                    continue
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        total += sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
    return total


class Costs:
    """CPU seconds per operation, process and main thread."""

    def __init__(self) -> None:
        self.process = dict.fromkeys(OPERATIONS, 0.0)
        self.thread = dict.fromkeys(OPERATIONS, 0.0)

    async def timed(self, name: str, calls: list[Callable[[], Awaitable[object]]]) -> None:
        """Run ``calls`` at once; add their CPU to ``name``."""
        process, thread = time.process_time(), time.thread_time()
        await asyncio.gather(*(call() for call in calls))
        self.process[name] += time.process_time() - process
        self.thread[name] += time.thread_time() - thread


async def one_round(store: SagaStore, concurrency: int, costs: Costs) -> None:
    """The three operations of ``concurrency`` one-step sagas, one kind at a time."""
    ids = [uuid.uuid4().hex for _ in range(concurrency)]
    lease = utcnow() + timedelta(seconds=30)
    records = [
        SagaRecord(
            saga_id=saga_id,
            saga_name="bench-noop",
            status=SagaStatus.PENDING,
            context={},
            trigger_id=TRIGGER,
            event=pending_event(
                TRIGGER,
                Delivery(payload={"id": n}, meta=EventMeta(source="memory"), identity=saga_id),
            ),
            owner="worker",
            lease_expires_at=lease,
        )
        for n, saga_id in enumerate(ids)
    ]

    def claim(record: SagaRecord) -> Callable[[], Awaitable[object]]:
        return lambda: store.claim_event(TRIGGER, record.saga_id, record)

    def start(record: SagaRecord) -> Callable[[], Awaitable[object]]:
        step = StepRecord(record.saga_id, "noop", StepStatus.RUNNING, attempts=1)
        return lambda: store.save_checkpoint(record, [step])

    def finish(record: SagaRecord) -> Callable[[], Awaitable[object]]:
        step = StepRecord(
            record.saga_id, "noop", StepStatus.COMPLETED, result={}, attempts=1, completed_seq=1
        )
        inbox = (TRIGGER, record.saga_id)
        return lambda: store.save_checkpoint(record, [step], complete_inbox=inbox)

    await costs.timed("claim_event", [claim(record) for record in records])
    for n, record in enumerate(records):  # the context comes with the start; the event goes
        record.status, record.context, record.event = SagaStatus.RUNNING, {"id": n}, None
    await costs.timed("checkpoint running", [start(record) for record in records])
    for record in records:
        record.status = SagaStatus.COMPLETED
    await costs.timed("checkpoint completed", [finish(record) for record in records])


async def measure(kind: str, store: SagaStore, args: argparse.Namespace) -> None:
    rounds = max(1, args.sagas // args.concurrency)
    async with store:
        await one_round(store, args.concurrency, Costs())  # warm-up: statements, scripts
        server = SERVERS.get(kind)
        before = server_ticks(server) if server else None
        costs = Costs()
        for _ in range(rounds):
            await one_round(store, args.concurrency, costs)
        after = server_ticks(server) if server else None
    sagas = rounds * args.concurrency
    print(f"{kind} ({sagas} sagas, {args.concurrency} at a time)")
    print(f"  {'operation':<22} {'CPU µs':>8} {'main thread':>12}")
    for name in OPERATIONS:
        process = costs.process[name] / sagas * 1e6
        thread = costs.thread[name] / sagas * 1e6
        print(f"  {name:<22} {process:>8.0f} {thread:>12.0f}")
    process = sum(costs.process.values()) / sagas * 1e6
    thread = sum(costs.thread.values()) / sagas * 1e6
    print(f"  {'per saga':<22} {process:>8.0f} {thread:>12.0f}")
    if before is not None and after is not None:
        micros = (after - before) / os.sysconf("SC_CLK_TCK") / sagas * 1e6
        print(f"  server µs/saga ({server} processes): {micros:.0f}")


async def main(args: argparse.Namespace) -> None:
    args.bench_dsn = args.postgres_dsn
    with tempfile.TemporaryDirectory() as folder:
        for kind in [k for k in args.stores.split(",") if k]:
            store = stores.make_store(kind, args, Path(folder))
            try:
                await measure(kind, store, args)
            finally:
                await stores.remove(store)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sagas", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--stores", default="sqlite,postgres,redis")
    parser.add_argument("--postgres-dsn", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    asyncio.run(main(parser.parse_args()))
