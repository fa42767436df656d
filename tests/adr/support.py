"""Helpers of the ADR suite (fixtures are in ``tests/adr/conftest.py``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sagaz
from sagaz.abc import SagaStore
from sagaz.records import SagaRecord
from sagaz.testing import eventually

__all__ = ["Kafka", "Recorder", "fresh_stream", "parked", "saga_with", "sagas_named"]


@dataclass
class Kafka:
    """The session's broker, as ``SAGAZ_KAFKA_BOOTSTRAP_SERVERS`` names it to the ADR's code."""

    bootstrap: str
    admin: Any

    async def produce(self, topic: str, *payloads: dict[str, Any]) -> None:
        """Send each payload as a JSON message, in order."""
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=5)
        await producer.start()
        try:
            for payload in payloads:
                await producer.send_and_wait(topic, json.dumps(payload).encode())
        finally:
            await producer.stop()


async def sagas_named(store: SagaStore, saga_name: str) -> list[SagaRecord]:
    """Every saga of ``saga_name`` in the store."""
    return await store.list_sagas(saga_name=saga_name, limit=100_000)


async def saga_with(
    store: SagaStore,
    saga_name: str,
    match: Callable[[dict[str, Any]], bool],
    *,
    within: float = 20.0,
    dead_letters_fail: bool = True,
) -> SagaRecord:
    """Wait until a completed saga of ``saga_name`` whose context ``match``es is in the
    store; return it. A dead letter of ``saga_name`` fails the test at once, with its error
    (unless ``dead_letters_fail=False``: the test expects some)."""
    found: list[SagaRecord] = []

    async def there() -> bool:
        dead = [d for d in await store.list_dead_letters() if d.saga_name == saga_name]
        if dead and dead_letters_fail:
            raise AssertionError(f"dead-lettered instead: {[d.error for d in dead]}")
        found[:] = [
            s
            for s in await sagas_named(store, saga_name)
            if s.status is sagaz.SagaStatus.COMPLETED and match(dict(s.context))
        ]
        return bool(found)

    await eventually(there, within=within, what=f"a completed {saga_name} saga")
    return found[0]


@dataclass
class Recorder(sagaz.SagaListener):
    """What the engine reports to listeners: received, filtered (with reasons), dead letters."""

    received: list[tuple[str, str, Any]] = field(default_factory=list)
    filtered: list[tuple[str, Any, str]] = field(default_factory=list)
    dead: list[Any] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)

    async def on_trigger_received(self, saga_name: str, event_source: str, event: Any) -> None:
        self.received.append((saga_name, event_source, event))

    async def on_trigger_filtered(self, saga_name: str, event: Any, reason: Any) -> None:
        self.filtered.append((saga_name, event, str(reason)))

    async def on_dead_letter(self, saga_name: str, record: Any) -> None:
        self.dead.append(record)

    async def on_trigger_error(self, saga_name: str, error: BaseException, event: Any) -> None:
        self.errors.append(error)

    @property
    def reasons(self) -> list[str]:
        """The reason codes of the filtered events, in order."""
        return [reason for _, _, reason in self.filtered]


async def fresh_stream(streams: Any, name: str) -> str:
    """Use the stream ``name`` (an ADR name, not a unique one): deleted now and after the
    test (``tests.fixtures_redis.Streams``)."""
    await streams.client.delete(name)
    streams.names.append(name)
    return name


async def parked(clock: Any, at_least: int = 1) -> int:
    """How many tasks sleep on the fake ``clock`` once the engine has settled: at least
    ``at_least`` of them, and the count unchanged for 0.1 s. Besides the sources, the engine
    has tasks of its own on its clock (the trigger-state watcher...), so a test compares with
    this count rather than with a number of sources."""
    counts: list[int] = []

    async def steady() -> bool:
        counts.append(clock.sleepers)
        recent = counts[-10:]
        return len(recent) == 10 and len(set(recent)) == 1 and recent[0] >= at_least

    await eventually(steady, what=f"at least {at_least} tasks parked on the fake clock")
    return int(counts[-1])
