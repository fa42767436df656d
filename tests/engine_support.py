"""Shared pieces of the engine suites (``tests/unit/test_pipeline.py``,
``tests/integration/test_*_engine.py``...)."""

from __future__ import annotations

import asyncio
import functools
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ClassVar

from sagaz import SagaContext, SagaListener, SagaStatus
from sagaz.abc import SagaStore, Source
from sagaz.events import Delivery, EventMeta
from sagaz.exceptions import StoreUnavailableError
from sagaz.records import EventClaim, SagaRecord
from sagaz.storage.memory import MemorySagaStore

__all__ = [
    "HoldCompletion",
    "NumberedSource",
    "OutageStore",
    "RecordingListener",
    "RefusesOneEvent",
    "complete_a_burst",
    "completed_per_message",
    "define_burst_saga",
    "once_each",
]


class NumberedSource(Source):
    """A redeliverable source of numbered messages (``{"n": n}``, identity ``m-n``) that
    records what it was asked to ack (``acked``: how often each) and nack (``nacked``);
    subclasses decide when ``run`` emits them."""

    kind: ClassVar[str] = "numbered"
    redeliverable: ClassVar[bool] = True

    def __init__(self) -> None:
        self.acked: Counter[int] = Counter()
        self.nacked: list[int] = []

    def delivery(self, n: int, *, wait_for_store: bool = True) -> Delivery:
        """Message ``n``, its ack and nack recorded here."""
        return Delivery(
            payload={"n": n},
            decoded=True,
            identity=f"m-{n}",
            meta=EventMeta(source=self.kind),
            ack=functools.partial(self._ack, n),
            nack=functools.partial(self._nack, n),
            wait_for_store=wait_for_store,
        )

    async def _ack(self, n: int) -> None:
        self.acked[n] += 1

    async def _nack(self, n: int, requeue: bool) -> None:
        self.nacked.append(n)


class HoldCompletion(SagaListener):
    """Holds ``on_saga_complete`` of some sagas: they are completed in the store but not yet
    acknowledged — the window a crash between the store write and the ack leaves open."""

    def __init__(self, gate: asyncio.Event, hold: set[int]) -> None:
        self.gate = gate
        self.hold = hold
        self.held: set[int] = set()

    async def on_saga_complete(self, saga_name: str, saga_id: str, ctx: SagaContext) -> None:
        if ctx["n"] in self.hold:
            self.held.add(ctx["n"])
            await self.gate.wait()


class RecordingListener(SagaListener):
    """Records what the engine reports: ``on_trigger_filtered`` (event, reason),
    ``on_dead_letter`` and ``on_trigger_error``."""

    def __init__(self) -> None:
        self.filtered: list[tuple[Any, str]] = []
        self.dead: list[Any] = []
        self.errors: list[BaseException] = []

    @property
    def reasons(self) -> list[str]:
        """The reason codes of the filtered events, in order."""
        return [reason for _, reason in self.filtered]

    async def on_trigger_filtered(self, saga_name: str, event: Any, reason: str) -> None:
        self.filtered.append((event, reason))

    async def on_dead_letter(self, saga_name: str, record: Any) -> None:
        self.dead.append(record)

    async def on_trigger_error(self, saga_name: str, error: BaseException, event: Any) -> None:
        self.errors.append(error)


async def completed_per_message(store: SagaStore, saga_name: str) -> Counter[int]:
    """How many completed saga rows of ``saga_name`` each message number ``ctx["n"]`` has."""
    rows = await store.list_sagas(status=SagaStatus.COMPLETED, saga_name=saga_name, limit=100_000)
    return Counter(row.context["n"] for row in rows)


def once_each(numbers: range) -> Counter[int]:
    """The expected count: every number exactly once."""
    return Counter(numbers)


class OutageStore(MemorySagaStore):
    """A memory store that can be taken away: while ``down``, every operation raises
    ``StoreUnavailableError``, as a lost PostgreSQL or Redis would."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.refused = 0  # operations refused while down


class RefusesOneEvent(MemorySagaStore):
    """Every claim of the event whose inbox key is ``key`` fails, alone or in its batch, with
    an error that is not an outage (a value the store refuses); ``failures`` counts them."""

    def __init__(self, key: str) -> None:
        super().__init__()
        self.key = key
        self.failures = 0

    def _refuse(self, key: str) -> None:
        if key == self.key:
            self.failures += 1
            raise RuntimeError('invalid input syntax for type json: "\\u0000"')

    async def claim_event(self, trigger_id: str, key: str, record: SagaRecord) -> EventClaim:
        self._refuse(key)
        return await super().claim_event(trigger_id, key, record)

    async def claim_events(
        self, trigger_id: str, claims: Sequence[tuple[str, SagaRecord]]
    ) -> list[EventClaim]:
        for key, _ in claims:
            self._refuse(key)
        return await super().claim_events(trigger_id, claims)


def _refusing(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(method)
    async def operation(self: OutageStore, *args: Any, **kwargs: Any) -> Any:
        if self.down:
            self.refused += 1
            raise StoreUnavailableError("the test store is down")
        return await method(self, *args, **kwargs)

    return operation


for _name in SagaStore.__abstractmethods__ | {"save_checkpoint", "claim_event"}:
    setattr(OutageStore, _name, _refusing(getattr(MemorySagaStore, _name)))


def define_burst_saga(name: str) -> None:
    """Defines (registers) a one-step no-op saga started by events on the memory channel
    ``burst``, one saga per event ``{"id": n}``: what the store-cost tests count."""
    from sagaz import Saga, action, trigger

    class Burst(Saga):
        """A one-step saga started by events on the memory channel ``burst``."""

        saga_name = name

        @trigger(source="memory", channel="burst", idempotency_key=lambda e: e["id"])
        def on_event(self, event: dict[str, Any]) -> dict[str, Any]:
            return dict(event)

        @action("one")
        async def one(self, ctx: SagaContext) -> None:
            return None


async def complete_a_burst(store: SagaStore, events: int) -> None:
    """Fires ``events`` events on channel ``burst`` at once (see :func:`define_burst_saga`)
    into an engine on ``store`` and waits until every saga completed."""
    from sagaz import TriggerConfig
    from sagaz.engine.engine import TriggerEngine

    config = TriggerConfig(queue_size=events, max_concurrent_sagas=100)
    async with TriggerEngine(config, store) as engine:
        saga_ids = await asyncio.gather(*(engine.fire("burst", {"id": i}) for i in range(events)))
        results = await asyncio.gather(
            *(engine.wait_for(saga_id, timeout=60) for [saga_id] in saga_ids)
        )
        assert all(r is not None and r.status is SagaStatus.COMPLETED for r in results)
