"""An admission cancelled after its inbox claim made the key this worker's (a Kafka partition
revoked by a rebalance cancels its emits, here while the queue is full; a webhook request, a
cron tick, a poll or a ``fire()`` whose caller is cancelled) is finished all the same: the
saga runs here and the delivery is acked, never nacked.

Found by the frozen-worker chaos test: nacked, the claimed keys and their pending rows stayed
the worker's, their leases renewed by its heartbeat while nothing ran their sagas, and the
partition's new owner waited on them for ever (stuck at 1998 and at 1415 of 2000 sagas).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

import pytest

from sagaz import Saga, SagaContext, SagaStatus, TriggerConfig, action, trigger
from sagaz.abc import Emit, SagaStore, Source, emit_many
from sagaz.engine.engine import TriggerEngine
from sagaz.engine.identity import saga_id_for
from sagaz.records import EventClaim, SagaRecord
from sagaz.storage.memory import MemorySagaStore
from sagaz.storage.sqlite import SQLiteSagaStore
from sagaz.testing import eventually
from tests.engine_support import NumberedSource


class PartitionSource(NumberedSource):
    """A redeliverable source whose emits can be cancelled one by one, as a Kafka partition's
    are when it is revoked; records what it was asked to ack and nack."""

    kind: ClassVar[str] = "partitioned"

    def __init__(self) -> None:
        super().__init__()
        self.emit: Emit | None = None
        self.ready = asyncio.Event()

    async def pause(self) -> None:  # pauses itself (so its emit takes batches whole)
        return None

    async def resume(self) -> None:
        return None

    async def run(self, emit: Emit) -> None:
        self.emit = emit
        self.ready.set()
        await asyncio.Event().wait()

    def send(self, *numbers: int) -> asyncio.Task[Any]:
        """Emit ``numbers`` (one, or a batch) in a task, as a partition's emit loop does."""
        assert self.emit is not None
        deliveries = [self.delivery(n) for n in numbers]
        if len(deliveries) == 1:
            return asyncio.ensure_future(self.emit(deliveries[0]))
        return asyncio.ensure_future(emit_many(self.emit, deliveries))


class OneShotSource(PartitionSource):
    """The same, for a source that never delivers an event again (a webhook whose caller
    went away, a cron tick or a poll whose emit was cancelled)."""

    kind: ClassVar[str] = "one-shot"
    redeliverable: ClassVar[bool] = False


#: the trigger method's calls, per event number
TRANSFORMED: Counter[int] = Counter()


def define_saga(source: Source, gate: asyncio.Event) -> None:
    class Partitioned(Saga):
        saga_name = "partitioned"

        @trigger(source="custom", trigger=source)
        def on_message(self, event: dict[str, Any]) -> dict[str, Any]:
            TRANSFORMED[event["n"]] += 1
            return {"n": event["n"]}

        @action("work")
        async def work(self, ctx: SagaContext) -> None:
            await gate.wait()


