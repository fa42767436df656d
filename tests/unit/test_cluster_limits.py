"""``limit_scope="cluster"``: two engines on one store share the trigger's limits.

Two ``TriggerEngine`` objects (two worker ids) on one ``MemorySagaStore`` stand for two
instances here; tests/chaos/test_cluster_limits.py runs real processes on real brokers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest

from sagaz import Saga, TriggerConfig, action, trigger
from sagaz.engine.engine import TriggerEngine
from sagaz.exceptions import TriggerDefinitionError
from sagaz.storage.memory import MemorySagaStore
from sagaz.testing import continually, eventually


@asynccontextmanager
async def two_engines(
    store: MemorySagaStore, **config: Any
) -> AsyncIterator[tuple[TriggerEngine, TriggerEngine]]:
    async with AsyncExitStack() as stack:
        engines = [
            await stack.enter_async_context(
                TriggerEngine(TriggerConfig(worker_id=f"w{n}", lease_seconds=2, **config), store)
            )
            for n in range(2)
        ]
        yield engines[0], engines[1]


def test_cluster_scope_without_a_limit_fails_at_class_definition() -> None:
    with pytest.raises(TriggerDefinitionError, match=r"limit_scope='cluster'.*none is set"):

        class Unlimited(Saga):
            @trigger(source="memory", channel="c", limit_scope="cluster")
            def on_event(self, event: dict[str, Any]) -> dict[str, Any]:
                return dict(event)


def test_an_unknown_scope_fails_at_class_definition() -> None:
    with pytest.raises(TriggerDefinitionError, match="limit_scope"):

        class Misspelt(Saga):
            @trigger(source="memory", channel="c", max_concurrent_sagas=1, limit_scope="global")
            def on_event(self, event: dict[str, Any]) -> dict[str, Any]:
                return dict(event)


async def test_a_key_runs_one_saga_at_a_time_across_engines_and_other_keys_go_on() -> None:
    stuck = asyncio.Event()
    running: dict[str, int] = {}
    overlap: list[str] = []
    started: list[tuple[str, int, str]] = []  # (user, n, worker)
    finished: list[tuple[str, int]] = []

    class PerUser(Saga):
        saga_name = "cluster-per-user"

        @trigger(
            source="memory",
            channel="users",
            idempotency_key=lambda e: f"{e['user']}-{e['n']}",
            concurrency_key=lambda e: e["user"],
            limit_scope="cluster",
        )
        def on_event(self, event: dict[str, Any]) -> dict[str, Any]:
            return dict(event)

        @action("work")
        async def work(self, ctx: Any) -> None:
            user = ctx["user"]
            running[user] = running.get(user, 0) + 1
            if running[user] > 1:
                overlap.append(user)
            started.append((user, ctx["n"], ctx["worker"]))
            if user == "slow":
                await stuck.wait()
            else:
                await asyncio.sleep(0.001)
            running[user] -= 1
            finished.append((user, ctx["n"]))

    store = MemorySagaStore()
    async with two_engines(store, max_concurrent_sagas=8) as engines:
        for n in range(6):
            for user in ("slow", "a", "b", "c"):
                engine = engines[n % 2]
                await engine.fire("users", {"user": user, "n": n, "worker": engine.worker_id})
        # the other keys finish, on both engines, while "slow" holds its key in the store
        await eventually(lambda: sum(1 for u, _ in finished if u != "slow") == 18)
        assert [(u, n) for u, n, _ in started if u == "slow"] == [("slow", 0)]
        await continually(lambda: len([u for u, *_ in started if u == "slow"]) == 1, during=0.1)
        stuck.set()
        await eventually(lambda: len(finished) == 24)
        for user in ("slow", "a", "b", "c"):  # every key's lease was released
            assert await store.acquire_lease(
                f"sagaz.key/{PerUser.saga_name}.on_event/{user}", "x", 1
            )
    assert overlap == []
    for user in ("slow", "a", "b", "c"):
        for worker in ("w0", "w1"):  # each engine started its events of a key in order
            mine = [n for u, n, w in started if u == user and w == worker]
            assert mine == sorted(mine), (user, worker, mine)


async def test_max_concurrent_sagas_counts_the_sagas_of_every_engine() -> None:
    current = 0
    high_water = 0

    class Limited(Saga):
        saga_name = "cluster-limited"

        @trigger(
            source="memory",
            channel="lim",
            idempotency_key=lambda e: e["n"],
            max_concurrent_sagas=3,
            limit_scope="cluster",
        )
        def on_event(self, event: dict[str, Any]) -> dict[str, Any]:
            return dict(event)

        @action("work")
        async def work(self, ctx: Any) -> None:
            nonlocal current, high_water
            current += 1
            high_water = max(high_water, current)
            await asyncio.sleep(0.002)
            current -= 1

    store = MemorySagaStore()
    async with two_engines(store, max_concurrent_sagas=10) as engines:
        for n in range(120):
            await engines[n % 2].fire("lim", {"n": n})
        await eventually(
            lambda: sum(sum(e.metrics.completed.values()) for e in engines) == 120, within=30
        )
    assert high_water == 3  # each engine alone would have let 3 run: 6 at once


async def test_a_shared_rate_limit_holds_over_both_engines_in_any_window() -> None:
    rate = 100.0
    starts: list[float] = []

    class Rated(Saga):
        saga_name = "cluster-rated"

        @trigger(
            source="memory",
            channel="rate",
            idempotency_key=lambda e: e["n"],
            rate_limit_per_second=rate,
            limit_scope="cluster",
        )
        def on_event(self, event: dict[str, Any]) -> dict[str, Any]:
            return dict(event)

        @action("work")
        async def work(self, ctx: Any) -> None:
            starts.append(time.monotonic())

    store = MemorySagaStore()
    total = 40
    async with two_engines(store) as engines:
        for n in range(total):
            await engines[n % 2].fire("rate", {"n": n})
        await eventually(lambda: len(starts) == total, within=30)
    # burst 1; a start is recorded a little after its token was taken: allow 50 ms of that
    assert_rate_bound(sorted(starts), rate, burst=1, jitter=0.05)


def assert_rate_bound(starts: list[float], rate: float, *, burst: int, jitter: float) -> None:
    """In every window ``[starts[i], starts[j]]`` at most ``rate * (width + jitter) + burst``
    sagas started."""
    for i in range(len(starts)):
        for j in range(i, len(starts)):
            allowed = rate * (starts[j] - starts[i] + jitter) + burst
            assert j - i + 1 <= allowed, (i, j, starts[j] - starts[i])


async def test_an_engine_stopping_releases_its_keys_for_the_other() -> None:
    release: Callable[[], None]
    gate = asyncio.Event()
    release = gate.set
    ran: list[tuple[int, str]] = []

    class Keyed(Saga):
        saga_name = "cluster-keyed"

        @trigger(
            source="memory",
            channel="keyed",
            idempotency_key=lambda e: e["n"],
            concurrency_key=lambda e: "k",
            limit_scope="cluster",
        )
        def on_event(self, event: dict[str, Any]) -> dict[str, Any]:
            return dict(event)

        @action("work")
        async def work(self, ctx: Any) -> None:
            ran.append((ctx["n"], ctx["worker"]))
            await gate.wait()

    store = MemorySagaStore()
    first = TriggerEngine(TriggerConfig(worker_id="w0", shutdown_timeout=0.2), store)
    second = TriggerEngine(TriggerConfig(worker_id="w1"), store)
    async with second:
        await first.start()
        await first.fire("keyed", {"n": 0, "worker": "w0"})
        await eventually(lambda: ran == [(0, "w0")])
        await second.fire("keyed", {"n": 1, "worker": "w1"})
        await continually(lambda: len(ran) == 1, during=0.1)  # the key is w0's
        await first.stop()  # its saga is cancelled: the lease is given up, not left to expire
        await eventually(lambda: (1, "w1") in ran)
        release()


async def test_an_event_evicted_while_waiting_for_its_key_frees_the_key_for_the_next() -> None:
    """drop_oldest evicts events waiting for a key another engine holds; the ones left run
    once it is free, in order, and nothing stays held."""
    gate = asyncio.Event()
    ran: list[tuple[int, str]] = []

    class Evicting(Saga):
        saga_name = "cluster-evicting"

        @trigger(
            source="memory",
            channel="evict",
            idempotency_key=lambda e: e["n"],
            concurrency_key=lambda e: "k",
            limit_scope="cluster",
        )
        def on_event(self, event: dict[str, Any]) -> dict[str, Any]:
            return dict(event)

        @action("work")
        async def work(self, ctx: Any) -> None:
            ran.append((ctx["n"], ctx["worker"]))
            await gate.wait()

    store = MemorySagaStore()
    holder = TriggerEngine(TriggerConfig(worker_id="w0"), store)
    small = TriggerEngine(
        TriggerConfig(worker_id="w1", queue_size=2, backpressure_strategy="drop_oldest"), store
    )
    async with holder, small:
        await holder.fire("evict", {"n": 0, "worker": "w0"})
        await eventually(lambda: ran == [(0, "w0")])
        for n in range(1, 5):
            await small.fire("evict", {"n": n, "worker": "w1"})
        assert small.metrics.reasons["dropped_oldest"] == 2
        await continually(lambda: len(ran) == 1, during=0.1)  # "k" is still w0's
        gate.set()
        await eventually(lambda: len(ran) == 3)
        assert ran == [(0, "w0"), (3, "w1"), (4, "w1")]
        await eventually(lambda: small.metrics.in_flight == 0)
    assert await store.acquire_lease(f"sagaz.key/{Evicting.saga_name}.on_event/k", "x", 1)


async def test_a_key_stays_held_while_its_saga_runs_longer_than_the_lease() -> None:
    """The heartbeat renews the key's lease: a saga running for several lease periods keeps
    its key, and the other engine's event of the key waits for it to end."""
    gate = asyncio.Event()
    ran: list[tuple[int, str]] = []

    class Long(Saga):
        saga_name = "cluster-long"

        @trigger(
            source="memory",
            channel="long",
            idempotency_key=lambda e: e["n"],
            concurrency_key=lambda e: "k",
            limit_scope="cluster",
        )
        def on_event(self, event: dict[str, Any]) -> dict[str, Any]:
            return dict(event)

        @action("work")
        async def work(self, ctx: Any) -> None:
            ran.append((ctx["n"], ctx["worker"]))
            if ctx["n"] == 0:
                await gate.wait()

    store = MemorySagaStore()
    lease = 0.3  # renewed every 0.1 s
    first = TriggerEngine(TriggerConfig(worker_id="w0", lease_seconds=lease), store)
    second = TriggerEngine(TriggerConfig(worker_id="w1", lease_seconds=lease), store)
    async with first, second:
        await first.fire("long", {"n": 0, "worker": "w0"})
        await eventually(lambda: ran == [(0, "w0")])
        await second.fire("long", {"n": 1, "worker": "w1"})
        await continually(lambda: len(ran) == 1, during=4 * lease)
        gate.set()
        await eventually(lambda: ran == [(0, "w0"), (1, "w1")])
