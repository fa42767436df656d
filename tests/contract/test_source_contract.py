"""One suite for every broker :class:`sagaz.abc.Source`: Kafka, RabbitMQ, Redis Streams, SQS.

The same tests run unchanged against each real broker through a small adapter
(:mod:`tests.contract.source_backends`); the sources are driven directly, without the engine,
by a recording ``emit`` (:mod:`tests.recording_emit`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import pytest

from sagaz.abc import Source
from sagaz.engine.loading import SOURCE_MODULES, load_source_module
from sagaz.exceptions import MissingExtraError
from sagaz.records import DeadLetterRecord
from sagaz.testing import FakeClock, continually, eventually
from sagaz.triggers.options import OPTION_MODELS
from tests.contract.source_backends import DRIVERS, Backend, open_backend
from tests.fixtures_sqs import sqs_source_options
from tests.recording_emit import RecordingEmit, consuming, source_context, stop_intake
from tests.services import backend_params

KINDS = sorted(DRIVERS)
SERVICE_FIXTURES = {
    "kafka": "kafka_bootstrap",
    "rabbitmq": "rabbitmq_url",
    "redis": "redis_url",
    "sqs": "sqs_endpoint",
}


@pytest.fixture(params=backend_params(*KINDS))
def service(request: pytest.FixtureRequest) -> tuple[str, str]:
    """(kind, address) of a running broker; only the parameter's service is required."""
    kind: str = request.param
    return kind, request.getfixturevalue(SERVICE_FIXTURES[kind])


@pytest.fixture
async def backend(service: tuple[str, str]) -> AsyncIterator[Backend]:
    kind, address = service
    async with open_backend(kind, address) as backend:
        yield backend


def bodies(count: int, tag: str) -> list[bytes]:
    return [json.dumps({"i": i, "tag": tag}).encode() for i in range(count)]


def events(count: int, tag: str) -> list[dict[str, Any]]:
    return [{"i": i, "tag": tag} for i in range(count)]


def key(event: dict[str, Any]) -> tuple[str, int]:
    return event["tag"], event["i"]


async def expect_only(backend: Backend, emit: RecordingEmit, *, tag: str, count: int) -> None:
    """Publish ``count`` fresh messages and wait for them: the source must deliver exactly
    those (on an ordered broker, anything still owed would have come before them)."""
    before = len(emit.deliveries)
    await backend.publish(bodies(count, tag))
    await emit.wait_for(before + count, within=20)
    arrived = [backend.event(d) for d in emit.deliveries[before:]]
    assert sorted(arrived, key=key) == events(count, tag)


async def expect_outstanding(backend: Backend, count: int) -> None:
    """Wait until the broker holds ``count`` messages for the source (a broker may hand
    un-acked messages back a moment after the source's connection closed)."""

    async def holds() -> bool:
        return await backend.outstanding() == count

    await eventually(holds, what=f"{count} outstanding messages on {backend.kind}")


async def test_every_message_is_delivered_once_with_an_identity(backend: Backend) -> None:
    source = backend.make_source()
    assert source.kind == backend.kind
    assert source.redeliverable is True
    await backend.publish(bodies(30, "first"))
    emit = RecordingEmit(auto_ack=True)
    async with consuming(source, emit):
        delivered = await emit.wait_for(30, within=20)
        assert sorted((backend.event(d) for d in delivered), key=key) == events(30, "first")
        assert all(d.identity for d in delivered)
        assert len({d.identity for d in delivered}) == 30
        assert {d.meta.source for d in delivered} == {backend.kind}
        assert {d.meta.trigger for d in delivered} == {backend.trigger_id}
        await expect_only(backend, emit, tag="later", count=5)  # and no second copy of any
    await expect_outstanding(backend, 0)
    assert backend.errors == []


async def test_acked_messages_are_gone_after_a_restart(backend: Backend) -> None:
    await backend.publish(bodies(20, "acked"))
    emit = RecordingEmit(auto_ack=True)
    async with consuming(backend.make_source(), emit):
        await emit.wait_for(20, within=20)
    await expect_outstanding(backend, 0)

    again = RecordingEmit(auto_ack=True)
    async with consuming(backend.make_source(), again):
        await expect_only(backend, again, tag="after-restart", count=3)
    await expect_outstanding(backend, 0)


