"""How fast each store deletes finished sagas (``purge_sagas``), and how long one batch holds.

Run: ``python benchmarks/retention.py [--sagas 20000] [--stores memory,sqlite,postgres,redis]``
(from ``benchmarks/``; PostgreSQL and Redis at their default local ports).

Each store gets a fresh location filled with ``--sagas`` finished one-step sagas as the engine
leaves them (a completed inbox row, the step checkpoint, the completed saga row, one published
outbox message and one history entry each), plus 100 pending inbox rows of other events in
flight. Then ``purge_sagas(limit=500)`` runs until nothing is left, as the purge loop calls
it: the figures are sagas deleted per second and the median and longest batch (one
transaction, or one Lua script on Redis: what other writers may wait behind).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

from stores import make_store, remove

from sagaz.abc import SagaStore
from sagaz.clock import utcnow
from sagaz.records import OutboxMessage, SagaHistoryRecord, SagaRecord, StepRecord
from sagaz.types import SagaStatus, StepStatus

BATCH = 500
CONCURRENCY = 50


async def fill(store: SagaStore, sagas: int) -> None:
    """``sagas`` finished sagas, ``CONCURRENCY`` at a time (group commit coalesces them)."""
    lease = utcnow() + timedelta(minutes=5)

    async def one(n: int) -> None:
        saga_id = f"s-{n}"
        await store.claim_inbox("bench.on_event", str(n), saga_id, "w1", lease)
        await store.save_checkpoint(
            SagaRecord(saga_id, "bench", SagaStatus.COMPLETED, {"n": n}, trigger_id="t"),
            [StepRecord(saga_id, "one", StepStatus.COMPLETED, {"ok": True})],
            [OutboxMessage(saga_id, "done", {"n": n})],
            complete_inbox=("bench.on_event", str(n)),
        )
        await store.add_saga_history(SagaHistoryRecord(saga_id, "completed"))

    for first in range(0, sagas, CONCURRENCY):
        await asyncio.gather(*(one(n) for n in range(first, min(first + CONCURRENCY, sagas))))
    while unsent := await store.fetch_outbox(1000):
        await store.mark_outbox_sent([m.id for m in unsent if m.id is not None])
    for n in range(100):  # events in flight: their pending rows are what the purge checks
        await store.claim_inbox("bench.on_event", f"live-{n}", f"live-{n}", "w1", lease)


async def purge(store: SagaStore) -> tuple[int, float, list[float]]:
    """Deleted, seconds, and each batch's seconds."""
    before = utcnow() + timedelta(days=1)
    batches: list[float] = []
    deleted = 0
    start = time.perf_counter()
    while True:
        begun = time.perf_counter()
        count = await store.purge_sagas(before, limit=BATCH)
        batches.append(time.perf_counter() - begun)
        deleted += count
        if count < BATCH:
            return deleted, time.perf_counter() - start, batches


async def main(args: argparse.Namespace) -> None:
    args.bench_dsn = args.postgres_dsn
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for kind in [k for k in args.stores.split(",") if k]:
            store = make_store(kind, args, Path(folder))
            try:
                async with store:
                    await fill(store, args.sagas)
                    deleted, seconds, batches = await purge(store)
                    assert deleted == args.sagas, (kind, deleted)
                    assert await store.list_sagas() == []
                rows.append((kind, deleted / seconds, batches))
            finally:
                await remove(store)
    print(f"finished sagas: {args.sagas}, batch: {BATCH} (run {uuid.uuid4().hex[:6]})")
    print(f"{'store':<10} {'deleted/s':>10} {'batch ms median':>16} {'batch ms max':>13}")
    for kind, rate, batches in rows:
        median = statistics.median(batches) * 1000
        print(f"{kind:<10} {rate:>10,.0f} {median:>16.1f} {max(batches) * 1000:>13.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sagas", type=int, default=20000)
    parser.add_argument("--stores", default="memory,sqlite,postgres,redis")
    parser.add_argument("--postgres-dsn", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    asyncio.run(main(parser.parse_args()))
