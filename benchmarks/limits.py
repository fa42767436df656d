"""What ``limit_scope="cluster"`` costs per event: sagas/s in process scope vs cluster scope.

Run: ``python benchmarks/limits.py [--events 2000] [--runs 3] [--stores postgres,redis]``
(PostgreSQL and Redis at their default local ports: ``--postgres-dsn`` / ``--redis-url``).

For each store, the same pipeline as ``benchmarks/stores.py`` (``fire()`` from 20 producers,
a one-step no-op saga, 100 sagas at once in the engine) runs a trigger with
``concurrency_key`` over 100 keys and ``max_concurrent_sagas=50``, once with
``limit_scope="process"`` and once with ``"cluster"`` (each saga then takes and releases a key
lease and a slot lease in the store: four more store calls, plus renewals). It prints sagas/s
as min / median / max of ``--runs`` runs, each on a fresh schema or key prefix.

Then two engines on one store share a cluster rate limit of ``--rate`` (50/s) for
``--rate-events`` events: the rate they achieved together is printed (the chaos test
tests/chaos/test_cluster_limits.py checks that the limit is never exceeded).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

from stores import make_store, remove

from sagaz import Saga, SagaContext, TriggerConfig, action, trigger
from sagaz.abc import SagaStore
from sagaz.engine.engine import TriggerEngine

PRODUCERS = 20
KEYS = 100
SLOTS = 50


def keyed_saga(scope: str) -> None:
    """Register a no-op saga whose trigger listens on channel ``limits-<scope>``."""

    class Keyed(Saga):
        saga_name = f"bench-limits-{scope}"

        @trigger(
            source="memory",
            channel=f"limits-{scope}",
            idempotency_key=lambda e: e["id"],
            concurrency_key=lambda e: e["id"] % KEYS,
            max_concurrent_sagas=SLOTS,
            limit_scope=scope,
        )
        def on_event(self, event: dict[str, Any]) -> dict[str, Any]:
            return {"id": event["id"]}

        @action("noop")
        async def noop(self, ctx: SagaContext) -> None:
            return None


def rated_saga(rate: float) -> list[float]:
    """Register a saga with a cluster rate limit on channel ``limits-rate``; return the list
    its step appends its start times to."""
    starts: list[float] = []

    class Rated(Saga):
        saga_name = "bench-limits-rate"

        @trigger(
            source="memory",
            channel="limits-rate",
            idempotency_key=lambda e: e["id"],
            rate_limit_per_second=rate,
            limit_scope="cluster",
        )
        def on_event(self, event: dict[str, Any]) -> dict[str, Any]:
            return {"id": event["id"]}

        @action("noop")
        async def noop(self, ctx: SagaContext) -> None:
            starts.append(time.perf_counter())

    return starts


async def throughput(store: SagaStore, scope: str, events: int) -> float:
    config = TriggerConfig(queue_size=1000, max_concurrent_sagas=100)
    channel = f"limits-{scope}"

    async def produce(engine: TriggerEngine, first: int) -> None:
        for i in range(first, events, PRODUCERS):
            await engine.fire(channel, {"id": i})

    async with store, TriggerEngine(config, store) as engine:
        start = time.perf_counter()
        await asyncio.gather(*(produce(engine, k) for k in range(PRODUCERS)))
        while engine.metrics.completed[f"bench-limits-{scope}.on_event"] < events:
            await asyncio.sleep(0.001)
        return events / (time.perf_counter() - start)


async def shared_rate(store: SagaStore, events: int, starts: list[float]) -> float:
    """Sagas/s two engines on ``store`` achieve together under the cluster rate limit."""
    starts.clear()
    async with store:
        engines = [
            TriggerEngine(TriggerConfig(worker_id=f"bench-{n}-{uuid.uuid4().hex[:6]}"), store)
            for n in range(2)
        ]
        for engine in engines:
            await engine.start()
        try:
            for i in range(events):
                await engines[i % 2].fire("limits-rate", {"id": i})
            while len(starts) < events:
                await asyncio.sleep(0.01)
        finally:
            for engine in engines:
                await engine.stop()
    ordered = sorted(starts)
    return (len(ordered) - 1) / (ordered[-1] - ordered[0])


def spread(values: list[float]) -> str:
    return f"{min(values):>8,.0f} {statistics.median(values):>8,.0f} {max(values):>8,.0f}"


async def main(args: argparse.Namespace) -> None:
    for scope in ("process", "cluster"):
        keyed_saga(scope)
    starts = rated_saga(args.rate)
    kinds = [k for k in args.stores.split(",") if k]
    tmp = Path(".")  # make_store's SQLite folder: unused for postgres and redis
    args.bench_dsn = args.postgres_dsn  # make_store's PostgreSQL: a schema of its own there
    results: dict[tuple[str, str], list[float]] = {}
    rates: dict[str, float] = {}
    for kind in kinds:
        for _ in range(args.runs):
            for scope in ("process", "cluster"):
                store = make_store(kind, args, tmp)
                try:
                    rate = await throughput(store, scope, args.events)
                finally:
                    await remove(store)
                results.setdefault((kind, scope), []).append(rate)
        store = make_store(kind, args, tmp)
        try:
            rates[kind] = await shared_rate(store, args.rate_events, starts)
        finally:
            await remove(store)
    print(
        f"events: {args.events}, producers: {PRODUCERS}, keys: {KEYS}, "
        f"max_concurrent_sagas: {SLOTS}, runs: {args.runs}"
    )
    print(
        f"{'store':<10} {'scope':<8} {'min':>8} {'median':>8} {'max':>8}  sagas/s  cluster/process"
    )
    for kind in kinds:
        for scope in ("process", "cluster"):
            values = results[kind, scope]
            ratio = statistics.median(values) / statistics.median(results[kind, "process"])
            print(f"         {kind:<10} {scope:<8} {spread(values)}  {ratio:>10.0%}")
    for kind, rate in rates.items():
        print(
            f"{kind}: two engines under a cluster rate limit of {args.rate:g}/s achieved "
            f"{rate:.1f} sagas/s ({args.rate_events} events)"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--stores", default="postgres,redis")
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--rate-events", type=int, default=150)
    parser.add_argument("--postgres-dsn", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    asyncio.run(main(parser.parse_args()))
