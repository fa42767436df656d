"""``OutboxRelay`` on ``MemorySagaStore`` with a recording publisher (no broker)."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

import pytest

from sagaz import Saga, SagaContext, action
from sagaz.clock import SystemClock
from sagaz.exceptions import (
    ConfigurationError,
    MissingExtraError,
    SagazError,
    StoreError,
    StoreUnavailableError,
)
from sagaz.outbox import (
    KafkaPublisher,
    OutboxRelay,
    Publisher,
    RabbitMQPublisher,
    RedisStreamPublisher,
)
from sagaz.outbox.messages import dedup_id, encode_payload
from sagaz.records import OutboxMessage
from sagaz.storage.memory import MemorySagaStore
from sagaz.testing import FakeClock, eventually


class TwoSteps(Saga):
    """Emits three messages in each of its two steps."""

    @action("reserve")
    async def reserve(self, ctx: SagaContext) -> None:
        for i in range(3):
            ctx.emit("orders.reserved", {"order": ctx["order"], "n": i}, {"trace": f"r{i}"})

    @action("charge", depends_on=["reserve"])
    async def charge(self, ctx: SagaContext) -> None:
        for i in range(3):
            ctx.emit("orders.charged", {"order": ctx["order"], "n": i})


class RecordingPublisher(Publisher):
    """Records what it publishes; ``fail_on`` lists the publish calls (1-based) that raise;
    ``gate`` (when set) holds every publish until it opens."""

    def __init__(self, fail_on: set[int] | None = None) -> None:
        self.fail_on = fail_on or set()
        self.calls = 0
        self.messages: list[OutboxMessage] = []
        self.gate: asyncio.Event | None = None
        self.waiting = 0
        self.starts = 0
        self.stops = 0

    async def start(self) -> None:
        self.starts += 1
        await super().start()

    async def stop(self) -> None:
        self.stops += 1
        await super().stop()

    async def publish(self, message: OutboxMessage) -> None:
        self.calls += 1
        if self.gate is not None:
            self.waiting += 1
            await self.gate.wait()
        if self.calls in self.fail_on:
            raise ConnectionError(f"broker down (call {self.calls})")
        self.messages.append(message)

    @property
    def ids(self) -> list[int | None]:
        return [m.id for m in self.messages]


class RecordingClock(SystemClock):
    """Records the sleeps the relay asks for; really sleeps only a millisecond."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await asyncio.sleep(0.001)


