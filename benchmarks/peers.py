"""sagaz beside its closest peer, DBOS Transact, on the same work and the same databases.

Run: ``python benchmarks/peers.py [--events 1000] [--stores postgres,sqlite]``
(needs ``pip install -e ".[postgres]" -r benchmarks/requirements.txt``: ``dbos``; PostgreSQL at
``--postgres-dsn``, default ``postgresql://postgres@127.0.0.1:5432/postgres``, a role that may
create databases).

The work: N events, each running one durable one-step workflow keyed by the event id, so a
redelivered event would not run twice.

* **DBOS Transact** (``dbos``): a ``@DBOS.workflow()`` calling one ``@DBOS.step()`` that does
  nothing, started with ``SetWorkflowID(event id)`` by each of ``k`` threads (synchronous
  workflows, DBOS's common form; async workflows were not measured), checkpointed in its
  system database.
* **sagaz**: ``engine.fire()`` → admission (inbox claim on the event id, pending row) → queue
  → a one-step no-op saga (checkpointed) → settlement, ``max_concurrent_sagas=k``, 20
  producers (as ``benchmarks/stores.py``).

Both use the same PostgreSQL server (one throwaway database, created and dropped here: DBOS
gets it whole, sagaz a schema in it) and a SQLite file each in a temp folder. Throughput is
events / (first start → last completion). Each is swept over a few concurrencies, every value
is printed, and the table compares each one's best. DBOS launches once per database
(``DBOS.destroy()`` between), with a fresh workflow id prefix per sweep point.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pipeline  # noqa: F401  (defines NoopSaga: its trigger listens on channel "bench")

from sagaz import TriggerConfig
from sagaz.abc import SagaStore
from sagaz.engine.engine import TriggerEngine

PRODUCERS = 20
DBOS_THREADS = (5, 10, 20)
SAGAZ_CONCURRENCY = (10, 50, 100, 200)


# -- DBOS --------------------------------------------------------------------------------
def dbos_sweep(url: str, events: int, threads: tuple[int, ...]) -> list[tuple[int, float]]:
    """Launch DBOS on ``url``, run ``events`` one-step workflows per thread count, shut down."""
    from dbos import DBOS, SetWorkflowID

    logging.getLogger("dbos").setLevel(logging.WARNING)

    @DBOS.step()
    def noop_step(n: int) -> int:
        return n

    @DBOS.workflow()
    def one_step(n: int) -> int:
        return noop_step(n)

    DBOS(config={"name": "sagaz-bench", "system_database_url": url, "log_level": "WARNING"})
    DBOS.launch()
    try:
        one_step(0)  # warm-up outside the window
        results = []
        for k in threads:
            prefix = uuid.uuid4().hex[:8]

            def run(i: int, prefix: str = prefix) -> None:
                with SetWorkflowID(f"{prefix}-{i}"):
                    one_step(i)

            with ThreadPoolExecutor(k) as pool:
                start = time.perf_counter()
                list(pool.map(run, range(events)))
                results.append((k, events / (time.perf_counter() - start)))
        return results
    finally:
        DBOS.destroy(destroy_registry=True)


# -- sagaz -------------------------------------------------------------------------------
async def sagaz_rate(store: SagaStore, events: int, concurrency: int) -> float:
    config = TriggerConfig(queue_size=1000, max_concurrent_sagas=concurrency)

    async def produce(engine: TriggerEngine, first: int) -> None:
        for i in range(first, events, PRODUCERS):
            await engine.fire("bench", {"id": i})

    async with store, TriggerEngine(config, store) as engine:
        start = time.perf_counter()
        await asyncio.gather(*(produce(engine, k) for k in range(PRODUCERS)))
        while sum(engine.metrics.completed.values()) < events:
            await asyncio.sleep(0.001)
        return events / (time.perf_counter() - start)


def make_sagaz_store(kind: str, dsn: str, tmp: Path) -> SagaStore:
    if kind == "sqlite":
        from sagaz.storage.sqlite import SQLiteSagaStore

        return SQLiteSagaStore(tmp / f"sagaz-{uuid.uuid4().hex}.db")
    from sagaz.storage.postgres import PostgresSagaStore

    return PostgresSagaStore(dsn, schema=f"bench_{uuid.uuid4().hex[:8]}", max_size=20)


def sagaz_sweep(
    kind: str, dsn: str, tmp: Path, events: int, levels: tuple[int, ...]
) -> list[tuple[int, float]]:
    async def sweep() -> list[tuple[int, float]]:
        results = []
        for k in levels:  # a fresh file or schema per point: no rows carried over
            results.append((k, await sagaz_rate(make_sagaz_store(kind, dsn, tmp), events, k)))
        return results

    return asyncio.run(sweep())


# -- databases ---------------------------------------------------------------------------
def with_database(dsn: str, database: str) -> str:
    base, _, _ = dsn.rpartition("/")
    return f"{base}/{database}"


async def admin(dsn: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def best(rows: list[tuple[int, float]]) -> tuple[int, float]:
    return max(rows, key=lambda row: row[1])


def main(args: argparse.Namespace) -> int:
    try:
        import dbos  # noqa: F401
    except ImportError:
        print("peers.py needs DBOS Transact: pip install dbos", file=sys.stderr)
        return 2
    kinds = [k for k in args.stores.split(",") if k]
    database = f"sagaz_bench_{uuid.uuid4().hex[:8]}"
    bench_dsn = with_database(args.postgres_dsn, database)
    table: list[tuple[str, tuple[int, float], tuple[int, float]]] = []
    print(
        f"events: {args.events} per point; DBOS threads {DBOS_THREADS}, sagaz {SAGAZ_CONCURRENCY}"
    )
    with tempfile.TemporaryDirectory(prefix="sagaz-peers-") as folder:
        tmp = Path(folder)
        asyncio.run(sagaz_rate(make_sagaz_store("sqlite", "", tmp), 500, 100))  # warm-up
        for kind in kinds:
            if kind == "postgres":
                asyncio.run(admin(args.postgres_dsn, f'CREATE DATABASE "{database}"'))
            try:
                url = (
                    bench_dsn.replace("postgresql://", "postgresql+psycopg://", 1)
                    if kind == "postgres"
                    else f"sqlite:///{tmp / 'dbos.sqlite'}"
                )
                theirs = dbos_sweep(url, args.events, DBOS_THREADS)
                ours = sagaz_sweep(kind, bench_dsn, tmp, args.events, SAGAZ_CONCURRENCY)
            finally:
                if kind == "postgres":
                    drop = f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'
                    asyncio.run(admin(args.postgres_dsn, drop))
            for name, rows in (("dbos", theirs), ("sagaz", ours)):
                sweep = ", ".join(f"{k}: {rate:,.0f}" for k, rate in rows)
                print(f"  {kind:<8} {name:<5} concurrency → per s: {sweep}")
            table.append((kind, best(theirs), best(ours)))
    print(
        f"\n{'store':<9} {'DBOS wf/s':>10} {'at':>4} {'sagaz sagas/s':>14} {'at':>4} {'sagaz/DBOS':>11}"
    )
    for kind, (dk, drate), (sk, srate) in table:
        print(f"{kind:<9} {drate:>10,.0f} {dk:>4} {srate:>14,.0f} {sk:>4} {srate / drate:>11.2f}x")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--stores", default="postgres,sqlite")
    parser.add_argument("--postgres-dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    sys.exit(main(parser.parse_args()))