async def test_nacked_and_unacked_messages_come_back_after_a_restart(backend: Backend) -> None:
    await backend.publish(bodies(6, "mixed"))
    emit = RecordingEmit()
    source = backend.make_source()
    async with consuming(source, emit) as task:
        first = await emit.wait_for(6, within=20)
        for delivery in first[:2]:
            await delivery.ack()
        # the engine's shutdown: stop intake, nack the interrupted, leave the rest un-acked
        await stop_intake(task)
        for delivery in first[2:4]:
            await delivery.nack(True)
    owed = {d.identity: backend.event(d) for d in first[2:]}
    await expect_outstanding(backend, 4)

    again = RecordingEmit(auto_ack=True)
    async with consuming(backend.make_source(), again):
        redelivered = await again.wait_for(4, within=20)
        # the same identity comes back with the same message
        assert {d.identity: backend.event(d) for d in redelivered} == owed
        await expect_only(backend, again, tag="after-restart", count=2)
    assert len(again.deliveries) == 6
    await expect_outstanding(backend, 0)


async def test_a_paused_source_leaves_new_messages_on_the_broker_until_resumed(
    backend: Backend,
) -> None:
    source = backend.make_source()
    assert type(source).pause is not Source.pause  # it pauses at its broker, not in emit()
    await backend.publish(bodies(3, "before"))
    emit = RecordingEmit()
    async with consuming(source, emit):
        in_flight = await emit.wait_for(3, within=20)
        await source.pause()
        await source.pause()  # twice is harmless
        for delivery in in_flight:  # pausing settled none of them: they are still ours
            await delivery.ack()
        await backend.publish(bodies(5, "paused"))
        await expect_outstanding(backend, 5)
        await continually(
            lambda: len(emit.deliveries) == 3, during=1.5, what="nothing taken while paused"
        )
        await expect_outstanding(backend, 5)
        await source.resume()
        await emit.wait_for(8, within=20)
        arrived = [backend.event(d) for d in emit.deliveries[3:]]
        assert sorted(arrived, key=key) == events(5, "paused")  # no in-flight one came back
        for delivery in emit.deliveries[3:]:
            await delivery.ack()
        await expect_only(backend, emit, tag="after-resume", count=2)
        for delivery in emit.deliveries[8:]:
            await delivery.ack()
    await expect_outstanding(backend, 0)
    assert backend.errors == []


async def test_a_source_paused_before_it_runs_takes_nothing(backend: Backend) -> None:
    source = backend.make_source()
    await source.pause()  # a trigger paused in the store starts paused
    await backend.publish(bodies(4, "waiting"))
    emit = RecordingEmit(auto_ack=True)
    async with consuming(source, emit):
        await continually(
            lambda: emit.deliveries == [], during=2.0, what="nothing taken while paused"
        )
        await expect_outstanding(backend, 4)
        await source.resume()
        await emit.wait_for(4, within=20)
        assert sorted((backend.event(d) for d in emit.deliveries), key=key) == events(4, "waiting")
    await expect_outstanding(backend, 0)


async def test_publish_dead_letter_lands_on_the_broker(backend: Backend) -> None:
    poison = b'{"i": 13, "tag": "poison"}'
    await backend.publish([poison])
    emit = RecordingEmit()
    source = backend.make_source(dead_letter_topic=backend.dead_letter_topic)
    async with consuming(source, emit):
        (delivery,) = await emit.wait_for(1, within=20)
        record = DeadLetterRecord(
            trigger_id=backend.trigger_id,
            saga_name="contract",
            payload={"i": 13, "tag": "poison"},
            error="ValueError: bad event",
            reason="invalid",
            attempts=1,
            saga_id="saga-13",
        )
        await source.publish_dead_letter(delivery, record)
        await delivery.ack()
    assert await backend.dead_letters() == [poison]
    await expect_outstanding(backend, 0)


