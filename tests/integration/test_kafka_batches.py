"""A Kafka poll's records reach the store as batches: one ``claim_events`` call claims many
of them (a real Tansu broker, the engine's own Kafka source), and each still runs once."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer

from sagaz import Saga, SagaContext, TriggerConfig, action, trigger
from sagaz.engine.engine import TriggerEngine
from sagaz.records import EventClaim, SagaRecord
from sagaz.storage.memory import MemorySagaStore
from sagaz.testing import eventually
from tests.fixtures_kafka import MakeTopic
from tests.services import unique_name

FAST: dict[str, Any] = {
    "session_timeout_ms": 1500,
    "heartbeat_interval_ms": 300,
    "poll_timeout_ms": 100,
    "commit_interval_ms": 200,
}


class ClaimCounts(MemorySagaStore):
    """Records the size of every batch claim and counts the single ones."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []
        self.singles = 0

    async def claim_events(
        self, trigger_id: str, claims: Sequence[tuple[str, SagaRecord]]
    ) -> list[EventClaim]:
        self.batches.append(len(claims))
        return await super().claim_events(trigger_id, claims)

    async def claim_event(self, trigger_id: str, key: str, record: SagaRecord) -> EventClaim:
        self.singles += 1
        return await super().claim_event(trigger_id, key, record)


async def test_a_polls_records_are_claimed_as_batches_and_each_runs_once(
    kafka_bootstrap: str, make_kafka_topic: MakeTopic
) -> None:
    total = 600
    topic = await make_kafka_topic("batches", partitions=1)
    ran: Counter[int] = Counter()

    class Batched(Saga):
        saga_name = "batched-kafka"

        @trigger(
            source="kafka",
            topic=topic,
            group_id=unique_name("batches"),
            bootstrap_servers=kafka_bootstrap,
            **FAST,
        )
        def on_event(self, event: dict[str, Any]) -> dict[str, Any]:
            return {"n": event["n"]}

        @action("count")
        async def count(self, ctx: SagaContext) -> None:
            ran[ctx["n"]] += 1

    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=5)
    await producer.start()
    try:
        for n in range(total):
            await producer.send(topic, json.dumps({"n": n}).encode(), partition=0)
        await producer.flush()
    finally:
        await producer.stop()

    store = ClaimCounts()
    async with TriggerEngine(TriggerConfig(queue_size=1_000), store):
        await eventually(lambda: sum(ran.values()) >= total, within=60, what="every saga")
    assert sorted(ran) == list(range(total)) and set(ran.values()) == {1}
    assert sum(store.batches) + store.singles == total  # each record claimed once
    assert max(store.batches) > 1  # a poll's records went to the store together
    assert store.singles < total // 2
