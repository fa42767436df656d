"""The source contract: :class:`Source`, the :class:`SourceContext` a source is built with,
what it calls for every event (:data:`Emit`, :func:`emit_many`) and the counters it may keep
(:class:`SourceCounter`).

Every broker source passes ``tests/contract/test_source_contract.py``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from sagaz.abc.lifecycle import Lifecycle
from sagaz.abc.store import SagaStore
from sagaz.records import DeadLetterRecord

if TYPE_CHECKING:
    from sagaz.clock import Clock
    from sagaz.config import TriggerConfig
    from sagaz.events import AdmissionResult, Delivery, Reason

__all__ = ["Emit", "EmitMany", "Source", "SourceContext", "SourceCounter", "emit_many"]


Emit = Callable[["Delivery"], Awaitable["AdmissionResult"]]
"""What a source calls for every event. It returns once the event is admitted (durably
accepted, deduplicated, filtered or refused); with ``backpressure_strategy="block"`` it waits
for room in the queue. The delivery's ``ack``/``nack`` are called later, after the saga's
terminal state is in the store."""

EmitMany = Callable[[Sequence["Delivery"]], Awaitable[Sequence["AdmissionResult"]]]
"""The batch form of :data:`Emit` (see :func:`emit_many`): one result per delivery, in order."""


async def emit_many(emit: Emit, deliveries: Sequence[Delivery]) -> Sequence[AdmissionResult]:
    """Emit a batch of deliveries (a broker poll's records) in order; one result each.

    The engine's ``emit`` admits a batch as one (``emit.many``: on a durable store their
    inbox claims go out together, so a store with group commit makes one round trip of
    them), queued in the batch's order; any other ``emit`` (a test's function) is called
    once per delivery, in order.

    >>> results = await emit_many(emit, [delivery_1, delivery_2])  # doctest: +SKIP
    """
    many: EmitMany | None = getattr(emit, "many", None)
    if many is not None:
        return await many(deliveries)
    return [await emit(delivery) for delivery in deliveries]


class Source(Lifecycle, ABC):
    """An event source: one asyncio task per instance runs :meth:`run`.

    Sources know nothing of sagas. A source turns each message into a
    :class:`~sagaz.events.Delivery` with its own ``ack``/``nack`` and calls ``emit``.
    """

    #: the ``source=`` name of ``@trigger`` (``"kafka"``, ``"cron"``...)
    kind: ClassVar[str] = "custom"
    #: whether an un-acked message comes back by itself (brokers) or not (webhook, cron...)
    redeliverable: ClassVar[bool] = False
    #: whether ``ack()``/``nack()`` only record the outcome in memory and never wait (Kafka:
    #: offsets are committed in batches by the source's own task); otherwise the engine
    #: shields each ack of a redeliverable source from cancellation, which costs a task
    settles_locally: ClassVar[bool] = False

    @abstractmethod
    async def run(self, emit: Emit) -> None:
        """Consume until cancelled, calling ``emit`` for every event."""

    async def pause(self) -> None:
        """Take no more events until :meth:`resume`; leave them where they are.

        Called by the engine when the trigger is paused (``sagaz triggers pause ID``); it may
        come before :meth:`run` (a trigger paused in the store starts paused) and more than
        once. Events already emitted are in flight: pausing neither acks nor nacks them. The
        built-in sources stop at their broker (Kafka pauses its partitions but keeps polling,
        RabbitMQ cancels its consumer, Redis and SQS stop reading), a cron source skips its
        ticks (``ctx.report_skipped(tick, Reason.PAUSED)``), a webhook answers 503.

        The default does nothing here, and the engine then holds the source in ``emit()``
        until it is resumed: a push source that waits for ``emit`` takes nothing more.
        """

    async def resume(self) -> None:
        """Take events again after :meth:`pause`; default: nothing (``emit()`` returns)."""

    async def publish_dead_letter(self, delivery: Delivery, record: DeadLetterRecord) -> None:
        """Publish a dead letter to the source's broker (``dead_letter_topic``); default: no-op."""

    def describe(self) -> dict[str, Any]:
        """A short description for logs and ``sagaz triggers list``."""
        return {"kind": self.kind}

    def counters(self) -> Sequence[SourceCounter]:
        """The source's own counters, exported beside the engine's metrics; default: none.

        Sources that share one resource (the webhook triggers share one server) may report
        the same counter: the engine exports a counter name once.
        """
        return ()


@dataclass(frozen=True, slots=True)
class SourceCounter:
    """One counter a source keeps itself (e.g. the webhook's refused requests).

    ``values`` maps a tuple of label values (in the order of ``labels``) to the count.
    """

    name: str
    documentation: str
    labels: tuple[str, ...]
    values: Mapping[tuple[str, ...], int]


async def _report_nothing(event: Any, reason: Reason) -> None:
    """What a :class:`SourceContext` built outside the engine does with a skipped event."""


def _always_available() -> bool:
    """What a :class:`SourceContext` built outside the engine says of its store."""
    return True


@dataclass(slots=True)
class SourceContext:
    """What a source module's ``create(options, ctx)`` gets: everything a source needs from
    the engine, handed in, so that sources never import the engine.

    It lives here, beside :class:`Source`, because it is half of the source contract; the
    engine builds one per trigger when it starts (``sagaz.engine.loading`` finds the module).
    """

    trigger_id: str
    saga_name: str
    config: TriggerConfig
    store: SagaStore
    clock: Clock
    worker_id: str
    #: log + ``on_trigger_error`` listeners; never raises
    report_error: Callable[[BaseException], Awaitable[None]]
    #: per-engine resources that the sources of one kind share (e.g. the one webhook server of
    #: all webhook triggers); the engine never looks inside
    shared: dict[str, Any] = field(default_factory=dict)
    #: the engine's metrics in the Prometheus text format and their content type, for a source
    #: that serves HTTP (the webhook's ``GET /metrics``); ``None`` without the ``metrics`` extra
    metrics_renderer: Callable[[], tuple[bytes, str]] | None = None
    #: where a broker source publishes dead letters: the trigger's ``dead_letter_topic``,
    #: else ``TriggerConfig.dead_letter_topic`` (resolved by the engine); ``None``: nowhere
    dead_letter_topic: str | None = None
    #: count and report (``on_trigger_filtered``) an event the source did not hand in,
    #: with its reason: a cron tick skipped while the trigger is paused (``Reason.PAUSED``)
    report_skipped: Callable[[Any, Reason], Awaitable[None]] = field(default=_report_nothing)
    #: whether the engine reaches its store now: False during a store outage, from the first
    #: ``StoreUnavailableError`` until the engine's probe finds the store back (a source
    #: that serves HTTP reports it in its readiness: the webhook's ``GET /readyz``)
    store_available: Callable[[], bool] = field(default=_always_available)
