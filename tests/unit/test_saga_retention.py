"""The engine's purge loop deletes finished sagas after ``saga_retention_days`` (never a live
one, never one whose retry is due; a late duplicate of a purged saga stays a duplicate) and
dead letters after ``dead_letter_retention_days``."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import pytest

from sagaz import Saga, TriggerConfig, action, trigger
from sagaz.abc import SagaStore
from sagaz.engine.engine import TriggerEngine
from sagaz.storage.memory import MemorySagaStore
from sagaz.testing import FakeClock, eventually

#: a finished saga is purged a fraction of a second after it finished
QUICKLY = TriggerConfig(
    saga_retention_days=0.1 / 86400, cleanup_interval_seconds=0.02, retry_jitter=0
)


class CountingStore(MemorySagaStore):
    """A memory store that counts the purges asked of it."""

    def __init__(self) -> None:
        super().__init__()
        self.saga_purges = 0
        self.expired_purges = 0

    async def purge_expired(self, before: datetime) -> int:
        self.expired_purges += 1
        return await super().purge_expired(before)

    async def purge_sagas(self, before: datetime, *, limit: int = 500) -> int:
        self.saga_purges += 1
        return await super().purge_sagas(before, limit=limit)


@pytest.fixture
def store(local_store: SagaStore) -> SagaStore:
    """The memory store, then an SQLite file (``local_store``)."""
    return local_store


async def test_the_purge_loop_deletes_finished_sagas_and_keeps_running_ones(
    store: SagaStore,
) -> None:
    release = asyncio.Event()

    class Orders(Saga):
        @trigger(source="memory", channel="orders", idempotency_key=lambda e: e["id"])
        def on_order(self, event: dict[str, Any]) -> dict[str, Any]:
            return dict(event)

        @action("ship")
        async def ship(self, ctx: Any) -> None:
            if ctx["slow"]:
                await release.wait()

    async with TriggerEngine(QUICKLY, store) as engine:
        [done] = await engine.fire("orders", {"id": 1, "slow": False})
        [slow] = await engine.fire("orders", {"id": 2, "slow": True})
        await eventually(lambda: sum(engine.metrics.completed.values()) == 1)

        async def purged() -> bool:
            return await store.get_saga(done) is None and await store.get_steps(done) == []

        await eventually(purged, what="the finished saga purged")
        assert await store.get_saga(slow) is not None  # running: never purged
        release.set()

        async def slow_purged() -> bool:
            return await store.get_saga(slow) is None

        await eventually(slow_purged, what="the second saga purged once it finished")


async def test_a_duplicate_of_a_purged_saga_is_still_a_duplicate(store: SagaStore) -> None:
    runs: list[int] = []

    class Payments(Saga):
        @trigger(source="memory", channel="payments", idempotency_key=lambda e: e["id"])
        def on_payment(self, event: dict[str, Any]) -> dict[str, Any]:
            return dict(event)

        @action("charge")
        async def charge(self, ctx: Any) -> None:
            runs.append(ctx["id"])

    # the inbox keeps its rows for event_retention_days (7 by default), far longer
    async with TriggerEngine(QUICKLY, store) as engine:
        [saga_id] = await engine.fire("payments", {"id": 7})
        await eventually(lambda: sum(engine.metrics.completed.values()) == 1)

        async def purged() -> bool:
            return await store.get_saga(saga_id) is None

        await eventually(purged, what="the finished saga purged")
        assert await engine.fire("payments", {"id": 7}) == []  # a duplicate, not a new run
        assert runs == [7]
        assert await store.get_saga(saga_id) is None


async def test_a_compensated_saga_awaiting_its_retry_is_not_purged() -> None:
    clock = FakeClock()
    attempts: list[int] = []

    class Flaky(Saga):
        @trigger(source="memory", channel="flaky", max_retries=1, retry_backoff_seconds=[60])
        def on_event(self, event: dict[str, Any]) -> dict[str, Any]:
            return dict(event)

        @action("call")
        async def call(self, ctx: Any) -> None:
            attempts.append(1)
            if len(attempts) == 1:
                raise RuntimeError("downstream is down")

    store = CountingStore()
    async with TriggerEngine(QUICKLY, store, clock=clock) as engine:
        [saga_id] = await engine.fire("flaky", {"n": 1})
        await eventually(lambda: engine.metrics.compensated["flaky.on_event"] == 1)
        # long past its retention, the saga waits for its retry (60 s on the fake clock)
        seen = store.saga_purges
        await eventually(lambda: store.saga_purges >= seen + 10, what="ten more purges")
        kept = await store.get_saga(saga_id)
        assert kept is not None and kept.status.value == "compensated"

        await clock.advance(61)
        await eventually(lambda: engine.metrics.completed["flaky.on_event"] == 1)

        async def purged() -> bool:
            return await store.get_saga(saga_id) is None

        await eventually(purged, what="the saga purged once it completed")
    assert len(attempts) == 2


async def test_dead_letters_of_bad_events_are_purged_after_their_retention(
    store: SagaStore,
) -> None:
    class Strict(Saga):
        @trigger(source="memory", channel="strict")
        def on_event(self, event: dict[str, Any]) -> dict[str, Any]:
            raise ValueError(f"bad event {event['n']}")

        @action("noop")
        async def noop(self, ctx: Any) -> None: ...

    config = TriggerConfig(dead_letter_retention_days=0.1 / 86400, cleanup_interval_seconds=0.02)
    async with TriggerEngine(config, store) as engine:
        for n in range(3):
            assert await engine.fire("strict", {"n": n}) == []
        await eventually(lambda: engine.metrics.dead_lettered["strict.on_event"] == 3)

        async def purged() -> bool:
            return await store.list_dead_letters() == []

        await eventually(purged, what="the dead letters purged")


async def test_nothing_is_purged_when_the_retentions_are_none(store: SagaStore) -> None:
    class Kept(Saga):
        @trigger(source="memory", channel="kept")
        def on_event(self, event: dict[str, Any]) -> dict[str, Any]:
            if event["bad"]:
                raise ValueError("bad event")
            return dict(event)

        @action("noop")
        async def noop(self, ctx: Any) -> None: ...

    config = TriggerConfig(
        saga_retention_days=None, dead_letter_retention_days=None, cleanup_interval_seconds=0.02
    )
    spy = CountingStore()
    async with TriggerEngine(config, spy) as engine:
        [saga_id] = await engine.fire("kept", {"bad": False})
        await engine.fire("kept", {"bad": True})
        await eventually(lambda: engine.metrics.completed["kept.on_event"] == 1)
        await eventually(lambda: engine.metrics.dead_lettered["kept.on_event"] == 1)
        purges = spy.expired_purges
        await eventually(lambda: spy.expired_purges >= purges + 5, what="five more purges")
        assert await spy.get_saga(saga_id) is not None
        assert len(await spy.list_dead_letters()) == 1
    assert spy.saga_purges == 0
