"""``ActiveTrigger`` and ``PipelineState``: what the pipeline knows of a trigger and itself."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sagaz.clock import Clock, utcnow
from sagaz.config import TriggerConfig
from sagaz.engine.cluster_limits import ClusterLimits
from sagaz.engine.decoding import EventDecoder
from sagaz.engine.limits import TokenBucket
from sagaz.engine.metrics import EngineMetrics
from sagaz.engine.outcomes import SagaOutcomes
from sagaz.engine.resume_failures import ResumeFailures
from sagaz.engine.store_outage import StoreOutage
from sagaz.events import plain_data
from sagaz.saga.cancellation import SagaCancellations
from sagaz.saga.listeners import SagaListener

if TYPE_CHECKING:
    from sagaz.abc import SagaStore, Source
    from sagaz.engine.backpressure import BackpressureQueue
    from sagaz.engine.instances import SagaInstances
    from sagaz.saga.definition import Saga
    from sagaz.triggers.registration import TriggerDefinition

__all__ = ["ActiveTrigger", "PipelineState"]


@dataclass(slots=True)
class PipelineState:
    """Shared by admission, dispatcher and runner of one engine."""

    config: TriggerConfig
    store: SagaStore
    clock: Clock
    worker_id: str
    queue: BackpressureQueue
    listeners: list[SagaListener]
    metrics: EngineMetrics = field(default_factory=EngineMetrics)
    #: the outcome of every accepted saga id, for ``TriggerEngine.wait_for``
    outcomes: SagaOutcomes = field(default_factory=SagaOutcomes)
    global_bucket: TokenBucket | None = None
    #: operators' cancels of the sagas this engine runs (``sagaz.engine.steering_watch``)
    cancellations: SagaCancellations = field(default_factory=SagaCancellations)
    #: whether the store can be reached, and the wait for it when it cannot
    outage: StoreOutage = field(init=False)
    #: the sagas the recovery loop claimed and could not resume (``sagaz.engine.recovery``)
    resume_failures: ResumeFailures = field(init=False)
    _lease: timedelta = field(init=False)
    #: the last lease deadline computed, and until when (monotonic) it is reused
    _lease_until: datetime = field(init=False)
    _lease_fresh_until: float = field(init=False, default=-1.0)

    def __post_init__(self) -> None:
        self._lease = timedelta(seconds=self.config.lease_seconds)
        self.outage = StoreOutage(self.store, self.clock, self.worker_id, self.lease_until)
        self.resume_failures = ResumeFailures(self.clock, self.config.recovery_interval_seconds)

    def lease_until(self) -> datetime:
        """The lease deadline for claims made now.

        Leases measure the liveness of real processes, so they use the real clock even when
        the engine runs on a ``FakeClock`` (the stores compare them with real time).
        Asked twice per event, it is computed at most once a millisecond: a deadline up to
        a millisecond early is a lease a millisecond shorter."""
        now = time.monotonic()
        if now >= self._lease_fresh_until:
            self._lease_until = utcnow() + self._lease
            self._lease_fresh_until = now + 0.001
        return self._lease_until


class ActiveTrigger:
    """A registered trigger bound to a running engine: saga instance, decoder, limits."""

    def __init__(
        self,
        definition: TriggerDefinition,
        state: PipelineState,
        source: Source | None = None,
        *,
        instances: SagaInstances,
    ) -> None:
        self.definition = definition
        #: the trigger id (``"{saga_name}.{method}"``)
        self.trigger_id: str = definition.trigger_id
        #: the saga's name
        self.saga_name: str = definition.saga_name
        #: the saga object of every run (or, with a saga_factory, the one built at start)
        self.saga: Saga = instances.prototype(definition.saga_cls)
        self._instances = instances if instances.builds_per_run(definition.saga_cls) else None
        self.method = getattr(self.saga, definition.method)
        self.is_async = inspect.iscoroutinefunction(self.method)
        where = f"{definition.saga_cls.__qualname__}.{definition.method}"
        self.decoder = EventDecoder(self.method, where=where)
        self.source = source
        config = state.config
        self.max_retries = (
            definition.max_retries if definition.max_retries is not None else config.max_retries
        )
        self.retry_backoff = (
            definition.retry_backoff_seconds
            if definition.retry_backoff_seconds is not None
            else config.retry_backoff_seconds
        )
        self.dead_letter_topic = definition.dead_letter_topic or config.dead_letter_topic
        self.persist_events = (
            definition.persist_events
            if definition.persist_events is not None
            else config.persist_events
        )
        cluster = definition.limit_scope == "cluster"
        #: the limits kept in the store (``limit_scope="cluster"``); ``None``: this process's
        self.cluster: ClusterLimits | None = (
            ClusterLimits(
                definition.trigger_id,
                state.store,
                state.worker_id,
                outage=state.outage,
                lease_seconds=config.lease_seconds,
                keys=definition.concurrency_key is not None,
                slots=definition.max_concurrent_sagas,
                rate=definition.rate_limit_per_second,
            )
            if cluster
            else None
        )
        self.max_concurrent = None if cluster else definition.max_concurrent_sagas
        self.bucket = (
            TokenBucket(definition.rate_limit_per_second, state.clock)
            if definition.rate_limit_per_second and not cluster
            else None
        )
        self.listeners: list[SagaListener] = [*type(self.saga).listeners, *state.listeners]
        self.poll_exclusive = (
            definition.poll_trigger is not None and not definition.poll_trigger.allow_concurrent
        )
        #: a poll trigger's name in ``trigger_executions``: its trigger id, the name of its
        #: ``trigger_schedules`` row too (both tables join on ``trigger_name``)
        self.poll_name = definition.trigger_id if definition.poll_trigger is not None else None
        #: why the trigger is paused in this engine; empty while it runs (``engine.pausing``)
        self.paused_by: set[str] = set()
        #: set while it runs: a source that keeps ``Source.pause()``'s default waits on it
        #: in ``emit()``
        self.running = asyncio.Event()
        self.running.set()
        #: whether its source was told to pause (and not to resume since)
        self.source_paused = False

    @property
    def paused(self) -> bool:
        """Whether the trigger is paused here (for any reason)."""
        return bool(self.paused_by)

    def saga_for_run(self) -> Saga:
        """The saga object of one run: the shared instance, or a new one from the factory."""
        if self._instances is None:
            return self.saga
        return self._instances.for_run(self.definition.saga_cls)

    def transform(self, event: Any, meta: Any, saga: Saga | None = None) -> Any:
        """Call the trigger method of ``saga`` (default: :attr:`saga`): the saga's starting
        context, or for an ``async`` method (:attr:`is_async`) an awaitable of it (no
        coroutine of its own around a plain method: once per event).

        What it returns is made plain data (an :class:`~sagaz.events.EventData` in it as a
        plain ``dict``): a saga's context is the same on its first run as once read back
        from the store."""
        method = (
            self.method
            if saga is None or saga is self.saga
            else getattr(saga, self.definition.method)
        )
        # the arguments of ``EventDecoder.arguments``, without the call and the tuple
        result = method(event, meta) if self.decoder.wants_meta else method(event)
        if self.is_async:
            return self._plain_once_awaited(result)
        # only an unannotated method gets EventData (a typed one, plain validated objects)
        return plain_data(result) if self.decoder.adapter is None else result

    async def _plain_once_awaited(self, result: Awaitable[Any]) -> Any:
        value = await result
        return plain_data(value) if self.decoder.adapter is None else value

    def backoff(self, retry: int) -> float:
        """Base delay before retry number ``retry`` (1-based); the last value repeats."""
        if not self.retry_backoff:
            return 0.0
        return float(self.retry_backoff[min(retry, len(self.retry_backoff)) - 1])
