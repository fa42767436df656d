"""The engine while its store is unavailable (issue 12.3): intake pauses, nothing is acked,
the outage is logged once, and everything resumes by itself once the store is back.

``OutageStore`` (``tests/engine_support.py``) is a ``MemorySagaStore`` whose every operation
raises ``StoreUnavailableError`` while ``down`` is set, as a lost PostgreSQL or Redis would.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any, ClassVar

import pytest

from sagaz import (
    Saga,
    SagaContext,
    SagaListener,
    SagaStatus,
    TriggerConfig,
    action,
    compensate,
    trigger,
)
from sagaz.abc import Emit, Source, emit_many
from sagaz.engine.engine import TriggerEngine
from sagaz.events import AdmissionOutcome, Delivery, EventMeta
from sagaz.exceptions import StoreUnavailableError
from sagaz.records import OutboxMessage, SagaRecord
from sagaz.storage.memory import MemorySagaStore
from sagaz.testing import FakeClock, continually, eventually
from tests.engine_support import NumberedSource, OutageStore

OUTAGE_LOG = "sagaz.engine.store_outage"


class BrokerSource(NumberedSource):
    """A redeliverable push source: emits ``count`` messages in order, records what it was
    asked to ack and nack, and how many it has handed to ``emit`` (returned or not)."""

    kind: ClassVar[str] = "broker"

    def __init__(self, count: int) -> None:
        super().__init__()
        self.count = count
        self.emitting = 0  # emit calls started

    async def run(self, emit: Emit) -> None:
        for n in range(self.count):
            self.emitting += 1
            await emit(self.delivery(n))
        await asyncio.Event().wait()


def define_saga(source: Source, gate: asyncio.Event, runs: Counter[tuple[int, str]]) -> type[Saga]:
    class Outaged(Saga):
        saga_name = "outaged"

        @trigger(source="custom", trigger=source)
        def on_message(self, event: dict[str, Any]) -> dict[str, Any]:
            return {"n": event["n"]}

        @action("first")
        async def first(self, ctx: SagaContext) -> None:
            runs[ctx["n"], "first"] += 1
            await gate.wait()

        @action("second")
        async def second(self, ctx: SagaContext) -> None:
            runs[ctx["n"], "second"] += 1

        @compensate("first")
        async def undo_first(self, ctx: SagaContext) -> None:
            runs[ctx["n"], "undo"] += 1

    return Outaged


def outage_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == OUTAGE_LOG]


async def test_while_the_store_is_down_nothing_is_acked_intake_pauses_and_all_resumes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    total, concurrent = 30, 5
    source, gate, runs = BrokerSource(total), asyncio.Event(), Counter[tuple[int, str]]()
    define_saga(source, gate, runs)
    store = OutageStore()
    config = TriggerConfig(max_concurrent_sagas=concurrent, queue_size=10)
    async with TriggerEngine(config, store) as engine:
        await eventually(
            lambda: sum(runs[n, "first"] for n in range(total)) == concurrent,
            what="the first sagas in their first step",
        )
        store.down = True
        gate.set()  # their checkpoints now fail: they wait for the store, un-acked
        await eventually(lambda: not engine.state.outage.available, what="the outage seen")
        emitting = source.emitting

        def paused() -> bool:
            return source.emitting == emitting and not source.acked and not source.nacked

        await continually(paused, during=0.3, what="no ack and no more intake while down")
        assert sum(runs[n, "second"] for n in range(total)) == 0
        assert store.refused > concurrent  # every waiting party tried, the probe too

        store.down = False
        await eventually(lambda: len(source.acked) == total, what="every message acked")
        assert engine.state.outage.available
    assert source.acked == Counter(range(total))  # each exactly once
    assert source.nacked == []  # waited for the store in place: nothing handed back
    completed = await store.list_sagas(status=SagaStatus.COMPLETED, limit=100)
    assert sorted(s.context["n"] for s in completed) == list(range(total))
    # the step whose checkpoint failed ran again once; nothing else repeated or compensated
    assert runs == Counter(
        {
            **{(n, "first"): 2 if n < concurrent else 1 for n in range(total)},
            **{(n, "second"): 1 for n in range(total)},
        }
    )
    lines = outage_lines(caplog)
    assert len(lines) == 2, lines  # one when it went away, one when it came back
    assert "unavailable" in lines[0] and "back" in lines[1]


async def test_each_outage_is_logged_once_when_it_begins_and_once_when_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    source, gate, runs = BrokerSource(0), asyncio.Event(), Counter[tuple[int, str]]()
    define_saga(source, gate, runs)
    store = OutageStore()
    async with TriggerEngine(TriggerConfig(), store) as engine:
        outage = engine.state.outage
        for _ in range(2):
            store.down = True
            for _ in range(50):  # fifty failures of one outage
                outage.down(StoreUnavailableError("gone"))
            store.down = False
            await eventually(lambda: outage.available, what="the store back")
        assert outage.outages == 2
    assert len(outage_lines(caplog)) == 4


async def test_a_webhook_delivery_is_refused_at_once_while_the_store_is_down() -> None:
    source, gate, runs = BrokerSource(0), asyncio.Event(), Counter[tuple[int, str]]()
    gate.set()
    define_saga(source, gate, runs)
    store = OutageStore()
    nacked: list[bool] = []

    async def nack(requeue: bool) -> None:
        nacked.append(requeue)

    def request(n: int) -> Delivery:
        return Delivery(
            payload={"n": n},
            decoded=True,
            identity=f"r-{n}",
            meta=EventMeta(source="webhook"),
            nack=nack,
            wait_for_store=False,  # what the webhook source sets: 503 + Retry-After
        )

    async with TriggerEngine(TriggerConfig(), store) as engine:
        active = engine.triggers["outaged.on_message"]
        store.down = True
        # the outage is discovered by this request, then known to the next one
        for n in range(2):
            result = await asyncio.wait_for(engine.admission.admit(active, request(n)), 1)
            assert result.outcome is AdmissionOutcome.REJECTED
            assert result.error == "the store is unavailable; retry later"
        assert not engine.state.outage.available
        assert nacked == [True, True]
        store.down = False
        await eventually(lambda: engine.state.outage.available, what="the store back")
        result = await engine.admission.admit(active, request(2))
        assert result.outcome is AdmissionOutcome.ACCEPTED


async def test_fire_event_waits_for_the_store_and_stop_releases_it() -> None:
    ran: list[int] = []

    class Fired(Saga):
        @trigger(source="memory", channel="outage")
        def on_event(self, event: dict[str, Any]) -> dict[str, Any]:
            return dict(event)

        @action("one")
        async def one(self, ctx: SagaContext) -> None:
            ran.append(ctx["n"])

    store = OutageStore()
    engine = TriggerEngine(TriggerConfig(shutdown_timeout=0.1), store)
    await engine.start()
    try:
        store.down = True
        waiting = asyncio.create_task(engine.fire("outage", {"n": 1}))
        await eventually(lambda: not engine.state.outage.available, what="the outage seen")
        await continually(lambda: not waiting.done(), during=0.2, what="fire_event waiting")
        store.down = False
        [saga_id] = await asyncio.wait_for(waiting, 10)
        result = await engine.wait_for(saga_id, timeout=10)
        assert result and result.status is SagaStatus.COMPLETED
        assert ran == [1]

        store.down = True
        stuck = asyncio.create_task(engine.fire("outage", {"n": 2}))
        await continually(lambda: not stuck.done(), during=0.2, what="fire_event waiting")
    finally:
        await asyncio.wait_for(engine.stop(), 10)  # does not hang on the outage
    assert await asyncio.wait_for(stuck, 1) == []  # refused: the engine stopped
    assert ran == [1]


async def test_the_probe_waits_on_the_engine_clock_with_the_shared_backoff() -> None:
    source, gate, runs = BrokerSource(0), asyncio.Event(), Counter[tuple[int, str]]()
    define_saga(source, gate, runs)
    store, clock = OutageStore(), FakeClock()
    async with TriggerEngine(TriggerConfig(), store, clock=clock) as engine:
        outage = engine.state.outage
        store.down = True
        outage.down(StoreUnavailableError("gone"))
        await clock.settle()  # the probe parks on the clock
        await clock.advance(60)  # a minute of probes, all refused
        probes = store.refused
        assert 10 <= probes <= 70  # backing off, not spinning: 0.1 s doubling up to 2 s
        store.down = False
        await clock.settle()
        assert not outage.available  # nobody looked yet: the next probe is due later
        await clock.advance(outage.probe_maximum)
        await eventually(lambda: outage.available, what="the probe finding the store back")


async def test_a_checkpoint_that_fails_for_an_outage_is_not_a_step_failure() -> None:
    runs: Counter[str] = Counter()

    class Checkout(Saga):
        @action("reserve")
        async def reserve(self, ctx: SagaContext) -> None:
            runs["reserve"] += 1
            if runs["reserve"] == 1:
                store.down = True  # the checkpoint of this step fails

        @compensate("reserve")
        async def release(self, ctx: SagaContext) -> None:
            runs["release"] += 1

        @action("charge")
        async def charge(self, ctx: SagaContext) -> None:
            runs["charge"] += 1

    store = OutageStore()
    with pytest.raises(StoreUnavailableError):
        await Checkout().run({}, saga_id="s-1", store=store)
    store.down = False
    [record] = await store.list_sagas()
    assert record.status is SagaStatus.RUNNING  # interrupted, not compensated
    result = await Checkout().run({}, saga_id="s-1", store=store)
    assert result.status is SagaStatus.COMPLETED
    assert runs == {"reserve": 2, "charge": 1}


async def test_a_step_whose_own_store_is_down_fails_like_any_step() -> None:
    class Reporting(Saga):
        @action("report")
        async def report(self, ctx: SagaContext) -> None:
            raise StoreUnavailableError("the step's own reporting database is down")

    result = await Reporting().run({}, store=MemorySagaStore())
    assert result.status is SagaStatus.COMPENSATED
    assert result.error is not None and "reporting database is down" in result.error


async def test_a_source_failing_for_the_store_waits_for_it_unreported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    errors: list[BaseException] = []

    class StoreBacked(Source):  # as a cron or poll source that claims in the store
        runs = 0

        async def run(self, emit: Emit) -> None:
            self.runs += 1
            if self.runs == 1:
                raise StoreUnavailableError("the store is restarting")
            await asyncio.Event().wait()

    class Listening(SagaListener):
        async def on_trigger_error(self, saga_name: str, error: BaseException, event: Any) -> None:
            errors.append(error)

    source = StoreBacked()

    class Scheduled(Saga):
        @trigger(source="custom", trigger=source)
        def on_tick(self, event: dict[str, Any]) -> dict[str, Any]:
            return dict(event)

        @action("one")
        async def one(self, ctx: SagaContext) -> None:
            return None

    async with TriggerEngine(TriggerConfig(), OutageStore(), listeners=[Listening()]) as engine:
        await eventually(lambda: source.runs == 2, what="the source run again")
        assert engine.state.outage.available
    assert errors == []  # an outage, not a source failure
    assert len(outage_lines(caplog)) == 2


async def test_a_retry_attempt_whose_last_write_lost_its_reply_is_not_run_again() -> None:
    class LostReply(OutageStore):
        """The completion is written, then the connection drops before the reply."""

        lose_the_completion = False

        async def save_saga(self, record: SagaRecord, outbox: Sequence[OutboxMessage] = ()) -> None:
            await super().save_saga(record, outbox)
            if self.lose_the_completion and record.status is SagaStatus.COMPLETED:
                self.lose_the_completion = False
                raise StoreUnavailableError("connection lost before the reply")

    store = LostReply()
    runs: list[int] = []

    class Retried(Saga):
        @trigger(source="memory", channel="retried")
        def on_event(self, event: dict[str, Any]) -> dict[str, Any]:
            return dict(event)

        @action("one")
        async def one(self, ctx: SagaContext) -> None:
            runs.append(ctx.attempt)
            if len(runs) == 1:
                raise RuntimeError("the first attempt fails")  # compensated, then retried
            store.lose_the_completion = True

    config = TriggerConfig(max_retries=1, retry_backoff_seconds=[0])
    async with TriggerEngine(config, store) as engine:
        [saga_id] = await engine.fire("retried", {})
        result = await engine.wait_for(saga_id, timeout=10)
    assert result and result.status is SagaStatus.COMPLETED and result.attempt == 2
    assert runs == [1, 2]  # the second attempt was not started over after the lost reply


class BatchSource(NumberedSource):
    """A broker whose poll hands the engine one batch (``admit_many``: it pauses itself)."""

    kind: ClassVar[str] = "batch"

    def __init__(self, count: int) -> None:
        super().__init__()
        self.count = count

    async def pause(self) -> None:
        return None

    async def resume(self) -> None:
        return None

    async def run(self, emit: Emit) -> None:
        await emit_many(emit, [self.delivery(n) for n in range(self.count)])
        await asyncio.Event().wait()


async def test_an_outage_after_a_batch_claim_waits_for_the_store_instead_of_a_nack() -> None:
    # The batch's claim made the filtered event's key ours; undoing it met an outage. The
    # batch path nacked it where a lone admission waits and claims again: the key and its
    # delivery were left to a redelivery that a Kafka partition only gives after a restart.
    class OutageOnCompletion(MemorySagaStore):
        outages = 0

        async def complete_inbox(self, trigger_id: str, key: str) -> None:
            if not self.outages:
                self.outages += 1
                raise StoreUnavailableError("connection lost")
            await super().complete_inbox(trigger_id, key)

    source = BatchSource(3)
    ran: list[int] = []

    class Batched(Saga):
        saga_name = "batched"

        @trigger(source="custom", trigger=source)
        def on_message(self, event: dict[str, Any]) -> dict[str, Any] | None:
            return None if event["n"] == 1 else {"n": event["n"]}  # 1 is filtered

        @action("work")
        async def work(self, ctx: SagaContext) -> None:
            ran.append(ctx["n"])

    store = OutageOnCompletion()
    async with TriggerEngine(TriggerConfig(), store):
        await eventually(lambda: len(source.acked) + len(source.nacked) == 3, what="settled")
    assert store.outages == 1
    assert source.nacked == []
    assert source.acked == Counter({0: 1, 1: 1, 2: 1})
    assert sorted(ran) == [0, 2]
