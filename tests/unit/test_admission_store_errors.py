"""A store error during admission that is not an outage (a query the store refuses, a bug in a
store) is neither answered with a nack nor left unbounded: the event is held, its admission is
tried again with a backoff, and after the last attempt it is dead-lettered with the error and
acked. A nack was the old answer: Kafka then never committed past the event before a restart
or a rebalance, RabbitMQ and SQS delivered it again at once (a hot loop on an error that
repeats), and a key the claim had already made ours stayed ours, its lease renewed.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar

import pytest

from sagaz import Saga, SagaContext, SagaStatus, TriggerConfig, action, trigger
from sagaz.abc import Emit, Source
from sagaz.clock import utcnow
from sagaz.engine.engine import TriggerEngine
from sagaz.engine.identity import saga_id_for
from sagaz.engine.store_errors import StoreErrors
from sagaz.events import AdmissionOutcome, AdmissionResult
from sagaz.records import ClaimOutcome, EventClaim, SagaRecord
from sagaz.storage.memory import MemorySagaStore
from sagaz.storage.sqlite import SQLiteSagaStore
from sagaz.testing import eventually
from tests.engine_support import NumberedSource

TRIGGER_ID = "stored.on_message"


class RecordingSource(NumberedSource):
    """A source whose deliveries record their acks and nacks; redeliverable (a broker) or
    not, and willing to wait for the store or not (a webhook)."""

    kind: ClassVar[str] = "recording"

    def __init__(self, *, redeliverable: bool = True, wait_for_store: bool = True) -> None:
        super().__init__()
        self.redeliverable = redeliverable  # type: ignore[misc]  # per test, not per class
        self.wait_for_store = wait_for_store
        self.emit: Emit | None = None
        self.ready = asyncio.Event()

    async def run(self, emit: Emit) -> None:
        self.emit = emit
        self.ready.set()
        await asyncio.Event().wait()

    async def send(self, n: int) -> AdmissionResult:
        assert self.emit is not None
        result: AdmissionResult = await self.emit(
            self.delivery(n, wait_for_store=self.wait_for_store)
        )
        return result


def define_saga(source: Source, *, skip: frozenset[int] = frozenset()) -> list[int]:
    ran: list[int] = []

    class Stored(Saga):
        saga_name = "stored"

        @trigger(source="custom", trigger=source)
        def on_message(self, event: dict[str, Any]) -> dict[str, Any] | None:
            return None if event["n"] in skip else {"n": event["n"]}

        @action("work")
        async def work(self, ctx: SagaContext) -> None:
            ran.append(ctx["n"])

    return ran


class FailingClaims(MemorySagaStore):
    """Its claims of ``key`` fail ``times`` times (``None``: always) with an error that is not
    an outage."""

    def __init__(self, key: str, times: int | None) -> None:
        super().__init__()
        self.key, self.times = key, times
        self.failures = 0

    async def claim_event(self, trigger_id: str, key: str, record: SagaRecord) -> EventClaim:
        if key == self.key and (self.times is None or self.failures < self.times):
            self.failures += 1
            raise RuntimeError("invalid byte sequence for encoding UTF8: 0x00")
        return await super().claim_event(trigger_id, key, record)


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(StoreErrors, "initial", 0.02)
    monkeypatch.setattr(StoreErrors, "maximum", 0.05)


async def test_a_claim_that_fails_a_few_times_is_retried_and_its_saga_runs() -> None:
    source = RecordingSource()
    ran = define_saga(source)
    store = FailingClaims("m-2", times=2)
    async with TriggerEngine(TriggerConfig(shutdown_timeout=1.0), store) as engine:
        await source.ready.wait()
        result = await source.send(2)
        assert result.outcome is AdmissionOutcome.BUSY  # held: neither acked nor nacked
        assert (await source.send(3)).accepted  # the source goes on meanwhile
        await eventually(lambda: source.acked[2] == 1, what="2 acked once its saga ran")
        await eventually(lambda: engine.admission.in_flight == {}, what="settled")
    assert source.nacked == []  # never handed back: Kafka's commits were not held for good
    assert sorted(ran) == [2, 3]
    assert store.failures == 2


@pytest.mark.parametrize("redeliverable", [True, False], ids=["broker", "one-shot"])
async def test_a_claim_that_keeps_failing_is_dead_lettered_with_the_error_and_acked(
    redeliverable: bool,
) -> None:
    source = RecordingSource(redeliverable=redeliverable)
    ran = define_saga(source)
    store = FailingClaims("m-2", times=None)
    async with TriggerEngine(TriggerConfig(shutdown_timeout=1.0), store) as engine:
        await source.ready.wait()
        await source.send(2)
        dead = await eventually(store.list_dead_letters, what="its dead letter")
        await eventually(lambda: source.acked[2] == 1, what="2 acked after its dead letter")
        assert engine.metrics.reasons["invalid"] == 1  # its one reason code: dead-lettered
    assert [(d.reason, d.payload, d.attempts) for d in dead] == [
        ("store_error", {"n": 2}, StoreErrors.attempts)
    ]
    assert "invalid byte sequence" in dead[0].error
    assert store.failures == StoreErrors.attempts  # bounded: no hot loop
    assert source.nacked == [] and ran == []


class FailingCompletions(SQLiteSagaStore):
    """Its ``complete_inbox`` fails once (after the claim made the key ours)."""

    failed = False

    async def complete_inbox(self, trigger_id: str, key: str) -> None:
        if not self.failed:
            self.failed = True
            raise RuntimeError("disk I/O error")
        await super().complete_inbox(trigger_id, key)


async def test_a_webhook_event_that_fails_after_its_claim_does_not_leave_its_key_locked(
    tmp_path: Path,
) -> None:
    # a source that neither redelivers nor waits (the webhook): its claim made the key ours
    # and the pending row keeps the event, then the store failed; answered 503, the key stayed
    # this worker's (its lease renewed by the heartbeat) and nothing settled the event
    source = RecordingSource(redeliverable=False, wait_for_store=False)
    define_saga(source, skip=frozenset({2}))
    store = FailingCompletions(tmp_path / "errors.db")
    saga_id = saga_id_for(TRIGGER_ID, "m-2")
    async with TriggerEngine(TriggerConfig(shutdown_timeout=1.0), store) as engine:
        await source.ready.wait()
        result = await source.send(2)
        # durably accepted (the claim keeps it): 202 in progress, not 503 retry later
        assert (result.outcome, result.saga_id) == (AdmissionOutcome.BUSY, saga_id)

        async def settled() -> bool:  # another worker's claim finds it filtered, done
            lease = utcnow() + timedelta(seconds=30)
            claim = await store.claim_inbox(TRIGGER_ID, "m-2", saga_id, "other", lease)
            return claim.outcome is ClaimOutcome.DUPLICATE

        await eventually(settled, what="the event settled (filtered)")
        assert engine.metrics.reasons["filtered"] == 1
        assert await store.get_saga(saga_id) is None
    assert source.nacked == []


async def test_an_error_while_the_engine_stops_is_nacked() -> None:
    source = RecordingSource()
    define_saga(source)
    store = FailingClaims("m-2", times=None)
    engine = TriggerEngine(TriggerConfig(shutdown_timeout=0.1), store)
    await engine.start()
    try:
        await source.ready.wait()
        await source.send(2)
        await eventually(lambda: store.failures >= 2, what="its claim failed, and again")
        assert source.nacked == []  # held meanwhile
    finally:
        await engine.stop()
    assert source.nacked == [2]  # handed back for redelivery, as cancellation is
    assert source.acked == Counter()
    assert await store.list_dead_letters() == []


async def test_a_busy_key_whose_claim_then_fails_is_held_and_dead_lettered() -> None:
    # another live worker holds the key; the claims made again while it does fail: they were
    # reported and the delivery nacked (on Kafka: its commits held until a rebalance)
    source = RecordingSource()
    define_saga(source)
    store = FailingClaims("m-2", times=0)  # not failing yet
    saga_id = saga_id_for(TRIGGER_ID, "m-2")
    theirs = SagaRecord(
        saga_id=saga_id,
        saga_name="stored",
        status=SagaStatus.PENDING,
        context={},
        trigger_id=TRIGGER_ID,
        owner="other",
        lease_expires_at=utcnow() + timedelta(seconds=60),
    )
    assert (await store.claim_event(TRIGGER_ID, "m-2", theirs)).outcome is ClaimOutcome.CLAIMED
    config = TriggerConfig(lease_seconds=0.4, shutdown_timeout=1.0)
    async with TriggerEngine(config, store):
        await source.ready.wait()
        assert (await source.send(2)).outcome is AdmissionOutcome.BUSY
        store.times = None  # from now on, its claims fail
        dead = await eventually(store.list_dead_letters, what="its dead letter")
        await eventually(lambda: source.acked[2] == 1, what="2 acked after its dead letter")
    assert [d.reason for d in dead] == ["store_error"]
    assert source.nacked == []
    saga = await store.get_saga(saga_id)
    assert saga is not None and saga.owner == "other"  # their key and row: left alone


class ClaimsThenFails(MemorySagaStore):
    """Its claims of ``key`` are made (the key and the pending row this worker's), then fail
    with an error that is not an outage, as a commit whose answer was refused."""

    def __init__(self, key: str) -> None:
        super().__init__()
        self.key = key

    async def claim_event(self, trigger_id: str, key: str, record: SagaRecord) -> EventClaim:
        claim = await super().claim_event(trigger_id, key, record)
        if key == self.key:
            raise RuntimeError("the answer of a claim that was made")
        return claim


async def test_an_admission_held_when_the_engine_stops_gives_its_saga_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # nacked at the stop, its pending row (this worker's) is given back: the worker that
    # claims it next counts no recovery attempt (a stop is no crash)
    monkeypatch.setattr(StoreErrors, "initial", 30.0)  # held until the stop
    monkeypatch.setattr(StoreErrors, "maximum", 30.0)
    source = RecordingSource()
    define_saga(source)
    store = ClaimsThenFails("m-2")
    engine = TriggerEngine(TriggerConfig(worker_id="w", shutdown_timeout=0.1), store)
    await engine.start()
    try:
        await source.ready.wait()
        result = await source.send(2)
        assert result.outcome is AdmissionOutcome.BUSY  # held
        [pending] = await store.list_sagas()
        assert pending.owner == "w"
    finally:
        await engine.stop()
    assert source.nacked == [2]
    saga = await store.get_saga(pending.saga_id)
    assert saga is not None and saga.owner is None  # given back
