"""Batch admission (``Admission.admit_many``, what a Kafka poll's records go through): the
claims of a batch go out together on a durable store, and the batch is queued in its order."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from sagaz import Saga, SagaContext, TriggerConfig, action, trigger
from sagaz.abc import emit_many
from sagaz.engine.engine import TriggerEngine
from sagaz.events import AdmissionOutcome, AdmissionResult, Delivery, EventMeta
from sagaz.records import EventClaim, SagaRecord
from sagaz.storage.memory import MemorySagaStore
from sagaz.storage.sqlite import SQLiteSagaStore
from sagaz.testing import eventually

BATCH = 12


class SlowEarlyClaims(SQLiteSagaStore):
    """A SQLite store whose inbox claims answer in the reverse order of the keys: key ``n``
    waits ``(BATCH - n)`` ms first, so a batch admitted concurrently is claimed last-first.
    It counts how many claims were under way at once."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.claiming = 0
        self.most_at_once = 0

    async def claim_event(self, trigger_id: str, key: str, record: SagaRecord) -> EventClaim:
        self.claiming += 1
        self.most_at_once = max(self.most_at_once, self.claiming)
        try:
            await asyncio.sleep((BATCH - int(key)) / 1000)
            return await super().claim_event(trigger_id, key, record)
        finally:
            self.claiming -= 1


def ordered_saga(started: list[int]) -> type[Saga]:
    class Ordered(Saga):
        saga_name = "ordered"

        @trigger(
            source="memory",
            channel="ordered",
            idempotency_key=lambda e: e["n"],
            concurrency_key=lambda e: "one key",
        )
        def on_event(self, event: dict[str, Any]) -> dict[str, Any]:
            return {"n": event["n"]}

        @action("record")
        async def record(self, ctx: SagaContext) -> None:
            started.append(ctx["n"])

    return Ordered


def deliveries(numbers: list[int], acks: list[int]) -> list[Delivery]:
    def one(n: int) -> Delivery:
        async def ack() -> None:
            acks.append(n)

        return Delivery(
            payload={"n": n}, meta=EventMeta(source="memory"), identity=f"m-{n}", ack=ack
        )

    return [one(n) for n in numbers]


async def admit_batch(engine: TriggerEngine, batch: list[Delivery]) -> list[AdmissionResult]:
    active = engine.triggers["ordered.on_event"]
    return await engine.admission.admit_many(active, batch)


async def test_a_batch_on_a_durable_store_is_claimed_together_and_runs_in_its_order(
    tmp_path: Path,
) -> None:
    started: list[int] = []
    acks: list[int] = []
    ordered_saga(started)
    store = SlowEarlyClaims(tmp_path / "batch.db")
    async with TriggerEngine(TriggerConfig(max_concurrent_sagas=4), store) as engine:
        results = await admit_batch(engine, deliveries(list(range(BATCH)), acks))
        await eventually(lambda: len(acks) == BATCH)
    assert [r.outcome for r in results] == [AdmissionOutcome.ACCEPTED] * BATCH
    assert store.most_at_once > 1  # the claims went out together
    assert started == list(range(BATCH))  # yet one key's events ran in arrival order


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_a_redelivery_within_a_batch_joins_its_first_delivery(
    kind: str, tmp_path: Path
) -> None:
    store = MemorySagaStore() if kind == "memory" else SQLiteSagaStore(tmp_path / "join.db")
    started: list[int] = []
    acks: list[int] = []
    ordered_saga(started)
    async with TriggerEngine(TriggerConfig(), store) as engine:
        results = await admit_batch(engine, deliveries([1, 2, 1], acks))
        await eventually(lambda: len(acks) == 3)
    assert results[0].saga_id == results[2].saga_id != results[1].saga_id
    assert sorted(started) == [1, 2]  # one run per key, every delivery acked
    assert sorted(acks) == [1, 1, 2]


async def test_emit_many_calls_a_plain_emit_once_per_delivery_in_order() -> None:
    seen: list[Any] = []

    async def emit(delivery: Delivery) -> AdmissionResult:
        seen.append(delivery.payload["n"])
        return AdmissionResult(AdmissionOutcome.ACCEPTED)

    results = await emit_many(emit, deliveries([3, 1, 2], []))
    assert seen == [3, 1, 2]
    assert len(results) == 3
