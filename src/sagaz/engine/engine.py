"""``TriggerEngine``: one task per source, a backpressure queue, a worker pool, listeners.

>>> engine = await sagaz.start_triggers()  # doctest: +SKIP
>>> await sagaz.fire_event("orders", {"id": 1})  # doctest: +SKIP
>>> await sagaz.stop_triggers()  # doctest: +SKIP

or, without the process-wide engine::

    async with TriggerEngine(TriggerConfig(queue_size=100), store) as engine:
        ...

The process-wide engine's functions live in :mod:`sagaz.engine.process_engine` (imported
here too); the tasks the engine runs in :mod:`~sagaz.engine.supervision` (one per source),
:mod:`~sagaz.engine.leases`, :mod:`~sagaz.engine.recovery` and :mod:`~sagaz.engine.retention`.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import logging
import os
import socket
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sagaz import tracing
from sagaz.abc import Lifecycle, SagaStore, Source, SourceContext
from sagaz.clock import Clock, SystemClock
from sagaz.config import TriggerConfig, resolve_store, store_is_chosen
from sagaz.engine import recovery
from sagaz.engine.active_trigger import ActiveTrigger, PipelineState
from sagaz.engine.admission import Admission
from sagaz.engine.backpressure import BackpressureQueue
from sagaz.engine.dispatcher import Dispatcher
from sagaz.engine.instances import SagaFactory, SagaInstances
from sagaz.engine.leases import release_leases, renew_leases
from sagaz.engine.limits import TokenBucket
from sagaz.engine.loading import load_source_module
from sagaz.engine.outcomes import SagaOutcomes
from sagaz.engine.pausing import TriggerPauses
from sagaz.engine.process_engine import (
    fire_event,
    pause_trigger,
    resume_trigger,
    start_triggers,
    stop_triggers,
    webhook_app,
)
from sagaz.engine.retention import purge_expired
from sagaz.engine.runner import SagaRunner
from sagaz.engine.settlement import Settlement
from sagaz.engine.steering_watch import SagaSteering
from sagaz.engine.supervision import supervise_source
from sagaz.events import AdmissionOutcome, AdmissionResult, Delivery, EventMeta, NotRun, Reason
from sagaz.exceptions import ConfigurationError
from sagaz.saga.definition import Saga
from sagaz.saga.listeners import SagaListener
from sagaz.saga.result import SagaResult
from sagaz.triggers.registration import TriggerDefinition, registry

__all__ = [
    "TriggerEngine",
    "fire_event",
    "pause_trigger",
    "resume_trigger",
    "start_triggers",
    "stop_triggers",
    "webhook_app",
]

logger = logging.getLogger(__name__)

# read once: on Python 3.11 ``AdmissionOutcome.ACCEPTED`` goes through ``EnumType.__getattr__``'s
# hook (about 1,000 instructions), once per fired event
_ACCEPTED = AdmissionOutcome.ACCEPTED

#: how long a shutdown waits for broker acks and nacks already under way
ACK_DRAIN_SECONDS = 5.0

#: logged once per start by an engine that fell back to the memory store
NOT_DURABLE_WARNING = (
    "no store configured: the trigger engine runs on an in-memory MemorySagaStore, so sagas "
    "are not durable (a restart loses accepted and running sagas, nothing resumes, and other "
    "processes share no inbox). Choose a store with start_triggers(store=...), "
    "sagaz.configure(store=...) or SAGAZ_STORE_URL (sqlite:///sagaz.db, postgresql://..., "
    "redis://...)"
)


def _default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class TriggerEngine(Lifecycle):
    """Runs every registered trigger: sources → admission → queue → dispatcher → sagas.

    ``start()``/``stop()`` are mirrored by ``async with``; ``stop()`` is idempotent and
    graceful: stop intake, let in-flight sagas finish up to ``shutdown_timeout``, ack what
    finished, leave the rest un-acked for redelivery, close the sources.

    With ``start_sources=False`` (a dead-letter replay, the test harness) no source runs, nor
    do the recovery and cleanup loops: the engine runs only the events it is handed.

    ``sagas`` and ``saga_factory``: the saga objects runs use (see :func:`start_triggers`).
    """

    def __init__(
        self,
        config: TriggerConfig | None = None,
        store: SagaStore | None = None,
        *,
        listeners: Sequence[SagaListener] = (),
        clock: Clock | None = None,
        triggers: Sequence[TriggerDefinition] | None = None,
        start_sources: bool = True,
        shared: dict[str, Any] | None = None,
        sagas: Iterable[Saga] = (),
        saga_factory: SagaFactory | None = None,
    ) -> None:
        self.config = config or TriggerConfig()
        self.instances = SagaInstances(sagas, saga_factory)
        self.store: SagaStore = resolve_store(store)
        self._store_chosen = store_is_chosen(store)
        self.clock = clock or SystemClock()
        self.listeners = list(listeners)
        self._definitions = list(triggers) if triggers is not None else None
        self.start_sources = start_sources
        self.worker_id = self.config.worker_id or _default_worker_id()
        self.triggers: dict[str, ActiveTrigger] = {}
        self.sources: dict[str, Source] = {}
        self._channels: dict[str, list[ActiveTrigger]] = {}  # memory triggers by channel
        self._tasks: list[asyncio.Task[None]] = []
        self.outcomes = SagaOutcomes()
        self._started = False
        self._stopping = False
        self._store_started_here = False
        self.shared: dict[str, Any] = shared if shared is not None else {}
        self.state: PipelineState | None = None
        self._dashboard_server: Any = None  # the webhook server held for the dashboard
        #: acts on operators' saga requests (``sagaz sagas cancel|resume|retry``)
        self.steering: SagaSteering | None = None

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the store (if needed), the workers and one task per source."""
        if self._started:
            return
        definitions = self._definitions if self._definitions is not None else registry.triggers()
        definitions = [d for d in definitions if d.enabled]
        if not definitions:
            raise ConfigurationError(
                "no triggers are registered, so there is nothing to start. Triggers are "
                "discovered when the module defining your `class MySaga(Saga)` with "
                "`@trigger(...)` methods is imported: import it before start_triggers() "
                "(e.g. `import myapp.sagas`), or run `sagaz run myapp.sagas`."
            )
        self.instances.prepare(d.saga_cls for d in definitions)
        if not self._store_chosen:
            logger.warning(NOT_DURABLE_WARNING, extra={"worker_id": self.worker_id})
        if not getattr(self.store, "_started", False):
            await self.store.start()
            self._store_started_here = True
        config = self.config
        queue = BackpressureQueue(config.queue_size, config.backpressure_strategy)
        state = PipelineState(
            config=config,
            store=self.store,
            clock=self.clock,
            worker_id=self.worker_id,
            queue=queue,
            listeners=self.listeners,
            outcomes=self.outcomes,
            global_bucket=(
                TokenBucket(config.rate_limit_per_second, self.clock)
                if config.rate_limit_per_second
                else None
            ),
        )
        self.state = state
        self.settlement = Settlement(state)
        self.admission = Admission(state, self.settlement)
        self.runner = SagaRunner(state, self.settlement)
        self.runner.taken_over = self.admission.watch_taken_over
        self.outcomes.resume()
        self.dispatcher = Dispatcher(state, self.runner)
        self.pausing = TriggerPauses(state, self.triggers, self._report_source_error)
        self.steering = SagaSteering(state, self.triggers)
        self._started = True
        try:
            for definition in definitions:
                active = ActiveTrigger(definition, state, instances=self.instances)
                self.triggers[definition.trigger_id] = active
                if definition.channel is not None:  # in-process events come through fire()
                    self._channels.setdefault(str(definition.channel), []).append(active)
                elif self.start_sources:
                    active.source = self._build_source(active)
                    self.sources[definition.trigger_id] = active.source
            if self.start_sources:  # a trigger paused in the store starts paused
                await self.pausing.register()
            self.dispatcher.start(config.max_concurrent_sagas)
            for trigger_id, source in self.sources.items():
                active = self.triggers[trigger_id]
                await source.start()
                supervised = supervise_source(
                    state, self.admission, active, source, self._report_source_error
                )
                self._spawn(supervised, f"sagaz-source-{trigger_id}")
            self._spawn(renew_leases(state, self.triggers), "sagaz-heartbeat")
            if config.dashboard and self.start_sources:
                await self._serve_dashboard()
            if self.start_sources:  # one fed by hand (a replay) takes on no one else's sagas
                self._spawn(
                    recovery.recover(state, self.triggers, self.admission), "sagaz-recovery"
                )
                self._spawn(purge_expired(state), "sagaz-cleanup")
                self._spawn(self.pausing.watch(), "sagaz-trigger-states")
                self._spawn(self.steering.watch(), "sagaz-saga-requests")
        except BaseException:
            await self.stop()
            raise
        logger.info(
            "sagaz engine started with %d trigger(s)",
            len(self.triggers),
            extra={"worker_id": self.worker_id, "triggers": sorted(self.triggers)},
        )

    async def _serve_dashboard(self) -> None:
        """Mount the dashboard at ``/sagaz`` on the engine's webhook server and hold the
        server open (it starts here when no webhook trigger runs)."""
        from sagaz.dashboard import dashboard_app

        app = dashboard_app(engine=self)
        webhook: Any = load_source_module("webhook")  # loaded lazily, as for its triggers
        server = webhook.webhook_server(self.shared)
        if server.config is None:
            server.config = self.config
        server.app.dashboard = app
        await server.acquire(self, self._report_dashboard_error)
        self._dashboard_server = server

    def _report_dashboard_error(self, error: BaseException) -> None:
        logger.error("the dashboard's server stopped", exc_info=error)

    @property
    def dashboard_url(self) -> str | None:
        """``http://host:port/sagaz`` while the built-in server serves the dashboard."""
        server = self._dashboard_server
        url = server.url if server is not None else None
        return f"{url}/sagaz" if url else None

    def _spawn(self, coro: Any, name: str) -> None:
        self._tasks.append(asyncio.create_task(coro, name=name))

    def _build_source(self, active: ActiveTrigger) -> Source:
        definition = active.definition
        ctx = SourceContext(
            trigger_id=definition.trigger_id,
            saga_name=definition.saga_name,
            config=self.config,
            store=self.store,
            clock=self.clock,
            worker_id=self.worker_id,
            report_error=functools.partial(self._report_source_error, active),
            shared=self.shared,
            metrics_renderer=self._metrics_renderer(),
            dead_letter_topic=active.dead_letter_topic,
            report_skipped=functools.partial(self.settlement.filtered, active),
            store_available=self._store_available,
        )
        if definition.push_source is not None:
            return definition.push_source
        return load_source_module(definition.source).create(definition.source_options, ctx)

    def _store_available(self) -> bool:
        return self.state is None or self.state.outage.available

    async def _report_source_error(self, active: ActiveTrigger, error: BaseException) -> None:
        await self.settlement.report(active, error, None)

    async def recover_once(self) -> int:
        """One recovery pass; returns how many sagas were resumed (see
        :func:`~sagaz.engine.recovery.recover_once`)."""
        assert self.state is not None
        return await recovery.recover_once(self.state, self.triggers, self.admission)

    async def stop(self) -> None:
        """Graceful shutdown; idempotent.

        Order: stop intake (cancel the source tasks), nack what is buffered but not started,
        let in-flight sagas finish up to ``shutdown_timeout`` (their acks still reach the
        sources: acks under way are awaited too), give back the sagas that did not finish
        (the runs cancelled, the events never started, those held after a store error:
        their next claim is no recovery attempt) and end this worker's other leases, then
        close the sources and the store.
        """
        if not self._started or self._stopping:
            return
        self._stopping = True
        self.dispatcher.stopping = True
        state = self.state
        assert state is not None
        self.admission.accepting = False
        state.queue.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await self.admission.close()
        await self.runner.close()
        queued: list[str] = []  # accepted, never started: redelivered or recovered
        for item in state.queue.drain():
            await self.settlement.nack(item.trigger, item.delivery)
            if not item.already_terminal:
                queued.append(item.saga_id)
        await self.dispatcher.stop(self.config.shutdown_timeout)
        for active in self.triggers.values():  # what is left of the cluster limits' leases
            if active.cluster is not None:
                await active.cluster.close()
        await state.outage.close()
        await self.settlement.drain(ACK_DRAIN_SECONDS)  # acks under way, before sources close
        # given back, not left to be taken over: the next claims count no recovery attempt
        held = [*self.runner.errors.interrupted, *self.admission.errors.interrupted]
        await release_leases(state, [*self.dispatcher.interrupted, *queued, *held])
        await asyncio.gather(*(self._stop_source(s) for s in self.sources.values()))
        if self._dashboard_server is not None:
            server, self._dashboard_server = self._dashboard_server, None
            server.app.dashboard = None
            await server.release(self)
        self.outcomes.interrupt()  # what did not end here resumes later: say so to waiters
        if self._store_started_here:
            await self.store.stop()
        self._started = False
        self._stopping = False

    def _metrics_renderer(self) -> Callable[[], tuple[bytes, str]] | None:
        """This engine's Prometheus metrics for a source that serves them (``GET /metrics``
        of the webhook server), or ``None`` without the ``metrics`` extra."""
        if importlib.util.find_spec("prometheus_client") is None:
            return None
        from sagaz.engine.prometheus import render

        return functools.partial(render, self)

    @staticmethod
    async def _stop_source(source: Source) -> None:
        try:
            await source.stop()
        except Exception:
            logger.exception("stopping source %s failed", source.describe())

    @property
    def running(self) -> bool:
        """True between ``start()`` and ``stop()``."""
        return self._started and not self._stopping

    @property
    def metrics(self) -> Any:
        """The engine's :class:`~sagaz.engine.metrics.EngineMetrics`."""
        assert self.state is not None, "start the engine first"
        return self.state.metrics

    # -- in-process events -----------------------------------------------------------------
    async def fire(self, channel: str, event: Any) -> list[str]:
        """Send ``event`` to every ``source="memory"`` trigger on ``channel``; return the
        saga ids accepted (durable in the store when this returns).

        Each call is its own event (two identical payloads start two sagas) unless the
        trigger names an identity (``idempotency_key=``) or asks ``dedup="content"``.
        A paused trigger skips the event (``on_trigger_filtered`` with reason ``paused``).
        :meth:`wait_for` answers every returned id: its result, or why it did not run."""
        if self._stopping or not self._started:  # ``running`` inline: once per event
            self._require_running()
        targets = self._channels.get(channel)
        if not targets:
            raise ConfigurationError(
                f"no trigger listens on channel {channel!r}; declare one with "
                f"@trigger(source='memory', channel={channel!r})"
            )
        accepted: list[str] = []
        # the event continues the caller's trace; while tracing is off and the store is up,
        # admission need not look at either again (one look at the gate per event)
        untraced = tracing.recorder() is None
        caller = None if untraced else tracing.current_context()
        admit, outage = self.admission.admit, self.admission.state.outage
        for active in targets:
            if active.paused_by:  # paused: an in-process event cannot wait, skipped, said so
                await self.settlement.filtered(active, event, Reason.PAUSED)
                continue
            # payload, meta (source, trigger, message_id, topic), identity: by position; the
            # rest set after (keywords to a class cost a dict per call)
            delivery = Delivery(event, EventMeta("memory", active.trigger_id, None, channel), "")
            delivery.decoded = True
            delivery.trace_context = caller
            result = await admit(active, delivery, untraced=untraced and outage.available)
            if result.outcome is _ACCEPTED and result.saga_id:
                accepted.append(result.saga_id)
        return accepted

    async def dispatch(
        self,
        trigger_id: str,
        event: Any,
        *,
        meta: EventMeta | None = None,
        identity: str = "",
        body: bytes | str | None = None,
    ) -> AdmissionResult:
        """Admit ``event`` for one trigger directly, bypassing its source (tests, replay).

        ``identity`` is its dedup key (unless the trigger sets ``idempotency_key``), and its
        message id when no ``meta`` is given; without one each call is its own event, as for
        :meth:`fire`. ``body`` makes ``event`` an
        envelope, as its source marked it (see :class:`~sagaz.events.Delivery`): a typed
        trigger method gets ``body`` validated.
        """
        self._require_running()
        active = self.triggers[trigger_id]
        delivery = Delivery(
            payload=event,
            decoded=True,
            identity=identity,
            meta=meta
            or EventMeta(
                source=active.definition.source, trigger=trigger_id, message_id=identity or None
            ),
            body=body,
            trace_context=tracing.current_context(),
        )
        return await self.admission.admit(active, delivery)

    async def wait_for(self, saga_id: str, timeout: float | None = None) -> SagaResult | NotRun:
        """Wait until the saga of an event this engine accepted has an outcome.

        Every saga id :meth:`fire` (``sagaz.fire_event``), :meth:`dispatch` or a webhook's
        202 handed out gets one: its :class:`~sagaz.saga.result.SagaResult` (completed, or
        compensated/failed and dead-lettered after its retries), or a
        :class:`~sagaz.events.NotRun` saying why it has none: ``reason`` is
        ``"dropped_oldest"`` (evicted from the full queue after it was accepted: it never
        runs) or ``"interrupted"`` (the engine stopped, or the store failed, first: it
        resumes later). ``TimeoutError`` after ``timeout`` seconds.

        >>> [saga_id] = await sagaz.fire_event("orders", {"id": 1})  # doctest: +SKIP
        >>> outcome = await engine.wait_for(saga_id, timeout=30)  # doctest: +SKIP
        >>> outcome.status if outcome else outcome.reason  # doctest: +SKIP
        <SagaStatus.COMPLETED: 'completed'>
        """
        return await self.outcomes.wait(saga_id, timeout)

    # -- pausing -----------------------------------------------------------------------------
    async def pause_trigger(self, trigger_id: str) -> None:
        """Pause a trigger here at once and, through the store, in every engine on it
        (within ``trigger_state_interval_seconds``); a restart keeps it paused.

        Broker messages stay on the broker, cron ticks are skipped (reason ``paused``), a
        webhook answers 503 + Retry-After, a poll trigger is not polled; what is in flight
        finishes. ``trigger_id`` may be a trigger of another app on the same store.
        Raises :class:`~sagaz.exceptions.TriggerNotFoundError` for an id the store does not
        know.
        """
        self._require_running()
        await self.pausing.set_enabled(trigger_id, False)

    async def resume_trigger(self, trigger_id: str) -> None:
        """Resume a trigger paused with :meth:`pause_trigger` (or ``sagaz triggers pause``)."""
        self._require_running()
        await self.pausing.set_enabled(trigger_id, True)

    def paused_triggers(self) -> dict[str, frozenset[str]]:
        """The triggers paused in this engine and why (``"operator"``: paused in the store;
        ``"trigger_scheduling_disabled"``: a poll trigger under
        ``enable_trigger_scheduling=False``)."""
        return {tid: frozenset(t.paused_by) for tid, t in self.triggers.items() if t.paused}

    def _require_running(self) -> None:
        if not self.running:
            raise RuntimeError("the trigger engine is not running: `await engine.start()` first")
