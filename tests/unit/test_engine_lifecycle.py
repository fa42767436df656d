"""Engine lifecycle: cancellation never acks, restart resumes, recovery, retention."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any, ClassVar

from sagaz import Saga, SagaStatus, TriggerConfig, action, trigger
from sagaz.abc import Emit, Source
from sagaz.clock import utcnow
from sagaz.engine.engine import TriggerEngine
from sagaz.events import Delivery, EventMeta
from sagaz.records import ClaimOutcome, SagaRecord
from sagaz.storage.memory import MemorySagaStore
from sagaz.testing import FakeClock, eventually


class ScriptedSource(Source):
    """A push source that emits the given (identity, payload) pairs and records settlement."""

    kind: ClassVar[str] = "scripted"
    redeliverable: ClassVar[bool] = True

    def __init__(self, messages: list[tuple[str, dict[str, Any]]]) -> None:
        self.messages = messages
        self.acked: list[str] = []
        self.nacked: list[str] = []

    async def run(self, emit: Emit) -> None:
        for identity, payload in self.messages:
            await emit(
                Delivery(
                    payload=payload,
                    decoded=True,
                    identity=identity,
                    meta=EventMeta(source="scripted"),
                    ack=self._ack(identity),
                    nack=self._nack(identity),
                )
            )
        await asyncio.Event().wait()

    def _ack(self, identity: str) -> Any:
        async def ack() -> None:
            self.acked.append(identity)

        return ack

    def _nack(self, identity: str) -> Any:
        async def nack(requeue: bool) -> None:
            self.nacked.append(identity)

        return nack


async def test_cancellation_never_acks_and_a_restart_resumes_without_rerunning_steps() -> None:
    gate = asyncio.Event()
    runs = {"first": 0, "second": 0}
    first_source = ScriptedSource([("m-1", {"n": 1})])
    second_source = ScriptedSource([("m-1", {"n": 1})])  # the broker redelivers m-1

    class Shipping(Saga):
        @trigger(source="custom", trigger=first_source)
        def on_message(self, event: dict[str, Any]) -> dict[str, Any]:
            return {"n": event["n"]}

        @action("first")
        async def first(self, ctx: Any) -> None:
            runs["first"] += 1

        @action("second")
        async def second(self, ctx: Any) -> None:
            runs["second"] += 1
            await gate.wait()

    store = MemorySagaStore()
    config = TriggerConfig(shutdown_timeout=0.05)
    engine = TriggerEngine(config, store)
    await engine.start()
    await eventually(lambda: runs["second"] == 1, within=5)
    await engine.stop()  # the saga is stuck: cancelled by shutdown_timeout
    assert first_source.acked == []
    assert first_source.nacked == ["m-1"]
    [record] = await store.list_sagas()
    assert record.status is SagaStatus.RUNNING
    # our leases were released: another worker may take the key over at once
    claim = await store.claim_inbox(
        "shipping.on_message", "m-1", record.saga_id, "other", utcnow() + timedelta(seconds=5)
    )
    assert claim.outcome is ClaimOutcome.TAKEN_OVER
    await store.renew_leases("other", utcnow() - timedelta(seconds=1))

    # a new process: the same saga, and the broker redelivers m-1
    from sagaz.triggers import registry

    registry.clear()

    class Shipping2(Saga):  # same saga name and trigger id, new source
        saga_name = "shipping"

        @trigger(source="custom", trigger=second_source)
        def on_message(self, event: dict[str, Any]) -> dict[str, Any]:
            return {"n": event["n"]}

        first = Shipping.first
        second = Shipping.second

    gate.set()
    async with TriggerEngine(config, store, triggers=registry.for_saga(Shipping2)):
        await eventually(lambda: second_source.acked == ["m-1"], within=5)
    assert runs == {"first": 1, "second": 2}  # "first" completed before the crash: not rerun
    [record] = await store.list_sagas()
    assert record.status is SagaStatus.COMPLETED


class SlowAckSource(ScriptedSource):
    """Acks take a while (a broker round trip); ``stop()`` notes what was acked by then."""

    def __init__(self, messages: list[tuple[str, dict[str, Any]]]) -> None:
        super().__init__(messages)
        self.ack_started = asyncio.Event()
        self.acked_at_stop: list[str] | None = None

    def _ack(self, identity: str) -> Any:
        async def ack() -> None:
            self.ack_started.set()
            await asyncio.sleep(0.3)
            self.acked.append(identity)

        return ack

    async def stop(self) -> None:
        self.acked_at_stop = list(self.acked)
        await super().stop()


async def test_shutdown_lets_acks_under_way_finish_before_it_closes_the_sources() -> None:
    """A duplicate is acked from the source's own task, which shutdown cancels first: the
    shielded ack goes on, and the source is not closed under it."""
    source = SlowAckSource([("dup", {"n": 1})])

    class Billing(Saga):
        @trigger(source="custom", trigger=source)
        def on_message(self, event: dict[str, Any]) -> dict[str, Any]:
            return dict(event)

        @action("bill")
        async def bill(self, ctx: Any) -> None:
            return None

    store = MemorySagaStore()
    lease = utcnow() + timedelta(seconds=30)
    await store.claim_inbox("billing.on_message", "dup", "s-dup", "earlier", lease)
    await store.complete_inbox("billing.on_message", "dup")  # done before: a duplicate now
    engine = TriggerEngine(TriggerConfig(shutdown_timeout=0.05), store)
    await engine.start()
    await asyncio.wait_for(source.ack_started.wait(), 5)
    await engine.stop()
    assert source.acked_at_stop == ["dup"]
    assert engine.metrics.reasons["duplicate"] == 1  # counted before the ack, not after


async def test_recovery_resumes_accepted_and_interrupted_sagas_of_non_redeliverable_sources() -> (
    None
):
    ran: list[tuple[str, str]] = []

    class Webish(Saga):
        @trigger(source="memory", channel="recover")
        def on_event(self, event: dict[str, Any]) -> dict[str, Any]:
            return dict(event)

        @action("one")
        async def one(self, ctx: Any) -> dict[str, Any]:
            ran.append((ctx["id"], "one"))
            return {"one": True}

        @action("two")
        async def two(self, ctx: Any) -> None:
            ran.append((ctx["id"], "two"))

    store = MemorySagaStore()
    expired = utcnow() - timedelta(seconds=1)
    # a crashed worker accepted "a" (never started) and ran "b" up to step one
    await store.create_saga(
        SagaRecord(
            "saga-a",
            "webish",
            SagaStatus.PENDING,
            {"id": "a"},
            trigger_id="webish.on_event",
            owner="dead",
            lease_expires_at=expired,
        )
    )
    await store.create_saga(
        SagaRecord(
            "saga-b",
            "webish",
            SagaStatus.RUNNING,
            {"id": "b", "one": True},
            trigger_id="webish.on_event",
            owner="dead",
            lease_expires_at=expired,
        )
    )
    from sagaz.records import StepRecord
    from sagaz.types import StepStatus

    await store.save_step(
        StepRecord("saga-b", "one", StepStatus.COMPLETED, result={"one": True}, completed_seq=1)
    )
    async with TriggerEngine(TriggerConfig(), store) as engine:
        await eventually(lambda: len(ran) == 3, within=5)  # the loop's first pass at start
        assert await engine.recover_once() == 0  # nothing left to recover
    assert sorted(ran) == [("a", "one"), ("a", "two"), ("b", "two")]
    for saga_id in ("saga-a", "saga-b"):
        record = await store.get_saga(saga_id)
        assert record is not None
        assert record.status is SagaStatus.COMPLETED


async def test_live_leases_are_not_recovered() -> None:
    class Held(Saga):
        @trigger(source="memory", channel="held")
        def on_event(self, event: dict[str, Any]) -> dict[str, Any]:
            return dict(event)

        @action("one")
        async def one(self, ctx: Any) -> None:
            raise AssertionError("a saga leased by a live worker must not be resumed")

    store = MemorySagaStore()
    await store.create_saga(
        SagaRecord(
            "held-1",
            "held",
            SagaStatus.RUNNING,
            {},
            trigger_id="held.on_event",
            owner="alive",
            lease_expires_at=utcnow() + timedelta(minutes=5),
        )
    )
    async with TriggerEngine(TriggerConfig(), store) as engine:
        assert await engine.recover_once() == 0


async def test_persisted_events_are_purged_after_retention() -> None:
    class Audited(Saga):  # the id names the event: the same one, once its inbox row expired
        @trigger(source="memory", channel="audit", idempotency_key=lambda e: e["id"])
        def on_event(self, event: dict[str, Any]) -> dict[str, Any]:
            return {"id": event["id"]}

        @action("one")
        async def one(self, ctx: Any) -> None: ...

    store = MemorySagaStore()
    config = TriggerConfig(
        persist_events=True, event_retention_days=0.5 / 86400, cleanup_interval_seconds=0.05
    )
    async with TriggerEngine(config, store) as engine:
        [saga_id] = await engine.fire("audit", {"id": 7, "secret": "x"})
        await eventually(lambda: sum(engine.metrics.completed.values()) == 1, within=5)
        record = await store.get_saga(saga_id)
        assert record is not None
        assert record.event == {"id": 7, "secret": "x"}

        async def purged() -> bool:
            stored = await store.get_saga(saga_id)
            return stored is not None and stored.event is None

        await eventually(purged, within=5)
        # the inbox row expired too: the same event is accepted again
        assert await engine.fire("audit", {"id": 7, "secret": "x"}) == [saga_id]


class PushedOnce(ScriptedSource):
    redeliverable: ClassVar[bool] = False


async def test_without_an_identity_a_redelivery_keeps_its_saga_and_a_push_is_its_own_event() -> (
    None
):
    # a broker message without any id comes back the same: its body hash must find its saga;
    # a non-redeliverable push without an id is a new event each time, identical or not
    broker = ScriptedSource([("", {"n": 1}), ("", {"n": 1})])
    pushed = PushedOnce([("", {"n": 1}), ("", {"n": 1})])
    runs: list[str] = []

    class Brokered(Saga):
        @trigger(source="custom", trigger=broker)
        def on_message(self, event: dict[str, Any]) -> dict[str, Any]:
            return {"n": event["n"]}

        @action("one")
        async def one(self, ctx: Any) -> None:
            runs.append("broker")

    class Pushed(Saga):
        @trigger(source="custom", trigger=pushed)
        def on_message(self, event: dict[str, Any]) -> dict[str, Any]:
            return {"n": event["n"]}

        @action("one")
        async def one(self, ctx: Any) -> None:
            runs.append("pushed")

    store = MemorySagaStore()
    async with TriggerEngine(TriggerConfig(), store):
        await eventually(lambda: len(broker.acked) == len(pushed.acked) == 2, within=5)
    assert sorted(runs) == ["broker", "pushed", "pushed"]
    assert len(await store.list_sagas(saga_name="brokered")) == 1
    assert len(await store.list_sagas(saga_name="pushed")) == 2


class FailingSource(Source):
    """A push source whose ``run()`` raises its first ``failures`` times, then idles."""

    kind: ClassVar[str] = "failing"

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.starts = 0
        self.runs = 0

    async def start(self) -> None:
        self.starts += 1
        await super().start()

    async def run(self, emit: Emit) -> None:
        self.runs += 1
        if self.runs <= self.failures:
            raise ConnectionError(f"broker gone (run {self.runs})")
        await asyncio.Event().wait()


async def test_a_failing_source_is_restarted_after_a_backoff_on_the_engine_clock() -> None:
    source = FailingSource(failures=3)

    class Feeds(Saga):
        @trigger(source="custom", trigger=source)
        def on_message(self, event: dict[str, Any]) -> dict[str, Any]:
            return dict(event)

        @action("noop")
        async def noop(self, ctx: Any) -> None:
            return None

    clock = FakeClock()
    async with TriggerEngine(TriggerConfig(), MemorySagaStore(), clock=clock) as engine:
        # the backoff, beside the engine's trigger-state watcher (it sleeps on the clock too)
        await eventually(lambda: source.runs == 1 and clock.sleepers == 2, what="a failure")
        await asyncio.sleep(1.0)  # real time beyond the first backoff: no restart without it
        assert source.runs == 1
        for runs, nominal in ((1, 0.5), (2, 1.0), (3, 2.0)):
            step, waited = nominal / 100, 0.0
            while source.runs == runs and waited < 2 * nominal:
                await clock.advance(step)
                waited += step
            # jittered: between half the nominal delay and the nominal delay
            assert nominal / 2 * 0.97 <= waited <= nominal * 1.02, (runs, waited)
            await eventually(lambda n=runs + 1: source.runs == n, what=f"run {runs + 1}")
        assert sum(engine.metrics.source_errors.values()) == 3  # each failure reported
        assert source.starts == 4  # started by the engine, then before each restart
        await clock.settle()
        assert clock.sleepers == 1  # the fourth run works: no more backing off (the watcher)
