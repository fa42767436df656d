"""Sagas/s through the in-memory pipeline on each store, against ``MemorySagaStore``.

Run: ``python benchmarks/stores.py [--events 3000] [--stores sqlite,postgres,redis]``
(PostgreSQL and Redis at their default local ports: ``--postgres-dsn`` / ``--redis-url``;
their drivers: ``pip install -e ".[postgres,redis]"``).

The pipeline is the one of ``benchmarks/pipeline.py`` (``fire()`` → admission → queue →
a one-step no-op saga → settlement), fed by 20 concurrent producers, with 100 concurrent
sagas. Every saga makes three store operations (``claim_event``: inbox claim + pending row
keeping the event, start checkpoint: running row with the context + step running, finish
checkpoint: step completed + completed row + inbox completed; see
docs/operations/stores.md); a durable store makes each durable before the
call returns. The baseline is the same run on ``MemorySagaStore`` in this process.
Each durable store gets a fresh file, schema or key prefix, removed afterwards.

Beside sagas/s, ``CPU µs/saga`` is this process's CPU time (``time.process_time``) per saga:
the client's own cost, which other jobs on a shared machine disturb much less than the
wall-clock rate (the database server's CPU is not in it).

PostgreSQL runs in a database of its own (created and dropped by the script), so
``pg_stat_database.xact_commit`` of that database counts this run's transactions only: the
``commits/saga`` column is that count (engine start and stop included) over the events.
Below the table, what the server spent on the run (``_postgres.ServerProbe``): the CPU of
that database's backends (``/proc``: the server must run on this machine), the WAL written
for it (``pg_walinspect``, created in the throwaway database), its B-tree records, and the
rows each table inserted and updated (of which HOT), all per saga.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from pathlib import Path

import pipeline  # noqa: F401  (defines NoopSaga: its trigger listens on channel "bench")
from _postgres import DEFAULT_DSN, ServerProbe, pg_commits, pg_database, table_writes

from sagaz import TriggerConfig
from sagaz.abc import SagaStore
from sagaz.engine.engine import TriggerEngine
from sagaz.storage.memory import MemorySagaStore

PRODUCERS = 20


def make_store(kind: str, args: argparse.Namespace, tmp: Path) -> SagaStore:
    if kind == "memory":
        return MemorySagaStore()
    if kind == "sqlite":
        from sagaz.storage.sqlite import SQLiteSagaStore

        return SQLiteSagaStore(tmp / f"{uuid.uuid4().hex}.db")
    if kind == "postgres":
        from sagaz.storage.postgres import PostgresSagaStore

        schema = f"bench_{uuid.uuid4().hex[:8]}"
        return PostgresSagaStore(args.bench_dsn, schema=schema, max_size=20)
    if kind == "redis":
        from sagaz.storage.redis import RedisSagaStore

        return RedisSagaStore(args.redis_url, prefix=f"bench-{uuid.uuid4().hex[:8]}")
    raise SystemExit(f"unknown store {kind!r}: memory, sqlite, postgres or redis")


DUPLICATES: list[int] = []
"""The events each run found done already in the store (``--redeliver``), in order."""


async def throughput(
    store: SagaStore, events: int, probe: ServerProbe | None = None, redeliver: int = 0
) -> tuple[float, float]:
    """Sagas/s, and this process's CPU microseconds per saga (``probe`` reads the server's
    counters at the start and the end of the run). ``redeliver``: each producer sends each
    event again after the event ``redeliver`` places later (0: none)."""
    config = TriggerConfig(queue_size=1000, max_concurrent_sagas=100)

    async def produce(engine: TriggerEngine, first: int) -> None:
        for i in range(first, events, PRODUCERS):
            await engine.fire("bench", {"id": i})
            if redeliver and i >= redeliver:
                await engine.fire("bench", {"id": i - redeliver})

    async with store, TriggerEngine(config, store) as engine:
        if probe is not None:
            await probe.start()
        start, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(produce(engine, k) for k in range(PRODUCERS)))
        while sum(engine.metrics.completed.values()) < events:
            await asyncio.sleep(0.001)
        rate = events / (time.perf_counter() - start)
        cpu = time.process_time() - cpu
        DUPLICATES.append(engine.metrics.reasons["duplicate"])
        if probe is not None:
            await probe.stop()
        return rate, cpu / events * 1e6


async def remove(store: SagaStore) -> None:
    """Drop what a run left in PostgreSQL or Redis (the SQLite file goes with its folder)."""
    schema = getattr(store, "schema", None)
    if schema is not None:
        import asyncpg

        conn = await asyncpg.connect(store.dsn)  # type: ignore[attr-defined]
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()
    prefix = getattr(store, "prefix", None)
    if prefix is not None:
        from redis.asyncio import Redis

        client = Redis.from_url(store.url)  # type: ignore[attr-defined]
        try:
            keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
            for start in range(0, len(keys), 1000):
                await client.delete(*keys[start : start + 1000])
        finally:
            await client.aclose()


async def main(args: argparse.Namespace) -> None:
    kinds = [k for k in args.stores.split(",") if k]
    server: list[str] = []
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        await throughput(MemorySagaStore(), min(args.events, 1000))  # warm-up
        baseline, baseline_cpu = await throughput(
            MemorySagaStore(), args.events, None, args.redeliver
        )
        rows: list[tuple[str, float, float, float | None]] = [
            ("memory", baseline, baseline_cpu, None)
        ]
        for kind in kinds:
            database = f"sagaz_bench_{uuid.uuid4().hex[:8]}"
            if kind == "postgres":
                await pg_database(args.postgres_dsn, database, create=True)
                args.bench_dsn = args.postgres_dsn.rsplit("/", 1)[0] + f"/{database}"
            store = make_store(kind, args, tmp)
            try:
                before = await pg_commits(args.postgres_dsn, database) if kind == "postgres" else 0
                probe = ServerProbe(args.bench_dsn) if kind == "postgres" else None
                # the store is stopped after it
                rate, cpu = await throughput(store, args.events, probe, args.redeliver)
                commits = None
                if probe is not None:
                    await asyncio.sleep(1.0)  # the pool's backends report as they exit
                    after = await pg_commits(args.postgres_dsn, database)
                    commits = (after - before) / args.events
                    server.append(
                        f"postgres server: CPU µs/saga {probe.cpu_seconds / args.events * 1e6:,.0f}"
                        f", WAL bytes/saga {probe.wal_bytes / args.events:,.0f} (full-page "
                        f"images {probe.fpi_bytes / args.events:,.0f}), B-tree records/saga "
                        f"{probe.btree_records / args.events:.2f}"
                    )
                    server.append(await table_writes(args.bench_dsn, store.schema, args.events))  # type: ignore[attr-defined]
                rows.append((kind, rate, cpu, commits))
            finally:
                await remove(store)
                if kind == "postgres":
                    await pg_database(args.postgres_dsn, database, create=False)
    print(f"events: {args.events}, producers: {PRODUCERS}, concurrent sagas: 100")
    if args.redeliver:
        found = ", ".join(str(d) for d in DUPLICATES[1:])
        print(f"each event sent again {args.redeliver} events later; duplicates found: {found}")
    print(
        f"{'store':<10} {'sagas/s':>10} {'of memory':>10} {'CPU µs/saga':>12} {'commits/saga':>13}"
    )
    for kind, rate, cpu, commits in rows:
        per_saga = "" if commits is None else f"{commits:.3f}"
        print(f"{kind:<10} {rate:>10,.0f} {rate / baseline:>10.1%} {cpu:>12,.0f} {per_saga:>13}")
    for line in server:
        print(line)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--stores", default="sqlite,postgres,redis")
    parser.add_argument(
        "--redeliver",
        type=int,
        default=0,
        metavar="LAG",
        help="send each event a second time, LAG events after it (a burst of redeliveries)",
    )
    parser.add_argument("--postgres-dsn", default=DEFAULT_DSN)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    asyncio.run(main(parser.parse_args()))
