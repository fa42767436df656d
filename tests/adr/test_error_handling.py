"""ADR-025 §5 "Error Handling & Resilience": ``InvalidEventError`` and the dead-letter config.

The ADR's two code blocks, as written: the ``on_event`` trigger method (in a saga class of the
test) and ``config = TriggerConfig(...)``. They run together through RabbitMQ, the broker the
first block names: "Event goes to DLQ" is the store's dead letters and, with the block's
``dead_letter_topic="failed-triggers"``, the broker's ``failed-triggers`` exchange (a durable
fanout with a queue of the same name).

What the ADR leaves undefined: ``InvalidEventError`` (``from sagaz import``) and the event's
type. The method takes ``event`` unannotated, so it would receive the decoded JSON message
(DESIGN §2), data without an ``is_valid()`` method: every event would be dead-lettered with
``AttributeError``. sagaz refuses the block as written when the saga class is defined, saying
to annotate the event with a model that defines ``is_valid()``
(:func:`test_the_block_as_written_is_refused_when_its_saga_is_defined`); the other tests run
the block with that one change, ``event: Event`` (docs/concepts.md, "The event a trigger
method gets"). The
messages carry a ``payload`` and whether they are ``valid``.
"""

from __future__ import annotations

import inspect
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import aio_pika
import pytest
from pydantic import BaseModel

from sagaz import InvalidEventError, Saga, SagaStatus, TriggerConfig, action, compensate, trigger
from sagaz.engine.engine import TriggerEngine
from sagaz.exceptions import TriggerDefinitionError
from sagaz.storage.memory import MemorySagaStore
from sagaz.testing import FakeClock, eventually
from tests.adr.support import Recorder, parked, saga_with, sagas_named
from tests.fixtures_rabbitmq import Rabbit

SAGA = "events-saga"


def adr_config() -> TriggerConfig:
    # -- ADR-025 §5 "Dead Letter Queue", as written ----------------------------------------
    # fmt: off
    config = TriggerConfig(
        dead_letter_topic="failed-triggers",
        max_retries=3,
        retry_backoff_seconds=[10, 60, 300]
    )
    # fmt: on
    return config  # noqa: RET504 (the block assigns it)


def define_events_saga() -> None:
    class EventsSaga(Saga):
        saga_name = SAGA

        # -- ADR-025 §5 "Trigger Method Failures", as written ------------------------------
        # fmt: off
        @trigger(source="rabbitmq", queue="events")  # or kafka, redis, etc.
        def on_event(self, event):
            if not event.is_valid():
                raise InvalidEventError()  # Event goes to DLQ, saga doesn't start
            return {"data": event.payload}
        # fmt: on

        @action("handle")
        async def handle(self, ctx: Any) -> None: ...


class Event(BaseModel):
    """The event type the ADR's method needs for ``event.is_valid()`` (the ADR leaves it
    undefined and the parameter unannotated)."""

    payload: dict[str, Any]
    valid: bool

    def is_valid(self) -> bool:
        return self.valid


def define_annotated_events_saga() -> None:
    """The ADR's block with its one adaptation: the event annotated ``Event``."""

    class EventsSaga(Saga):
        saga_name = SAGA

        @trigger(source="rabbitmq", queue="events")  # or kafka, redis, etc.
        def on_event(self, event: Event):  # the ADR: (self, event)
            if not event.is_valid():
                raise InvalidEventError()  # Event goes to DLQ, saga doesn't start
            return {"data": event.payload}

        @action("handle")
        async def handle(self, ctx: Any) -> None: ...


def uses(rabbit: Rabbit, *names: str) -> None:
    """The ADR's queue and exchange names: deleted after the test."""
    rabbit.queues.extend(names)


async def dead_lettered(rabbit: Rabbit) -> list[aio_pika.abc.AbstractIncomingMessage]:
    return await rabbit.take_all("failed-triggers")


def test_the_block_as_written_is_refused_when_its_saga_is_defined() -> None:
    """``event.is_valid()`` on an unannotated event: no RabbitMQ message decodes to something
    with that method, so the class is refused at once, with the fix, instead of every event
    being dead-lettered with ``AttributeError`` at run time."""
    with pytest.raises(TriggerDefinitionError) as refused:
        define_events_saga()
    message = str(refused.value)
    assert "EventsSaga.on_event @trigger(source='rabbitmq'): " in message
    line = (
        inspect.getsource(define_events_saga)
        .splitlines()
        .index("            if not event.is_valid():")
    )
    at = f"{__file__}:{define_events_saga.__code__.co_firstlineno + line}"
    assert f"calls event.is_valid() ({at})" in message
    assert "sagaz.EventData" in message
    assert "Annotate the parameter with a pydantic model" in message
    assert "def on_event(self, event: MyEvent)" in message
    assert "event.get('field')" in message


