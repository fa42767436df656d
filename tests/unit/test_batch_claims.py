"""A batch of deliveries (``admit_many``, a Kafka poll's records) is claimed with one store
call, and keeps every per-event answer: invalid, duplicate, joined, accepted; a batch claim
that fails is made again per event, waiting for the store."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from sagaz import Saga, SagaContext, TriggerConfig, action, trigger
from sagaz.engine.engine import TriggerEngine
from sagaz.events import AdmissionOutcome, Delivery, EventMeta, Reason
from sagaz.exceptions import StoreUnavailableError
from sagaz.records import EventClaim, SagaRecord
from sagaz.storage.memory import MemorySagaStore
from sagaz.testing import eventually


class CountingStore(MemorySagaStore):
    """Counts its claim calls; its first ``fail_batches`` batch claims fail (store down)."""

    def __init__(self, fail_batches: int = 0) -> None:
        super().__init__()
        self.batch_claims: list[int] = []
        self.single_claims = 0
        self.fail_batches = fail_batches

    async def claim_events(
        self, trigger_id: str, claims: Sequence[tuple[str, SagaRecord]]
    ) -> list[EventClaim]:
        self.batch_claims.append(len(claims))
        if self.fail_batches:
            self.fail_batches -= 1
            # half of the batch claimed before the store went away
            await super().claim_events(trigger_id, claims[: len(claims) // 2])
            raise StoreUnavailableError("the store went away")
        return await super().claim_events(trigger_id, claims)

    async def claim_event(self, trigger_id: str, key: str, record: SagaRecord) -> EventClaim:
        self.single_claims += 1
        return await super().claim_event(trigger_id, key, record)


def batch_saga(started: list[int]) -> None:
    class Batched(Saga):
        saga_name = "batched"

        @trigger(source="memory", channel="batched", idempotency_key=lambda e: e["n"])
        def on_event(self, event: dict[str, Any]) -> dict[str, Any] | None:
            return None if event["n"] == 99 else {"n": event["n"]}

        @action("record")
        async def record(self, ctx: SagaContext) -> None:
            started.append(ctx["n"])


def deliveries(payloads: list[Any], acks: list[Any]) -> list[Delivery]:
    def one(payload: Any) -> Delivery:
        async def ack() -> None:
            acks.append(payload)

        return Delivery(payload=payload, meta=EventMeta(source="memory"), identity="", ack=ack)

    return [one(p) for p in payloads]


async def test_a_batch_is_claimed_in_one_store_call_with_every_answer_kept() -> None:
    started: list[int] = []
    acks: list[Any] = []
    batch_saga(started)
    store = CountingStore()
    async with TriggerEngine(TriggerConfig(), store) as engine:
        active = engine.triggers["batched.on_event"]
        await engine.admission.admit_many(active, deliveries([{"n": 0}], acks))
        await eventually(lambda: started == [0])
        payloads = [{"n": 1}, {"x": "no n"}, {"n": 0}, {"n": 2}, {"n": 1}, {"n": 99}]
        results = await engine.admission.admit_many(active, deliveries(payloads, acks))
        await eventually(lambda: len(acks) == 1 + len(payloads))  # each acked once
    assert [(r.outcome, r.reason) for r in results] == [
        (AdmissionOutcome.ACCEPTED, None),
        (AdmissionOutcome.INVALID, Reason.INVALID),
        (AdmissionOutcome.DUPLICATE, Reason.DUPLICATE),
        (AdmissionOutcome.ACCEPTED, None),
        (AdmissionOutcome.ACCEPTED, None),  # joined the first delivery of n=1
        (AdmissionOutcome.FILTERED, Reason.FILTERED),
    ]
    assert results[0].saga_id == results[4].saga_id
    assert store.batch_claims == [4]  # n=1, n=0, n=2, n=99: one call; the redelivery joined
    assert store.single_claims == 1  # the first batch (one delivery) was claimed alone
    assert sorted(started) == [0, 1, 2]
    assert engine.metrics.received["batched.on_event"] == 1 + len(payloads)


async def test_a_batch_claim_that_fails_is_made_again_per_event_once_the_store_is_back() -> None:
    started: list[int] = []
    acks: list[Any] = []
    batch_saga(started)
    store = CountingStore(fail_batches=1)
    async with TriggerEngine(TriggerConfig(), store) as engine:
        active = engine.triggers["batched.on_event"]
        batch = deliveries([{"n": n} for n in range(6)], acks)
        for delivery in batch:
            delivery.wait_for_store = True  # a broker message waits for the store
        results = await engine.admission.admit_many(active, batch)
        await eventually(lambda: len(acks) == 6)
    assert [r.outcome for r in results] == [AdmissionOutcome.ACCEPTED] * 6
    assert store.batch_claims == [6]
    assert store.single_claims == 6  # each again, alone: three of them taken over (ours)
    assert sorted(started) == list(range(6))  # one run each


class StuckClaims(MemorySagaStore):
    """Its batch claims never answer (a store that hangs)."""

    def __init__(self) -> None:
        super().__init__()
        self.claiming = asyncio.Event()

    async def claim_events(
        self, trigger_id: str, claims: Sequence[tuple[str, SagaRecord]]
    ) -> list[EventClaim]:
        self.claiming.set()
        await asyncio.Event().wait()
        raise AssertionError("never answers")


async def test_a_batch_cancelled_while_its_claim_hangs_claims_each_key_again() -> None:
    # the claim that hangs may have been made at the server: each key is claimed again in a
    # while (here alone: made now), so none is left ours with no saga running for it
    nacks: list[Any] = []
    acks: list[Any] = []
    started: list[int] = []
    batch_saga(started)
    store = StuckClaims()
    async with TriggerEngine(TriggerConfig(lease_seconds=1.0), store) as engine:
        active = engine.triggers["batched.on_event"]
        batch = deliveries([{"n": n} for n in range(3)], acks)
        for delivery in batch:

            async def nack(requeue: bool, payload: Any = delivery.payload) -> None:
                nacks.append((payload["n"], requeue))

            delivery.nack = nack
        admitting = asyncio.ensure_future(engine.admission.admit_many(active, batch))
        async with asyncio.timeout(10):  # the batch's claim is under way
            await store.claiming.wait()
        admitting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await admitting
        await eventually(lambda: len(acks) == 3, what="every delivery acked")
        assert sorted(started) == [0, 1, 2]  # one run each, here
        assert nacks == []
        # nothing of them stays in flight: a redelivery meets the inbox (a duplicate)
        assert engine.admission.in_flight == {}


class LateBatchAnswer(MemorySagaStore):
    """Its first batch claim is made, but its answer never comes back (a claim that
    committed at the server while its caller was cancelled, or that answered too late)."""

    def __init__(self) -> None:
        super().__init__()
        self.claimed = asyncio.Event()

    async def claim_events(
        self, trigger_id: str, claims: Sequence[tuple[str, SagaRecord]]
    ) -> list[EventClaim]:
        made = await super().claim_events(trigger_id, claims)
        if self.claimed.is_set():
            return made
        self.claimed.set()
        await asyncio.Event().wait()
        raise AssertionError("never answers")


async def test_keys_a_cancelled_batch_claimed_without_knowing_are_not_left_held() -> None:
    # A Kafka partition revoked while its batch is being claimed (a worker thawed after a
    # freeze, a rebalance) cancels the admission; the claim may have been made all the same.
    # Those keys (and their pending rows) stay this worker's, renewed by its heartbeat: the
    # partition's new owner must still get each of those events to one completed saga.
    started: list[int] = []
    batch_saga(started)
    store = LateBatchAnswer()
    config = {"lease_seconds": 1.0, "recovery_interval_seconds": 0.2}
    first = TriggerEngine(TriggerConfig(worker_id="first", **config), store)
    second = TriggerEngine(TriggerConfig(worker_id="second", **config), store)
    async with first, second:
        revoked = deliveries([{"n": n} for n in range(3)], [])
        for delivery in revoked:
            delivery.wait_for_store = True  # a broker message
        admitting = asyncio.ensure_future(
            first.admission.admit_many(first.triggers["batched.on_event"], revoked)
        )
        async with asyncio.timeout(10):  # the batch's claim is made, its answer is not back
            await store.claimed.wait()
        admitting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await admitting
        acks: list[Any] = []  # the events redelivered to the partition's new owner
        redelivered = deliveries([{"n": n} for n in range(3)], acks)
        for delivery in redelivered:
            delivery.wait_for_store = True
        await second.admission.admit_many(second.triggers["batched.on_event"], redelivered)
        await eventually(lambda: len(acks) == 3, what="every redelivered event acked")
    assert sorted(started) == [0, 1, 2]  # one run each