async def test_stop_is_idempotent_and_async_with_works(backend: Backend) -> None:
    source = backend.make_source()
    await source.stop()  # never started: harmless
    await backend.publish(bodies(1, "lifecycle"))
    emit = RecordingEmit(auto_ack=True)
    async with source:
        task = asyncio.create_task(source.run(emit))
        (delivery,) = await emit.wait_for(1, within=20)
        assert backend.event(delivery) == {"i": 0, "tag": "lifecycle"}
        await stop_intake(task)
    await source.stop()
    await source.stop()
    await expect_outstanding(backend, 0)


@pytest.mark.parametrize("kind", KINDS)
def test_importing_the_source_module_does_not_import_the_driver(kind: str) -> None:
    driver = DRIVERS[kind]
    code = (
        f"import sys, {driver.module}; "
        f"loaded = [m for m in {driver.imports!r} if m in sys.modules]; "
        "assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.parametrize("kind", KINDS)
def test_a_missing_driver_names_the_extra_to_install(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    driver = DRIVERS[kind]
    for name in driver.imports:
        monkeypatch.setitem(sys.modules, name, None)
    module = load_source_module(kind)
    with pytest.raises(MissingExtraError, match=rf'pip install "sagaz\[{driver.extra}\]"'):
        module.create(OPTION_MODELS[kind].model_validate(driver.offline_options), source_context())


def test_every_redeliverable_built_in_source_is_in_this_suite() -> None:
    # a new broker source must join the contract (add an adapter in source_backends.py)
    redeliverable = {
        kind
        for kind in SOURCE_MODULES
        for value in vars(load_source_module(kind)).values()
        if isinstance(value, type) and issubclass(value, Source) and value.redeliverable
    }
    assert redeliverable == set(DRIVERS)


#: nothing listens on port 1: (trigger options, TriggerConfig fields, first nominal backoff)
UNREACHABLE: dict[str, tuple[dict[str, Any], dict[str, Any], float]] = {
    "kafka": ({"topic": "t"}, {"kafka_bootstrap_servers": "127.0.0.1:1"}, 0.2),
    "rabbitmq": ({"queue": "q"}, {"rabbitmq_url": "amqp://guest:guest@127.0.0.1:1/"}, 0.5),
    "redis": ({"stream": "s"}, {"redis_url": "redis://127.0.0.1:1/0"}, 0.1),
    "sqs": (
        {
            "queue_url": "http://127.0.0.1:1/000000000000/q",
            **sqs_source_options("http://127.0.0.1:1"),
        },
        {},
        0.5,
    ),
}


@pytest.mark.parametrize("kind", KINDS)
async def test_an_unreachable_broker_is_reported_and_retried_on_the_source_clock(
    kind: str,
) -> None:
    """Reconnect attempts wait on ``ctx.clock`` (a :class:`sagaz.backoff.Backoff`): with a
    ``FakeClock`` no attempt happens until the test moves time past the backoff."""
    options, config, nominal = UNREACHABLE[kind]
    errors: list[BaseException] = []
    clock = FakeClock()
    ctx = dataclasses.replace(source_context("saga.on_event", errors, **config), clock=clock)
    source = load_source_module(kind).create(OPTION_MODELS[kind].model_validate(options), ctx)
    emit = RecordingEmit()

    def parked(failures: int) -> bool:
        return len(errors) == failures and clock.sleepers == 1

    async with consuming(source, emit) as task:
        await eventually(partial(parked, 1), within=30, what="the first failure, then a backoff")
        await asyncio.sleep(2 * nominal)  # real time passes: no retry without the clock
        assert parked(1)
        for failures in (1, 2, 3):
            step, waited = nominal / 100, 0.0
            while parked(failures) and waited < 2 * nominal:  # until the source retries
                await clock.advance(step)
                waited += step
            # jittered: between half the nominal delay and the nominal delay
            assert nominal / 2 * 0.97 <= waited <= nominal * 1.02, (failures, waited)
            await eventually(
                partial(parked, failures + 1), within=30, what=f"failure {failures + 1}"
            )
            nominal *= 2
        assert not task.done()  # it keeps trying
    assert emit.deliveries == []
