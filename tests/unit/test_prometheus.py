"""Prometheus metrics: the engine's counters, read at scrape time."""

from __future__ import annotations

import asyncio
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from sagaz import Saga, TriggerConfig, action, trigger
from sagaz.engine.engine import TriggerEngine
from sagaz.engine.prometheus import render
from sagaz.exceptions import StoreUnavailableError
from sagaz.storage.memory import MemorySagaStore
from sagaz.testing import eventually
from tests.engine_support import OutageStore


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text.decode())
        for sample in family.samples
    }


async def test_metrics_count_events_sagas_and_reasons_per_trigger() -> None:
    class Orders(Saga):
        @trigger(source="memory", channel="orders", idempotency_key=lambda e: e["id"])
        def on_order(self, event: dict[str, Any]) -> dict[str, Any] | None:
            return None if event.get("test") else dict(event)

        @action("ship")
        async def ship(self, ctx: Any) -> None:
            return None

    async with TriggerEngine(TriggerConfig(), MemorySagaStore()) as engine:
        for n in range(5):
            await engine.fire("orders", {"id": n})
        await eventually(lambda: sum(engine.metrics.completed.values()) == 5)
        await engine.fire("orders", {"id": 0})  # a duplicate: its saga completed
        await engine.fire("orders", {"id": 99, "test": True})  # filtered
        text, content_type = render(engine)

    assert content_type.startswith("text/plain")
    values = samples(text)
    trigger_label = (("trigger", "orders.on_order"),)
    assert values[("sagaz_events_received_total", trigger_label)] == 7
    assert values[("sagaz_events_accepted_total", trigger_label)] == 5
    assert values[("sagaz_sagas_completed_total", trigger_label)] == 5
    assert values[("sagaz_dead_letters_total", trigger_label)] == 0
    for reason in ("filtered", "duplicate"):
        key = ("sagaz_events_not_started_total", (("reason", reason), *trigger_label))
        assert values[key] == 1
    assert values[("sagaz_queue_depth", trigger_label)] == 0
    assert values[("sagaz_sagas_in_flight", ())] == 0
    assert values[("sagaz_sagas_in_flight_max", ())] >= 1
    assert values[("sagaz_store_available", ())] == 1
    assert values[("sagaz_store_outages_total", ())] == 0


async def test_queue_depth_and_events_not_started_are_per_trigger() -> None:
    gate = asyncio.Event()

    class Slow(Saga):
        @trigger(source="memory", channel="slow", max_concurrent_sagas=1)
        def on_event(self, event: dict[str, Any]) -> dict[str, Any]:
            return dict(event)

        @action("wait")
        async def wait(self, ctx: Any) -> None:
            await gate.wait()

    class Picky(Saga):
        @trigger(source="memory", channel="picky")
        def on_event(self, event: dict[str, Any]) -> dict[str, Any] | None:
            return None  # every event filtered

        @action("one")
        async def one(self, ctx: Any) -> None:
            return None

    async with TriggerEngine(TriggerConfig(), MemorySagaStore()) as engine:
        for n in range(3):
            await engine.fire("slow", {"n": n})
        await engine.fire("picky", {"n": 1})
        await engine.fire("picky", {"n": 2})
        await eventually(lambda: engine.metrics.in_flight == 1, what="one slow saga running")
        values = samples(render(engine)[0])
        assert engine.state.queue.depth("slow.on_event") == 2
        assert engine.metrics.not_started_by("picky.on_event") == {"filtered": 2}
        assert engine.metrics.not_started_by("slow.on_event") == {}
        gate.set()
        await eventually(lambda: sum(engine.metrics.completed.values()) == 3)
        assert engine.state.queue.depth("slow.on_event") == 0

    slow, picky = (("trigger", "slow.on_event"),), (("trigger", "picky.on_event"),)
    assert values[("sagaz_queue_depth", slow)] == 2
    assert values[("sagaz_queue_depth", picky)] == 0
    filtered = ("sagaz_events_not_started_total", (("reason", "filtered"), *picky))
    assert values[filtered] == 2
    assert ("sagaz_events_not_started_total", (("reason", "filtered"), *slow)) not in values


async def test_a_store_outage_shows_until_the_store_is_back() -> None:
    class Quiet(Saga):
        @trigger(source="memory", channel="quiet")
        def on_event(self, event: dict[str, Any]) -> dict[str, Any]:
            return dict(event)

        @action("one")
        async def one(self, ctx: Any) -> None:
            return None

    store = OutageStore()
    async with TriggerEngine(TriggerConfig(), store) as engine:
        store.down = True
        engine.state.outage.down(StoreUnavailableError("gone"))
        values = samples(render(engine)[0])
        assert values[("sagaz_store_available", ())] == 0
        assert values[("sagaz_store_outages_total", ())] == 1
        store.down = False
        await eventually(lambda: engine.state.outage.available, what="the store back")
        assert samples(render(engine)[0])[("sagaz_store_available", ())] == 1


async def test_an_engine_that_never_started_has_no_series() -> None:
    text, _ = render(TriggerEngine(TriggerConfig(), MemorySagaStore()))
    assert samples(text) == {}