async def test_an_invalid_event_goes_to_the_dlq_and_starts_no_saga(rabbit_env: Rabbit) -> None:
    rabbit = rabbit_env
    uses(rabbit, "events", "failed-triggers")
    define_annotated_events_saga()
    recorder = Recorder()
    store = MemorySagaStore()
    marker = uuid.uuid4().hex
    async with TriggerEngine(adr_config(), store, listeners=[recorder]) as engine:
        await rabbit.publish(
            "events", [json.dumps({"payload": {"marker": marker}, "valid": False}).encode()]
        )
        await eventually(lambda: recorder.dead, what="the dead letter")
        await engine.dispatcher.wait_idle()

    [record] = await store.list_dead_letters()
    assert record.error.startswith("InvalidEventError"), record.error
    assert record.reason == "invalid"
    assert record.trigger_id == f"{SAGA}.on_event"
    assert await sagas_named(store, SAGA) == []  # the saga did not start
    [message] = await eventually(lambda: dead_lettered(rabbit), what="the broker's DLQ message")
    assert json.loads(message.body) == {"payload": {"marker": marker}, "valid": False}
    assert await rabbit.ready("events") == 0  # acked: not redelivered


async def test_a_valid_event_starts_the_saga_with_its_payload(rabbit_env: Rabbit) -> None:
    rabbit = rabbit_env
    uses(rabbit, "events", "failed-triggers")
    define_annotated_events_saga()
    store = MemorySagaStore()
    marker = uuid.uuid4().hex
    async with TriggerEngine(adr_config(), store):
        await rabbit.publish(
            "events", [json.dumps({"payload": {"marker": marker}, "valid": True}).encode()]
        )
        saga = await saga_with(store, SAGA, lambda c: True)
    assert saga.context == {"data": {"marker": marker}}
    assert await store.list_dead_letters() == []


async def test_a_failing_saga_is_retried_after_10_60_300_seconds_then_dead_lettered(
    rabbit_env: Rabbit,
) -> None:
    """The ADR: "If saga fails during execution, normal compensation runs; failed events can
    be retried". With the config block: three retries, then its dead-letter topic."""
    rabbit = rabbit_env
    queue = rabbit.queue_name("adr-retries")  # the test's own trigger, on its own queue
    uses(rabbit, "failed-triggers")
    clock = FakeClock(datetime(2026, 1, 1, tzinfo=UTC))
    attempts: list[float] = []
    compensated: list[float] = []

    class Retrained(Saga):
        saga_name = "retrained"

        @trigger(source="rabbitmq", queue=queue)
        def on_event(self, event: dict[str, Any]) -> dict[str, Any]:
            return dict(event)

        @action("reserve")
        async def reserve(self, ctx: Any) -> None:
            attempts.append(clock.monotonic())

        @compensate("reserve")
        async def release(self, ctx: Any) -> None:
            compensated.append(clock.monotonic())

        @action("train")
        async def train(self, ctx: Any) -> None:
            raise RuntimeError("GPU quota exceeded")

    store = MemorySagaStore()
    async with TriggerEngine(adr_config(), store, clock=clock) as engine:
        idle = await parked(clock)  # what sleeps on the clock before any retry
        await rabbit.publish(queue, [json.dumps({"model_id": "m-1"}).encode()])
        for retry, backoff in enumerate([10, 60, 300], start=1):
            await eventually(
                lambda r=retry: len(compensated) == r and clock.sleepers == idle + 1,
                what=f"attempt {retry} compensated and its retry waiting",
            )
            failed_at = compensated[-1]  # the backoff counts from here (jitter: 10% at most)
            await clock.advance(failed_at + backoff * 0.89 - clock.monotonic())
            assert len(attempts) == retry, f"retry {retry} ran before its backoff"
            await clock.advance(failed_at + backoff * 1.11 - clock.monotonic())
            await eventually(lambda r=retry: len(attempts) == r + 1, what=f"retry {retry}")
        await eventually(lambda: len(compensated) == 4, what="the last attempt compensated")
        [record] = await eventually(store.list_dead_letters, what="the dead letter")
        await engine.dispatcher.wait_idle()

    waits = [retried - failed for failed, retried in zip(compensated, attempts[1:], strict=False)]
    for waited, backoff in zip(waits, [10, 60, 300], strict=True):
        assert backoff * 0.9 <= waited <= backoff * 1.1, waits
    assert record.attempts == 4
    assert record.reason == "retries_exhausted"
    [saga] = await sagas_named(store, "retrained")
    assert saga.status is SagaStatus.COMPENSATED
    [message] = await eventually(lambda: dead_lettered(rabbit), what="the broker's DLQ message")
    assert json.loads(message.body) == {"model_id": "m-1"}
    assert await rabbit.ready(queue) == 0
