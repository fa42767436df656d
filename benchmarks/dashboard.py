"""The dashboard's pages with 10,000 sagas in the store: median milliseconds per page.

Run: ``python benchmarks/dashboard.py [--sagas 10000] [--stores sqlite,postgres,memory]``
(PostgreSQL at its default local port: ``--postgres-dsn``; its driver: ``pip install -e
".[postgres,dashboard]"``).

The store gets ``--sagas`` saga rows over three triggers and three statuses (created in the
last hour), then each page is fetched ``--repeat`` times in-process (httpx's ASGI transport: no
network) with a bearer token: the first page of sagas, a status filter, a trigger filter, a
page deep in the list (``after=``), one saga, and the triggers page (whose chart reads the
last hour's completed and failed sagas, at most 5,000 per status).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import httpx

import sagaz
from sagaz.abc import SagaStore
from sagaz.records import SagaRecord
from sagaz.storage.memory import MemorySagaStore
from sagaz.types import SagaStatus

TOKEN = "bench"
STATUSES = (SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.FAILED)


def make_store(kind: str, args: argparse.Namespace, tmp: Path) -> SagaStore:
    if kind == "memory":
        return MemorySagaStore()
    if kind == "sqlite":
        from sagaz.storage.sqlite import SQLiteSagaStore

        return SQLiteSagaStore(tmp / f"{uuid.uuid4().hex}.db")
    if kind == "postgres":
        from sagaz.storage.postgres import PostgresSagaStore

        return PostgresSagaStore(args.postgres_dsn, schema=f"bench_{uuid.uuid4().hex[:8]}")
    raise SystemExit(f"unknown store {kind!r}")


async def fill(store: SagaStore, count: int) -> list[str]:
    ids = [f"saga-{n:06d}" for n in range(count)]
    for start in range(0, count, 200):
        await asyncio.gather(
            *(
                store.save_saga(
                    SagaRecord(
                        saga_id,
                        "orders",
                        STATUSES[n % 3],
                        {"n": n},
                        trigger_id=f"orders.t{n % 3}",
                    )
                )
                for n, saga_id in enumerate(ids[start : start + 200], start)
            )
        )
    return ids


async def timed(http: httpx.AsyncClient, path: str, repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        began = time.perf_counter()
        response = await http.get(path, headers={"Authorization": f"Bearer {TOKEN}"})
        samples.append((time.perf_counter() - began) * 1000)
        assert response.status_code == 200, (path, response.status_code)
    return statistics.median(samples)


async def bench(kind: str, args: argparse.Namespace, tmp: Path) -> None:
    store = make_store(kind, args, tmp)
    async with store:
        began = time.perf_counter()
        ids = await fill(store, args.sagas)
        filled = time.perf_counter() - began
        app = sagaz.dashboard_app(store=store, tokens=[TOKEN])
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as http:
            pages = {
                "sagas (first page)": "/sagas",
                "sagas?status=failed": "/sagas?status=failed",
                "sagas?trigger=orders.t1": "/sagas?trigger=orders.t1",
                "sagas?after=<middle>": f"/sagas?after={ids[len(ids) // 2]}",
                "sagas/<id>": f"/sagas/{ids[len(ids) // 3]}",
                "triggers (with chart)": "/triggers",
            }
            print(f"{kind}: {args.sagas} sagas stored in {filled:.1f} s")
            for name, path in pages.items():
                print(f"  {name:28} {await timed(http, path, args.repeat):8.1f} ms (median)")
        if kind == "postgres":
            await store._db().execute(f"DROP SCHEMA {store._s} CASCADE")  # type: ignore[attr-defined]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sagas", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--stores", default="sqlite,memory")
    parser.add_argument("--postgres-dsn", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.stores.split(","):
            await bench(kind, args, Path(tmp))


if __name__ == "__main__":
    asyncio.run(main())