@pytest.mark.parametrize(
    ("kind", "batch", "source_class"),
    [
        ("memory", [2], PartitionSource),
        ("sqlite", [2], PartitionSource),
        ("sqlite", [2, 3, 4], PartitionSource),
        ("memory", [2], OneShotSource),
        ("sqlite", [2], OneShotSource),
    ],
    ids=["memory", "sqlite", "sqlite-batch", "memory-one-shot", "sqlite-one-shot"],
)
async def test_an_admission_cancelled_after_its_claim_still_runs_its_saga(
    kind: str, batch: list[int], source_class: type[PartitionSource], tmp_path: Path
) -> None:
    # one-shot: the pending row keeps the event, but while this worker lives its heartbeat
    # renews the row's lease, so no recovery loop would take it: it must run here
    source, gate = source_class(), asyncio.Event()
    define_saga(source, gate)
    store: SagaStore = (
        MemorySagaStore() if kind == "memory" else SQLiteSagaStore(tmp_path / "cancel.db")
    )
    config = TriggerConfig(
        max_concurrent_sagas=1, queue_size=1, lease_seconds=30, shutdown_timeout=1.0
    )
    async with TriggerEngine(config, store) as engine:
        await source.ready.wait()
        running, queued = source.send(0), source.send(1)  # one runs (gated), one is queued
        await eventually(lambda: running.done() and queued.done(), what="both admitted")
        blocked = source.send(*batch)  # claimed, then blocked on the full queue

        async def claimed() -> bool:
            sagas = await store.list_sagas(saga_name="partitioned")
            return len(sagas) == 2 + len(batch)

        await eventually(claimed, what="the batch's keys claimed")
        await asyncio.sleep(0.05)
        assert not blocked.done()  # waiting for room in the queue
        blocked.cancel()  # its partition revoked
        await asyncio.gather(blocked, return_exceptions=True)
        assert source.nacked == []  # the keys are ours: not handed back
        gate.set()
        total = 2 + len(batch)
        await eventually(lambda: len(source.acked) == total, what="every event acked")
        assert engine.admission.in_flight == {}
    assert source.acked == Counter(range(total))
    assert source.nacked == []
    async with store:
        sagas = await store.list_sagas(saga_name="partitioned")
    assert sorted(s.context["n"] for s in sagas) == list(range(total))
    assert {s.status for s in sagas} == {SagaStatus.COMPLETED}


async def test_an_admission_cancelled_while_the_engine_stops_is_nacked() -> None:
    source, gate = PartitionSource(), asyncio.Event()
    define_saga(source, gate)
    store = MemorySagaStore()
    config = TriggerConfig(max_concurrent_sagas=1, queue_size=1, shutdown_timeout=0.1)
    engine = TriggerEngine(config, store)
    await engine.start()
    try:
        await source.ready.wait()
        source.send(0)
        source.send(1)
        blocked = source.send(2)

        async def claimed() -> bool:
            return len(await store.list_sagas(saga_name="partitioned")) == 3

        await eventually(claimed, what="its key claimed")
        await asyncio.sleep(0.05)
        assert not blocked.done()  # waiting for room in the queue
    finally:
        await engine.stop()
    await asyncio.gather(blocked, return_exceptions=True)
    assert 2 in source.nacked  # stopping: handed back for redelivery, not accepted late


class SlowClaims(MemorySagaStore):
    """Its claims are made at once but answered only once ``answer`` is set (a claim whose
    group is still at the server when the admission is cancelled)."""

    def __init__(self) -> None:
        super().__init__()
        self.answer = asyncio.Event()
        self.made = asyncio.Event()

    async def claim_event(self, trigger_id: str, key: str, record: SagaRecord) -> EventClaim:
        claim = await super().claim_event(trigger_id, key, record)
        if key.endswith("m-2"):
            self.made.set()
            await self.answer.wait()
        return claim


@pytest.mark.parametrize("source_class", [PartitionSource, OneShotSource])
async def test_an_admission_cancelled_while_its_claim_is_under_way_still_runs_its_saga(
    source_class: type[PartitionSource],
) -> None:
    source, gate = source_class(), asyncio.Event()
    define_saga(source, gate)
    store = SlowClaims()
    config = TriggerConfig(lease_seconds=0.4, shutdown_timeout=1.0)
    async with TriggerEngine(config, store) as engine:
        await source.ready.wait()
        gate.set()
        await source.send(0)
        admitting = source.send(2)
        async with asyncio.timeout(10):
            await store.made.wait()  # the key is ours; the answer has not come back
        admitting.cancel()  # its partition revoked
        await asyncio.gather(admitting, return_exceptions=True)
        store.answer.set()
        await eventually(lambda: source.acked[2] == 1, what="the event acked")
        assert engine.admission.in_flight == {}
    assert source.nacked == []
    saga = await store.get_saga(saga_id_for("partitioned.on_message", "m-2"))
    assert saga is not None and saga.status is SagaStatus.COMPLETED


