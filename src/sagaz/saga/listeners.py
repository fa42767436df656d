"""Listeners: observe sagas and triggers. All hooks are async; failures are logged, isolated.

The exception is :class:`OutboxSagaListener`: its messages are part of the saga's terminal
write, so a failure to write them fails that write."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from sagaz.events import Reason
from sagaz.exceptions import ConfigurationError
from sagaz.records import DeadLetterRecord, OutboxMessage
from sagaz.types import SagaStatus

if TYPE_CHECKING:
    from sagaz.abc import SagaStore
    from sagaz.saga.context import SagaContext

__all__ = ["OutboxSagaListener", "SagaListener", "check_outbox_store", "notify"]

logger = logging.getLogger(__name__)


class SagaListener:
    """Base class with a no-op for every hook; override the ones you need.

    A saga class's ``listeners`` hear about that saga; listeners given to
    ``sagaz.start_triggers(listeners=[...])`` (or ``TriggerEngine(listeners=...)``) hear
    about every saga and trigger of the engine, in addition to each class's own.

    >>> class Audit(SagaListener):
    ...     async def on_trigger_received(self, saga_name, event_source, event):
    ...         print(saga_name, event_source, event)  # "orders" "kafka" Order(id=1)
    ...     async def on_saga_complete(self, saga_name, saga_id, ctx):
    ...         print("done", saga_id)
    >>> await sagaz.start_triggers(listeners=[Audit()])  # doctest: +SKIP
    """

    # -- triggers --------------------------------------------------------------------------
    async def on_trigger_received(self, saga_name: str, event_source: str, event: Any) -> None:
        """An event arrived for a trigger of ``saga_name``.

        ``event_source`` is the kind of source it came through (``EventMeta.source``:
        ``"kafka"``, ``"webhook"``, ``"memory"``, ``"cron"``... or a custom source's kind).
        ``event`` is the decoded event, as the trigger method receives it (a pydantic model,
        the read-only mapping, a ``CronTick``...), the same object ``on_trigger_filtered``
        gets if the event then does not become a saga; an event that cannot be decoded
        arrives as its raw payload.
        """

    async def on_trigger_filtered(self, saga_name: str, event: Any, reason: Reason) -> None:
        """An event did not become a saga; ``reason`` is one :class:`~sagaz.events.Reason`
        of DESIGN 3.6 (a ``str`` enum: ``reason == "duplicate"`` works)."""

    async def on_trigger_error(self, saga_name: str, error: BaseException, event: Any) -> None:
        """A source or poll failed (the engine keeps going)."""

    async def on_dead_letter(self, saga_name: str, record: DeadLetterRecord) -> None:
        """An event was dead-lettered."""

    # -- sagas -----------------------------------------------------------------------------
    async def on_saga_start(self, saga_name: str, saga_id: str, ctx: SagaContext) -> None:
        """A saga execution (or a resumed one) starts."""

    async def on_step_enter(self, saga_name: str, step_name: str, ctx: SagaContext) -> None:
        """A step is about to run (once per try)."""

    async def on_step_success(
        self, saga_name: str, step_name: str, ctx: SagaContext, result: dict[str, Any]
    ) -> None:
        """A step completed; ``result`` is what it returned."""

    async def on_step_failure(
        self, saga_name: str, step_name: str, ctx: SagaContext, error: BaseException
    ) -> None:
        """A try of a step failed."""

    async def on_compensation_start(self, saga_name: str, step_name: str, ctx: SagaContext) -> None:
        """The compensation of ``step_name`` starts."""

    async def on_compensation_complete(
        self, saga_name: str, step_name: str, ctx: SagaContext
    ) -> None:
        """The compensation of ``step_name`` succeeded."""

    async def on_saga_complete(self, saga_name: str, saga_id: str, ctx: SagaContext) -> None:
        """The saga completed."""

    async def on_saga_failed(
        self, saga_name: str, saga_id: str, ctx: SagaContext, error: BaseException | str
    ) -> None:
        """The saga ended compensated or failed."""


async def notify(listeners: Iterable[SagaListener], hook: str, *args: Any) -> None:
    """Call ``hook`` on every listener; a failing listener is logged and never propagates."""
    for listener in listeners:
        try:
            await getattr(listener, hook)(*args)
        except Exception:
            logger.exception(
                "listener %s.%s failed", type(listener).__name__, hook, extra={"hook": hook}
            )


def check_outbox_store(listeners: Iterable[SagaListener], store: SagaStore, saga_name: str) -> None:
    """Raise :class:`~sagaz.exceptions.ConfigurationError` if an ``OutboxSagaListener`` of
    saga ``saga_name`` writes to another store than ``store``, the one the saga runs on: its
    messages are written in the saga's own transaction."""
    for listener in listeners:
        if not isinstance(listener, OutboxSagaListener):
            continue
        if listener.store is not None and listener.store is not store:
            raise ConfigurationError(
                f"the OutboxSagaListener of saga {saga_name!r} writes to "
                f"{listener.store!r}, but the saga runs on {store!r}: its messages are "
                "written in the same transaction as the saga's state, so both need the "
                "same store. Run the saga on that store (Saga.run(..., store=...), "
                "start_triggers(store=...)) or create OutboxSagaListener() without a store"
            )


class OutboxSagaListener(SagaListener):
    """Writes a saga's lifecycle events to the outbox, relayed by ``OutboxRelay``.

    Messages a step emits with ``ctx.emit(topic, payload)`` are written with that step's
    checkpoint; this listener adds ``f"{topic_prefix}.completed"`` when the saga completes and
    ``f"{topic_prefix}.failed"`` when it ends compensated or failed. Unlike other listeners it
    is not a hook that may fail on the side: its messages are written in the same transaction
    as the saga's terminal state (``SagaStore.save_saga(record, outbox)``). If that write
    fails, the saga does not end: ``run()`` raises, the saga stays resumable, and the resume
    writes the state and the messages together.

    ``store`` is the store the saga runs on (``None``: whichever it runs on). A listener on
    another store is refused before the saga starts: one transaction cannot span two stores.

    >>> class OrderSaga(Saga):  # doctest: +SKIP
    ...     listeners = [OutboxSagaListener()]
    """

    def __init__(self, store: SagaStore | None = None, *, topic_prefix: str = "saga") -> None:
        self.store = store
        self.topic_prefix = topic_prefix

    def saga_messages(
        self, saga_name: str, saga_id: str, status: SagaStatus, error: str | None
    ) -> list[OutboxMessage]:
        """The messages written with the terminal ``status`` of a saga (override to change
        them): ``{topic_prefix}.completed`` with its name and id, or ``{topic_prefix}.failed``
        with its name, id and error."""
        payload: dict[str, Any] = {"saga_name": saga_name, "saga_id": saga_id}
        if status is SagaStatus.COMPLETED:
            suffix = "completed"
        else:
            suffix = "failed"
            payload["error"] = error
        return [
            OutboxMessage(saga_id=saga_id, topic=f"{self.topic_prefix}.{suffix}", payload=payload)
        ]
