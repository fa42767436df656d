"""Prometheus metrics: the engine's counters, read at scrape time."""

from __future__ import annotations

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
    assert values[("sagaz_events_not_started_total", (("reason", "filtered"),))] == 1
    assert values[("sagaz_events_not_started_total", (("reason", "duplicate"),))] == 1
    assert values[("sagaz_queue_depth", ())] == 0
    assert values[("sagaz_sagas_in_flight", ())] == 0
    assert values[("sagaz_sagas_in_flight_max", ())] >= 1
    assert values[("sagaz_store_available", ())] == 1
    assert values[("sagaz_store_outages_total", ())] == 0


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