class SlowDeletes(MemorySagaStore):
    """Its ``delete_saga`` of ``slow`` waits for ``go`` (a drop_oldest eviction's writes
    still under way when the admission that evicted is cancelled)."""

    def __init__(self, slow: str) -> None:
        super().__init__()
        self.slow = slow
        self.go = asyncio.Event()
        self.deleting = asyncio.Event()

    async def delete_saga(self, saga_id: str) -> None:
        if saga_id == self.slow:
            self.deleting.set()
            await self.go.wait()
        await super().delete_saga(saga_id)


async def test_an_admission_cancelled_after_its_event_was_queued_is_not_accepted_again() -> None:
    source, gate = PartitionSource(), asyncio.Event()
    define_saga(source, gate)
    store = SlowDeletes(saga_id_for("partitioned.on_message", "m-1"))
    TRANSFORMED.clear()
    config = TriggerConfig(
        max_concurrent_sagas=1,
        queue_size=1,
        backpressure_strategy="drop_oldest",
        shutdown_timeout=1.0,
    )
    async with TriggerEngine(config, store) as engine:
        await source.ready.wait()
        await source.send(0)
        first = saga_id_for("partitioned.on_message", "m-0")

        async def first_running() -> bool:
            saga = await store.get_saga(first)
            return saga is not None and saga.status is SagaStatus.RUNNING

        await eventually(first_running, what="0 running (gated)")
        await source.send(1)  # queued
        evicting = source.send(2)  # queued in place of 1, whose drop waits for the store
        async with asyncio.timeout(10):
            await store.deleting.wait()
        evicting.cancel()  # its partition revoked: 2 is queued already
        await asyncio.gather(evicting, return_exceptions=True)
        store.go.set()
        gate.set()
        await eventually(lambda: source.acked[2] >= 1, what="2 acked")
        await eventually(lambda: source.acked[1] >= 1, what="1 dropped and acked")
        await asyncio.sleep(0.1)
        assert engine.admission.in_flight == {}
    assert source.nacked == []
    assert source.acked == Counter({0: 1, 1: 1, 2: 1})
    assert TRANSFORMED[2] == 1  # queued once: not accepted again when cancelled


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_a_fire_cancelled_in_its_trigger_method_still_runs_its_saga_once(
    kind: str, tmp_path: Path
) -> None:
    """``fire()``'s caller gives up (a timeout, a cancelled request) once the store holds the
    event: the saga runs here all the same, once, and its key is not left locked."""
    entered, calls, ran = asyncio.Event(), list[str](), list[str]()

    class Fired(Saga):
        saga_name = "fired"

        @trigger(source="memory", channel="orders", idempotency_key=lambda e: e["id"])
        async def on_order(self, event: dict[str, Any]) -> dict[str, Any]:
            calls.append(event["id"])
            if len(calls) == 1:
                entered.set()
                await asyncio.Event().wait()  # its caller is cancelled here
            return {"order": event["id"]}

        @action("charge")
        async def charge(self, ctx: SagaContext) -> None:
            ran.append(ctx["order"])

    store: SagaStore = (
        MemorySagaStore() if kind == "memory" else SQLiteSagaStore(tmp_path / "fire.db")
    )
    saga_id = saga_id_for("fired.on_order", "o-1")
    # a short lease and a quick recovery loop: still, while this worker lives, its heartbeat
    # renews the pending row's lease, so only this worker can run the saga
    config = TriggerConfig(lease_seconds=0.6, recovery_interval_seconds=0.1)
    async with TriggerEngine(config, store) as engine:
        fire = asyncio.create_task(engine.fire("orders", {"id": "o-1"}))
        async with asyncio.timeout(10):
            await entered.wait()
        fire.cancel()
        with pytest.raises(asyncio.CancelledError):
            await fire

        async def completed() -> bool:
            saga = await store.get_saga(saga_id)
            return saga is not None and saga.status is SagaStatus.COMPLETED

        await eventually(completed, within=10, what="the saga completed")
        assert ran == ["o-1"]
        assert calls == ["o-1", "o-1"]  # its trigger method ran again, from the kept event
        assert await engine.fire("orders", {"id": "o-1"}) == []  # a duplicate: not locked
        await eventually(lambda: engine.admission.in_flight == {}, what="settled")
