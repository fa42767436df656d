"""A store error that is not an outage while an ended saga's event is settled (its inbox row
completed, its dead letter stored) has a defined, bounded outcome
(:mod:`sagaz.engine.settle_errors`): the delivery is held, the settling tried again with a
backoff, and after the last attempt the event is dead-lettered (``store_error``, unless its
own dead letter is stored) and acked once; a dead letter the store never takes keeps it held,
never acked, at a capped backoff, and nacked when the engine stops.

The old answer was the dispatcher's nack: a broker delivered the event again at once, for
as long as the error lasted (each redelivery found the saga ended and failed to settle it
again, a failed saga writing one more dead letter each time), and a Kafka partition's commits
stopped there. (On RabbitMQ: ``tests/integration/test_run_store_errors.py``.)
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta
from typing import Any, ClassVar

import pytest

from sagaz import Fire, Saga, SagaContext, SagaStatus, Skip, Trigger, TriggerConfig, action, trigger
from sagaz.abc import Emit
from sagaz.clock import utcnow
from sagaz.engine.engine import TriggerEngine
from sagaz.engine.identity import saga_id_for
from sagaz.engine.settle_errors import SettleErrors
from sagaz.exceptions import UnstorableValueError
from sagaz.records import DeadLetterRecord, SagaRecord
from sagaz.saga.result import SagaResult
from sagaz.storage.memory import MemorySagaStore
from sagaz.testing import FakeClock, eventually
from tests.engine_support import NumberedSource, RecordingListener

SAGA = "settled"
TRIGGER_ID = f"{SAGA}.on_message"
KEY = "m-2"  # message 2's inbox key
CONFIG = TriggerConfig(worker_id="w", shutdown_timeout=1.0)


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(SettleErrors, "initial", 0.02)
    monkeypatch.setattr(SettleErrors, "maximum", 0.05)


class Broker(NumberedSource):
    """A redeliverable source whose messages the test emits one by one."""

    kind: ClassVar[str] = "settling"

    def __init__(self) -> None:
        super().__init__()
        self.emit: Emit | None = None
        self.ready = asyncio.Event()

    async def run(self, emit: Emit) -> None:
        self.emit = emit
        self.ready.set()
        await asyncio.Event().wait()

    async def send(self, n: int) -> None:
        await self.ready.wait()
        assert self.emit is not None
        await self.emit(self.delivery(n))


def define_saga(source: Broker, *, fails: bool = False) -> list[int]:
    """A one-step saga of ``source``'s messages (whose step fails when ``fails``: it is
    compensated, never retried, and dead-lettered ``retries_exhausted``)."""
    ran: list[int] = []

    class Settled(Saga):
        saga_name = SAGA

        @trigger(source="custom", trigger=source, max_retries=0)
        def on_message(self, event: dict[str, Any]) -> dict[str, Any]:
            return {"n": event["n"]}

        @action("work")
        async def work(self, ctx: SagaContext) -> None:
            ran.append(ctx["n"])
            if fails:
                raise RuntimeError("the step fails")

    return ran


class RefusingStore(MemorySagaStore):
    """Its ``complete_inbox`` of :data:`KEY` fails ``times`` times (``None``: always) with
    ``error``, an error that is not an outage; it counts those calls, and ``release_inbox``."""

    def __init__(self, times: int | None, error: Exception | None = None) -> None:
        super().__init__()
        self.times = times
        self.error = error or RuntimeError("could not serialize access")
        self.completions = 0
        self.released: list[str] = []

    async def complete_inbox(self, trigger_id: str, key: str) -> None:
        if key == KEY:
            self.completions += 1
            if self.times is None or self.completions <= self.times:
                raise self.error
        await super().complete_inbox(trigger_id, key)

    async def release_inbox(self, trigger_id: str, key: str) -> None:
        self.released.append(key)
        await super().release_inbox(trigger_id, key)


async def seed_completed_saga(store: MemorySagaStore) -> str:
    """Message 2's saga as a worker that stopped before settling its event left it: completed,
    its inbox row still pending under a lapsed lease. Its next delivery finds it ended."""
    saga_id = saga_id_for(TRIGGER_ID, KEY)
    lapsed = utcnow() - timedelta(seconds=1)
    await store.claim_inbox(TRIGGER_ID, KEY, saga_id, "gone", lapsed)
    await store.save_saga(
        SagaRecord(
            saga_id=saga_id,
            saga_name=SAGA,
            status=SagaStatus.COMPLETED,
            context={"n": 2},
            trigger_id=TRIGGER_ID,
        )
    )
    return saga_id


async def test_an_ended_sagas_inbox_row_that_fails_a_few_times_is_settled_once() -> None:
    source, store, listener = Broker(), RefusingStore(times=2), RecordingListener()
    ran = define_saga(source)
    saga_id = await seed_completed_saga(store)
    async with TriggerEngine(CONFIG, store, listeners=[listener]) as engine:
        await source.send(2)
        outcome = await engine.wait_for(saga_id, timeout=10)
        assert isinstance(outcome, SagaResult) and outcome.status is SagaStatus.COMPLETED
        await eventually(lambda: source.acked[2] == 1, what="2 acked once it is settled")
    assert source.nacked == []  # held meanwhile: never redelivered (old code: nacked)
    assert source.acked == Counter({2: 1})
    assert store.completions == 3  # two refused, then done
    assert [str(e) for e in listener.errors] == ["could not serialize access"] * 2
    assert await store.list_dead_letters() == [] and ran == []
    assert store.released == []


async def test_a_cancelled_sagas_inbox_row_that_fails_a_few_times_is_settled_once() -> None:
    source, store = Broker(), RefusingStore(times=2)
    ran = define_saga(source)
    saga_id = saga_id_for(TRIGGER_ID, KEY)
    async with TriggerEngine(CONFIG, store) as engine:
        assert engine.state is not None
        engine.state.cancellations.cancel(saga_id, "ann@ops")  # it starts cancelled
        await source.send(2)
        outcome = await engine.wait_for(saga_id, timeout=10)
        assert isinstance(outcome, SagaResult) and outcome.status is SagaStatus.CANCELLED
        await eventually(lambda: source.acked[2] == 1, what="2 acked once it is settled")
    assert source.nacked == [] and source.acked == Counter({2: 1})
    assert store.completions == 3
    assert await store.list_dead_letters() == [] and ran == []


async def test_a_dead_lettered_sagas_inbox_row_that_fails_a_few_times_is_settled_once() -> None:
    source, store = Broker(), RefusingStore(times=3)
    ran = define_saga(source, fails=True)
    async with TriggerEngine(CONFIG, store) as engine:
        await source.send(2)
        await eventually(lambda: source.acked[2] == 1, what="2 acked once it is settled")
        assert engine.metrics.dead_lettered[TRIGGER_ID] == 1
    assert source.nacked == [] and ran == [2]  # run once: never redelivered
    assert store.completions == 4
    [dead] = await store.list_dead_letters()  # its own, written once
    assert (dead.reason, dead.attempts) == ("retries_exhausted", 1)


@pytest.mark.parametrize("fails", [False, True], ids=["completed", "dead-lettered"])
async def test_an_inbox_row_the_store_keeps_refusing_is_given_up_after_the_last_attempt(
    fails: bool,
) -> None:
    source, store, listener = Broker(), RefusingStore(times=None), RecordingListener()
    ran = define_saga(source, fails=fails)
    if not fails:
        await seed_completed_saga(store)
    async with TriggerEngine(CONFIG, store, listeners=[listener]) as engine:
        await source.send(2)
        await eventually(lambda: source.acked[2] == 1, what="2 acked once given up")
        assert engine.metrics.source_errors[TRIGGER_ID] == SettleErrors.attempts
    assert source.nacked == [] and source.acked == Counter({2: 1})
    assert store.completions == SettleErrors.attempts  # bounded: no hot loop
    assert len(listener.errors) == SettleErrors.attempts  # each attempt reported
    dead = await store.list_dead_letters()
    if fails:  # its own dead letter is its durable record: not a second one
        assert [(d.reason, d.attempts) for d in dead] == [("retries_exhausted", 1)]
        assert ran == [2]
    else:  # a completed saga's event gets one, with the error that kept it from settling
        saga_id = saga_id_for(TRIGGER_ID, KEY)
        assert [(d.reason, d.saga_id, d.attempts) for d in dead] == [
            ("store_error", saga_id, SettleErrors.attempts)
        ]
        assert dead[0].error == "RuntimeError: could not serialize access"
        assert dead[0].traceback is not None and "complete_inbox" in dead[0].traceback
        assert dead[0].payload == {"n": 2}
    assert store.released == [KEY]  # its key is not left leased by this worker's heartbeat


async def test_an_unstorable_value_gives_the_settling_up_at_once() -> None:
    source = Broker()
    store = RefusingStore(times=None, error=UnstorableValueError("cannot store value['x']"))
    define_saga(source)
    await seed_completed_saga(store)
    async with TriggerEngine(CONFIG, store):
        await source.send(2)
        await eventually(lambda: source.acked[2] == 1, what="2 acked once given up")
    assert store.completions == 1  # fails every attempt alike: not tried again
    [dead] = await store.list_dead_letters()
    assert (dead.reason, dead.attempts) == ("store_error", 1)
    assert source.nacked == []


class OneJob(Trigger):
    """Fires one context, then nothing."""

    name = "one_job"
    poll_interval = 0.01
    allow_concurrent = False

    def __init__(self) -> None:
        self.fired = False

    async def poll(self) -> Fire | Any:
        if self.fired:
            return Skip
        self.fired = True
        return Fire({"job": 1})


class RefusingExecutions(MemorySagaStore):
    """Its ``complete_trigger_execution`` fails twice (an error that is not an outage)."""

    calls = 0

    async def complete_trigger_execution(self, trigger_name: str, saga_id: str) -> None:
        self.calls += 1
        if self.calls <= 2:
            raise RuntimeError("deadlock detected")
        await super().complete_trigger_execution(trigger_name, saga_id)


async def test_a_poll_triggers_execution_row_that_fails_a_few_times_is_closed() -> None:
    # old code: nacked (nothing to redeliver), its execution row left open for good: the
    # overlap check (allow_concurrent=False) skipped that context from then on
    job, ran = OneJob(), list[int]()

    class Polled(Saga):
        @trigger(source="custom", trigger=job)
        def on_fire(self, ctx: dict[str, Any]) -> dict[str, Any]:
            return dict(ctx)

        @action("work")
        async def work(self, ctx: SagaContext) -> None:
            ran.append(ctx["job"])

    store = RefusingExecutions()
    config = TriggerConfig(trigger_base_poll_interval=0.01, shutdown_timeout=1.0)
    async with TriggerEngine(config, store):

        async def closed() -> bool:
            rows = await store.list_trigger_executions("polled.on_fire")
            return len(rows) == 1 and rows[0].completed_at is not None

        await eventually(closed, what="its execution row closed")
    assert store.calls == 3 and ran == [1]
    assert await store.list_dead_letters() == []


class RefusesDeadLetters(MemorySagaStore):
    """Every dead letter fails (an error that is not an outage); ``attempts`` counts them."""

    attempts = 0

    async def add_dead_letter(self, record: DeadLetterRecord) -> int:
        self.attempts += 1
        raise RuntimeError("value too long for type character varying(255)")


async def test_a_dead_letter_the_store_never_takes_keeps_the_event_held_until_the_engine_stops(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(SettleErrors, "initial", 0.5)  # the engine's own backoff
    monkeypatch.setattr(SettleErrors, "maximum", 8.0)
    source, store, listener = Broker(), RefusesDeadLetters(), RecordingListener()
    clock = FakeClock()
    ran = define_saga(source, fails=True)
    engine = TriggerEngine(CONFIG, store, listeners=[listener], clock=clock)
    await engine.start()
    try:
        await source.send(2)
        await eventually(lambda: store.attempts == 1, what="its dead letter refused")
        # two minutes: 5 attempts (0.5 s doubling to 8 s between them), then its store_error
        # dead letter every 8 s (capped): about 19 writes, not a hot loop
        for _ in range(120):
            await clock.advance(1)
        assert 12 <= store.attempts <= 22
        assert len(listener.errors) == store.attempts  # each one reported
        assert engine.metrics.source_errors[TRIGGER_ID] == store.attempts  # and counted
        assert source.acked == Counter() and source.nacked == []  # held: never acked
    finally:
        await engine.stop()
    assert source.nacked == [2]  # handed back when the engine stops
    assert source.acked == Counter()
    assert ran == [2]  # run once