class FlakyStore(MemorySagaStore):
    """``fetch_outbox`` fails ``failures`` times, then works."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def fetch_outbox(self, limit: int = 100) -> list[OutboxMessage]:
        if self.failures > 0:
            self.failures -= 1
            raise StoreError("database is locked")
        return await super().fetch_outbox(limit)


async def emitted(store: MemorySagaStore, *orders: int) -> list[OutboxMessage]:
    """Run one ``TwoSteps`` saga per order; return the unsent outbox."""
    for order in orders:
        result = await TwoSteps().run({"order": order}, store=store)
        assert result.succeeded, result.error
    return await store.fetch_outbox(1000)


# -- relay_once -------------------------------------------------------------------------------
async def test_relay_once_publishes_in_id_order_and_marks_sent() -> None:
    store, publisher = MemorySagaStore(), RecordingPublisher()
    outbox = await emitted(store, 7)
    assert len(outbox) == 6
    relay = OutboxRelay(store, publisher)

    assert await relay.relay_once() == 6

    assert publisher.ids == [m.id for m in outbox]
    assert publisher.ids == sorted(publisher.ids)  # type: ignore[type-var]
    assert [m.topic for m in publisher.messages] == ["orders.reserved"] * 3 + ["orders.charged"] * 3
    assert [m.payload["n"] for m in publisher.messages] == [0, 1, 2, 0, 1, 2]
    assert publisher.messages[1].headers == {"trace": "r1"}
    assert await store.fetch_outbox() == []
    assert await relay.relay_once() == 0
    assert len(publisher.messages) == 6
    assert relay.published == 6
    await relay.stop()


async def test_relay_once_takes_at_most_batch_size() -> None:
    store, publisher = MemorySagaStore(), RecordingPublisher()
    outbox = await emitted(store, 1)
    relay = OutboxRelay(store, publisher, batch_size=4)
    assert [await relay.relay_once() for _ in range(3)] == [4, 2, 0]
    assert publisher.ids == [m.id for m in outbox]
    await relay.stop()


async def test_a_publish_failure_marks_what_went_before_and_stops_the_batch() -> None:
    store = MemorySagaStore()
    publisher = RecordingPublisher(fail_on={2})
    outbox = await emitted(store, 1)
    reported: list[tuple[BaseException, OutboxMessage | None]] = []
    relay = OutboxRelay(store, publisher, on_error=lambda exc, m: reported.append((exc, m)))

    assert await relay.relay_once() == 1  # nothing raised

    assert publisher.ids == [outbox[0].id]  # nothing after the failed message was published
    assert publisher.calls == 2
    assert [m.id for m in await store.fetch_outbox()] == [m.id for m in outbox[1:]]
    ((error, failed),) = reported
    assert isinstance(error, ConnectionError)
    assert failed is not None and failed.id == outbox[1].id
    assert relay.errors == 1

    assert await relay.relay_once() == 5  # resumes with the message that failed
    assert publisher.ids == [m.id for m in outbox]
    assert await store.fetch_outbox() == []
    await relay.stop()


async def test_store_errors_propagate_from_relay_once() -> None:
    relay = OutboxRelay(FlakyStore(failures=1), RecordingPublisher())
    with pytest.raises(StoreError, match="database is locked"):
        await relay.relay_once()
    assert await relay.relay_once() == 0
    await relay.stop()


async def test_async_on_error_is_awaited_and_a_raising_one_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MemorySagaStore()
    await emitted(store, 1)
    seen: list[int | None] = []

    async def record(exc: BaseException, message: OutboxMessage | None) -> None:
        await asyncio.sleep(0)
        seen.append(message.id if message else None)

    relay = OutboxRelay(store, RecordingPublisher(fail_on={1}), on_error=record)
    assert await relay.relay_once() == 0
    await relay.stop()
    assert seen == [1]

    def broken(exc: BaseException, message: OutboxMessage | None) -> None:
        raise RuntimeError("callback bug")

    relay = OutboxRelay(store, RecordingPublisher(fail_on={1}), on_error=broken)
    with caplog.at_level(logging.WARNING, logger="sagaz.outbox"):
        assert await relay.relay_once() == 0
    await relay.stop()
    assert "on_error callback raised" in caplog.text
    assert "publishing outbox message to 'orders.reserved' failed" in caplog.text


# -- the running relay ------------------------------------------------------------------------
async def test_running_relay_publishes_what_sagas_emit_while_it_runs() -> None:
    store, publisher = MemorySagaStore(), RecordingPublisher()
    clock = RecordingClock()
    async with OutboxRelay(store, publisher, clock=clock) as relay:
        assert relay.running
        await emitted(store, 1)
        await eventually(lambda: len(publisher.messages) == 6, what="the first saga's messages")
        await emitted(store, 2)
        await eventually(lambda: len(publisher.messages) == 12, what="the second saga's messages")
        assert set(clock.sleeps) == {0.5}  # idle polls only: no backoff
    assert not relay.running
    assert publisher.ids == list(range(1, 13))
    assert [m.payload["order"] for m in publisher.messages] == [1] * 6 + [2] * 6
    assert await store.fetch_outbox() == []


async def test_running_relay_goes_on_at_once_after_a_full_batch() -> None:
    store = MemorySagaStore()
    await emitted(store, 1, 2)  # 12 messages
    clock = RecordingClock()
    sleeps_seen: list[int] = []

    class Watching(RecordingPublisher):
        async def publish(self, message: OutboxMessage) -> None:
            sleeps_seen.append(len(clock.sleeps))
            await super().publish(message)

    publisher = Watching()
    async with OutboxRelay(store, publisher, batch_size=5, clock=clock):
        await eventually(lambda: len(publisher.messages) == 12, what="12 messages")
    assert sleeps_seen == [0] * 12  # batches of 5, 5 and 2 without a sleep in between
    assert clock.sleeps[0] == 0.5  # the partial batch: then it polls
    assert publisher.ids == list(range(1, 13))


async def test_running_relay_backs_off_after_failures_and_recovers() -> None:
    store = MemorySagaStore()
    publisher = RecordingPublisher(fail_on={2, 3, 4, 5, 6})  # message 2 fails five times
    await emitted(store, 1)
    clock = RecordingClock()
    reported: list[BaseException] = []
    relay = OutboxRelay(
        store,
        publisher,
        poll_interval=0.1,
        max_backoff=0.5,
        clock=clock,
        on_error=lambda exc, _: reported.append(exc),
    )
    async with relay:
        await eventually(lambda: len(publisher.messages) == 6, what="every message")
        assert relay.running  # the loop survived the failures
    assert publisher.ids == [1, 2, 3, 4, 5, 6]  # order kept across the retries
    assert len(reported) == relay.errors == 5
    # exponential from 2 * poll_interval, capped at max_backoff, each jittered down to half
    for slept, nominal in zip(clock.sleeps[:5], [0.2, 0.4, 0.5, 0.5, 0.5], strict=True):
        assert nominal / 2 <= slept <= nominal
    assert clock.sleeps[5] == 0.1  # back to idle polling
    assert relay.failures == 0


async def test_running_relay_survives_store_errors() -> None:
    store = FlakyStore(failures=0)
    await emitted(store, 1)
    store.failures = 3
    clock = RecordingClock()
    reported: list[tuple[BaseException, OutboxMessage | None]] = []
    relay = OutboxRelay(
        store, RecordingPublisher(), clock=clock, on_error=lambda e, m: reported.append((e, m))
    )
    async with relay:
        await eventually(lambda: relay.published == 6, what="every message")
    assert [(type(e), m) for e, m in reported] == [(StoreError, None)] * 3
    for slept, nominal in zip(clock.sleeps[:3], [1.0, 2.0, 4.0], strict=True):
        assert nominal / 2 <= slept <= nominal  # backing off, jittered


async def test_stop_marks_what_the_broker_took_before_it() -> None:
    store, publisher = MemorySagaStore(), RecordingPublisher()
    outbox = await emitted(store, 1)
    relay = OutboxRelay(store, publisher, clock=RecordingClock())
    await relay.start()
    await eventually(lambda: len(publisher.messages) == 6)
    publisher.gate = asyncio.Event()  # before the next messages exist: none slips through
    await emitted(store, 2)
    await eventually(lambda: publisher.waiting == 1, what="a publish under way")
    await relay.stop()  # cancels the publish of message 7: it stays unsent
    assert not relay.running
    assert publisher.ids == [m.id for m in outbox]
    assert [m.id for m in await store.fetch_outbox()] == list(range(7, 13))


async def test_stop_interrupting_a_batch_keeps_the_marks_of_its_published_messages() -> None:
    store = MemorySagaStore()
    await emitted(store, 1)

    class SlowSecond(RecordingPublisher):
        async def publish(self, message: OutboxMessage) -> None:
            if message.id == 2:
                await asyncio.Event().wait()  # hangs until cancelled
            await super().publish(message)

    publisher = SlowSecond()
    relay = OutboxRelay(store, publisher, clock=RecordingClock())
    await relay.start()
    await eventually(lambda: len(publisher.messages) == 1)
    await relay.stop()
    assert [m.id for m in await store.fetch_outbox()] == [2, 3, 4, 5, 6]


async def test_stop_while_the_batch_is_being_marked_keeps_its_marks() -> None:
    """Every message of the batch is on the broker and the store is marking them when the
    relay is stopped (a durable store's mark waits for its group commit): they stay marked,
    not published again by the next relay."""
    marking = asyncio.Event()

    class SlowMarks(MemorySagaStore):
        async def mark_outbox_sent(self, ids: Sequence[int]) -> None:
            if not marking.is_set():
                marking.set()
                await asyncio.Event().wait()  # the first mark hangs until cancelled
            await super().mark_outbox_sent(ids)

    store = SlowMarks()
    await emitted(store, 1)
    publisher = RecordingPublisher()
    relay = OutboxRelay(store, publisher, clock=RecordingClock())
    await relay.start()
    await eventually(marking.is_set, what="the batch being marked")
    await relay.stop()
    assert publisher.ids == [1, 2, 3, 4, 5, 6]
    assert await store.fetch_outbox() == []


async def test_a_cancelled_error_raised_by_the_driver_is_a_publish_failure() -> None:
    store = MemorySagaStore()
    await emitted(store, 1)
    raised = False

    class ChannelClosed(RecordingPublisher):
        async def publish(self, message: OutboxMessage) -> None:
            nonlocal raised
            if message.id == 3 and not raised:
                raised = True
                raise asyncio.CancelledError  # not a cancellation of the relay
            await super().publish(message)

    publisher = ChannelClosed()
    relay = OutboxRelay(store, publisher, clock=RecordingClock())
    async with relay:
        await eventually(lambda: len(publisher.messages) == 6, what="every message")
        assert relay.running
    assert publisher.ids == [1, 2, 3, 4, 5, 6]
    assert relay.errors == 1


async def test_stop_is_not_held_up_by_a_store_that_fails_to_mark() -> None:
    class NoMarks(MemorySagaStore):
        async def mark_outbox_sent(self, ids: Sequence[int]) -> None:
            raise StoreError("connection lost")

    store = NoMarks()
    await emitted(store, 1)

    class OpenForOne(RecordingPublisher):
        async def publish(self, message: OutboxMessage) -> None:
            if message.id == 2:
                await asyncio.Event().wait()  # hangs until cancelled
            await super().publish(message)

    publisher = OpenForOne()
    relay = OutboxRelay(store, publisher, clock=RecordingClock())
    await relay.start()
    await eventually(lambda: len(publisher.messages) == 1)
    await asyncio.wait_for(relay.stop(), 5)
    assert not relay.running
    assert len(await store.fetch_outbox()) == 6  # not marked: published again later


# -- one active relay per store (the lease) ---------------------------------------------------
async def test_of_two_relays_on_one_store_only_the_lease_holder_publishes() -> None:
    store = MemorySagaStore()
    first, second = RecordingPublisher(), RecordingPublisher()
    async with (
        OutboxRelay(store, first, clock=RecordingClock(), holder="a") as a,
        OutboxRelay(store, second, clock=RecordingClock(), holder="b") as b,
    ):
        await emitted(store, 1, 2, 3)
        await eventually(lambda: a.published + b.published == 18, what="every message")
        assert [a.active, b.active].count(True) == 1
    publishers = sorted([first, second], key=lambda p: len(p.messages))
    assert len(publishers[0].messages) == 0  # the standby published nothing
    assert publishers[1].ids == list(range(1, 19))


async def test_a_standby_takes_over_from_a_dead_holder_from_the_oldest_unsent_message() -> None:
    store = MemorySagaStore()
    outbox = await emitted(store, 1, 2)
    hung = asyncio.Event()

    class HangsAtTheFourth(RecordingPublisher):
        async def publish(self, message: OutboxMessage) -> None:
            if message.id == 4:
                hung.set()
                await asyncio.Event().wait()  # until the relay dies
            await super().publish(message)

    holder, standby = HangsAtTheFourth(), RecordingPublisher()
    a = OutboxRelay(store, holder, clock=RecordingClock(), lease_seconds=0.3, holder="a")
    b = OutboxRelay(store, standby, clock=RecordingClock(), lease_seconds=0.3, holder="b")
    await a.start()
    await hung.wait()  # a published three, none marked sent yet...
    await b.start()
    assert not b.active
    assert a._task is not None
    a._task.cancel()  # ...and dies in the fourth: its lease is left to expire

    async def all_sent() -> bool:
        return await store.fetch_outbox() == []

    await eventually(all_sent, what="b publishing the rest")
    assert b.active
    # a, cancelled (not killed), marked the three the broker took; b went on from the oldest
    # unsent message, so every saga's messages stay in order across the handover (the chaos
    # suite SIGKILLs a relay: then the unmarked ones come again, at least once)
    assert holder.ids == [1, 2, 3]
    assert standby.ids == [m.id for m in outbox][3:]
    await b.stop()
    await a.stop()


async def test_a_stopping_holder_hands_the_lease_over_at_once() -> None:
    store = MemorySagaStore()
    first, second = RecordingPublisher(), RecordingPublisher()
    a = OutboxRelay(store, first, clock=RecordingClock(), lease_seconds=60, holder="a")
    await a.start()
    await eventually(lambda: a.active, what="a holding the lease")
    async with OutboxRelay(store, second, clock=RecordingClock(), lease_seconds=60) as b:
        await a.stop()  # released: no waiting for its 60 seconds
        await emitted(store, 1)
        await eventually(lambda: len(second.messages) == 6, what="b publishing", within=5)
        assert b.active
    assert first.messages == []


async def test_the_holder_renews_its_lease_every_third_of_it_on_its_clock() -> None:
    class CountingStore(MemorySagaStore):
        renewals = 0

        async def renew_lease(self, name: str, holder: str, ttl: float) -> bool:
            self.renewals += 1
            return await super().renew_lease(name, holder, ttl)

    store, clock = CountingStore(), FakeClock()
    async with OutboxRelay(
        store, RecordingPublisher(), clock=clock, poll_interval=0.5, lease_seconds=9
    ) as relay:
        await clock.settle()
        assert relay.active and store.renewals == 0
        await clock.advance(2.9)
        assert store.renewals == 0
        await clock.advance(0.2)  # 3 s: a third of the lease
        assert store.renewals == 1
        await clock.advance(3)
        assert store.renewals == 2


async def test_a_holder_that_cannot_renew_stops_publishing_when_its_lease_runs_out() -> None:
    class Unreachable(MemorySagaStore):
        down = False

        async def renew_lease(self, name: str, holder: str, ttl: float) -> bool:
            if self.down:
                raise StoreUnavailableError("store down")
            return await super().renew_lease(name, holder, ttl)

        async def acquire_lease(self, name: str, holder: str, ttl: float) -> bool:
            if self.down:
                raise StoreUnavailableError("store down")
            return await super().acquire_lease(name, holder, ttl)

    store, clock, publisher = Unreachable(), FakeClock(), RecordingPublisher()
    await emitted(store, 1)
    relay = OutboxRelay(store, publisher, clock=clock, batch_size=1, lease_seconds=9)
    assert await relay.relay_once() == 1
    store.down = True
    await clock.advance(8.9)  # renewal due but failing; still within its lease
    with pytest.raises(StoreUnavailableError):
        await relay.relay_once()
    assert relay.active
    await clock.advance(0.2)  # the lease ran out, by its own reckoning
    assert not relay.active
    with pytest.raises(StoreUnavailableError):
        await relay.relay_once()
    assert len(publisher.messages) == 1
    await relay.stop()


# -- publisher ownership ------------------------------------------------------------------------
async def test_the_relay_stops_the_publisher_it_started() -> None:
    publisher = RecordingPublisher()
    async with OutboxRelay(MemorySagaStore(), publisher, clock=RecordingClock()):
        assert publisher.started
    assert (publisher.starts, publisher.stops, publisher.started) == (1, 1, False)


async def test_the_relay_leaves_a_publisher_started_by_the_caller_alone() -> None:
    publisher = RecordingPublisher()
    async with publisher:
        async with OutboxRelay(MemorySagaStore(), publisher, clock=RecordingClock()):
            pass
        assert publisher.started
        relay = OutboxRelay(MemorySagaStore(), publisher)
        assert await relay.relay_once() == 0
        await relay.stop()
        assert publisher.started
    assert (publisher.starts, publisher.stops) == (1, 1)


async def test_relay_once_starts_the_publisher_and_stop_stops_it() -> None:
    publisher = RecordingPublisher()
    relay = OutboxRelay(MemorySagaStore(), publisher)
    assert await relay.relay_once() == 0
    assert publisher.started
    await relay.stop()
    assert not publisher.started


async def test_start_and_stop_are_idempotent() -> None:
    publisher = RecordingPublisher()
    relay = OutboxRelay(MemorySagaStore(), publisher, clock=RecordingClock())
    await relay.start()
    await relay.start()
    await relay.stop()
    await relay.stop()
    assert (publisher.starts, publisher.stops, relay.running) == (1, 1, False)


# -- configuration and drivers ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"batch_size": 0}, "batch_size=0 must be a positive integer"),
        ({"poll_interval": 0}, "poll_interval=0 must be > 0"),
        ({"poll_interval": 2.0, "max_backoff": 1.0}, "max_backoff=1.0 must be >= poll_interval"),
        ({"lease_seconds": 0}, "lease_seconds=0 must be > 0"),
    ],
)
def test_bad_relay_options_say_what_to_fix(options: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        OutboxRelay(MemorySagaStore(), RecordingPublisher(), **options)


def test_bad_publisher_options_say_what_to_fix() -> None:
    with pytest.raises(ConfigurationError, match="acks=2 must be 0, 1 or 'all'"):
        KafkaPublisher("localhost:9092", acks=2)
    with pytest.raises(ConfigurationError, match="must be an amqp:// or amqps:// URL"):
        RabbitMQPublisher("http://localhost")
    with pytest.raises(ConfigurationError, match="maxlen=0 must be None or a positive integer"):
        RedisStreamPublisher("redis://localhost", maxlen=0)


async def test_publishing_before_start_says_how_to_start() -> None:
    message = OutboxMessage(saga_id="s", topic="t", payload={}, id=1)
    for publisher in (
        KafkaPublisher("localhost:9092"),
        RabbitMQPublisher("amqp://localhost/"),
        RedisStreamPublisher("redis://localhost"),
    ):
        with pytest.raises(SagazError, match=r"is not started: use `async with publisher:`"):
            await publisher.publish(message)


@pytest.mark.parametrize(
    ("make", "modules", "extra"),
    [
        (lambda: KafkaPublisher("localhost:9092"), ["aiokafka"], "kafka"),
        (lambda: RabbitMQPublisher("amqp://localhost/"), ["aio_pika"], "rabbitmq"),
        (lambda: RedisStreamPublisher("redis://localhost"), ["redis", "redis.asyncio"], "redis"),
    ],
)
async def test_a_missing_driver_names_the_extra_to_install(
    make: Any, modules: list[str], extra: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)
    relay = OutboxRelay(MemorySagaStore(), make())
    with pytest.raises(MissingExtraError, match=rf'pip install "sagaz\[{extra}\]"'):
        await relay.start()
    assert not relay.running
    assert not relay.publisher.started


def test_importing_the_outbox_does_not_import_a_driver() -> None:
    code = (
        "import sys, sagaz.outbox; "
        "assert not {'aiokafka', 'aio_pika', 'redis'} & set(sys.modules), sys.modules.keys()"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_bodies_are_json_except_bytes() -> None:
    assert json.loads(encode_payload({"id": 1, "name": "é"})) == {"id": 1, "name": "é"}
    assert encode_payload(b"\x00raw") == b"\x00raw"
    assert json.loads(encode_payload({"blob": b"\x01"})) == {"blob": {"$sagaz:bytes": "AQ=="}}
    assert dedup_id(OutboxMessage(saga_id="abc", topic="t", payload=None, id=7)) == "abc:7"
