"""OpenTelemetry spans for events and sagas (``pip install "sagaz[otel]"``).

With the extra installed and a tracer provider configured, sagaz records, per event:

==========================  =============================================  ====================
span                        covers                                         parent
==========================  =============================================  ====================
``sagaz.admit {trigger}``   admission: decode, inbox claim, the trigger     the event's context
                            method, the pending row, the queue (kind
                            ``CONSUMER``)
``sagaz.saga {saga_name}``  one attempt of the saga (a retry is a new span  the event's context
                            under the same parent)
``sagaz.step {step}``       one step with all its tries (each failed try    the saga span
                            that is retried is an exception event with
                            ``sagaz.try``)
``sagaz.compensate {step}`` one compensation with all its tries             the saga span
==========================  =============================================  ====================

Attributes: ``sagaz.trigger.id``, ``sagaz.source``, ``messaging.message.id`` and
``messaging.destination.name`` (the topic, queue, stream or path) on admission spans and on
the saga spans of the engine's runs; ``sagaz.admission.outcome`` (``accepted``,
``duplicate``, ``filtered``...), ``sagaz.admission.reason`` and ``sagaz.saga.id`` on admission
spans; ``sagaz.saga.id``, ``sagaz.saga.name``, ``sagaz.saga.attempt`` and ``sagaz.saga.status``
(``completed``, ``compensated``, ``failed``, or ``interrupted`` when shutdown cancelled it) on
saga spans; ``sagaz.step.name`` on step and compensation spans. An invalid or refused event,
a saga that did not complete, and a step or compensation that failed have status ``ERROR``.
``Saga.run()`` outside the engine makes the saga and step spans, under the caller's span.

**The event's context** is the trace context the event arrived with, read from
``EventMeta.headers`` with OpenTelemetry's global propagator (W3C ``traceparent`` /
``tracestate`` and baggage by default; ``propagate.set_global_textmap`` or
``OTEL_PROPAGATORS`` apply; header names match in any case): Kafka record headers, RabbitMQ
message headers, SQS message attributes (String ones), a webhook request's HTTP headers.
``sagaz.fire_event`` continues the caller's current span. An event that carries no context
starts a trace with its admission span, and its saga span is then a child of that span, so
every event is one trace. The saga span is a child (not a link) of the event's context: one
event runs one saga (its retries, and the run a redelivered message resumes, are spans of the
same trace), so the trace of a message shows what it caused; links are for spans that fan in
from many traces. The context is not stored: a saga the recovery loop resumes after a crash
(webhook, cron, file, memory, poll events) starts a new trace.

**Outbox messages** carry the trace on: a message a step emits (``ctx.emit``) gets the step
span's context in its headers (``traceparent``...), the ``OutboxSagaListener``'s
``saga.completed`` / ``saga.failed`` the saga span's; headers passed to ``ctx.emit`` win. The
relay publishes them as Kafka and RabbitMQ headers and Redis ``h:<name>`` fields, so a
consumer's instrumentation (or another sagaz service) continues the trace.

**Cost.** Without the extra, or while no tracer provider is configured (OpenTelemetry's
global provider is a proxy until ``trace.set_tracer_provider`` is called), no span, context
or header is made: one check per event and per saga.

Use the global provider (``pip install opentelemetry-sdk opentelemetry-exporter-otlp``)::

    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    engine = await sagaz.start_triggers()

or give sagaz one of its own (tests, or an app whose global provider is someone else's)::

    from sagaz.tracing import use_tracer_provider

    use_tracer_provider(provider)  # use_tracer_provider(None): the global one again
"""

from __future__ import annotations

import asyncio
import importlib
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from types import ModuleType

    from opentelemetry.context import Context
    from opentelemetry.propagators.textmap import Getter
    from opentelemetry.trace import Span, Tracer, TracerProvider

    from sagaz.events import AdmissionResult, Delivery
    from sagaz.saga.result import SagaResult

__all__ = ["SpanRecorder", "current_context", "outgoing_headers", "recorder", "use_tracer_provider"]

TRACER_NAME = "sagaz"


class _Gate:
    """What :func:`recorder` decides from: whether OpenTelemetry imports, and the recorder
    of the provider seen last (recomputed when the provider changes)."""

    __slots__ = ("from_environment", "loaded", "override", "provider", "recorder", "trace")

    def __init__(self) -> None:
        self.loaded = False
        self.trace: ModuleType | None = None  # opentelemetry.trace, once imported
        self.from_environment = False  # OTEL_PYTHON_TRACER_PROVIDER names the provider
        self.override: TracerProvider | None = None
        self.provider: object = None
        self.recorder: SpanRecorder | None = None

    def load(self) -> ModuleType | None:
        self.loaded = True
        try:
            self.trace = importlib.import_module("opentelemetry.trace")
        except ImportError:  # the extra is not installed: tracing stays off for good
            self.trace = None
        else:
            self.from_environment = "OTEL_PYTHON_TRACER_PROVIDER" in os.environ
        return self.trace

    def adopt(self, trace: ModuleType, provider: TracerProvider) -> SpanRecorder | None:
        self.provider = provider
        if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
            self.recorder = None  # nobody configured tracing: make nothing
        else:
            import sagaz

            # loading the configured propagators takes a while: not on the first event
            importlib.import_module("opentelemetry.propagate")
            self.recorder = SpanRecorder(provider.get_tracer(TRACER_NAME, sagaz.__version__))
        return self.recorder


_GONE = object()
_gate = _Gate()


def use_tracer_provider(provider: TracerProvider | None) -> None:
    """Record sagaz's spans with ``provider`` instead of OpenTelemetry's global one
    (``None``: the global one again).

    >>> from opentelemetry.sdk.trace import TracerProvider  # doctest: +SKIP
    >>> use_tracer_provider(TracerProvider())  # doctest: +SKIP
    """
    _gate.override = provider


def recorder() -> SpanRecorder | None:
    """The :class:`SpanRecorder` when tracing is on, else ``None`` (extra not installed, or
    no tracer provider configured). Cheap: callers check it once per event or saga."""
    gate = _gate
    trace = gate.trace
    if trace is None:
        if gate.loaded:
            return None
        trace = gate.load()
        if trace is None:
            return None
    provider: object = gate.override
    if provider is None:
        # ``trace.get_tracer_provider()`` costs microseconds (it looks an environment
        # variable up each time), too much per event: read the global it returns, and call
        # it only when the global is gone (another OpenTelemetry) or the environment names
        # a provider for it to load
        provider = getattr(trace, "_TRACER_PROVIDER", _GONE)
        if provider is None:
            if not gate.from_environment:
                return None
            provider = trace.get_tracer_provider()
        elif provider is _GONE:
            provider = trace.get_tracer_provider()
    if provider is not gate.provider:
        return gate.adopt(trace, cast("TracerProvider", provider))
    return gate.recorder


def current_context() -> Context | None:
    """The caller's current context while tracing is on (what ``fire_event`` continues)."""
    if recorder() is None:
        return None
    from opentelemetry import context

    return context.get_current()


def outgoing_headers() -> dict[str, str]:
    """The current trace context as message headers (``{}`` while tracing is off)."""
    if recorder() is None:
        return {}
    from opentelemetry import propagate

    headers: dict[str, str] = {}
    propagate.inject(headers)
    return headers


class _HeaderGetter:
    """Reads a propagator's fields from ``EventMeta.headers``, in any case (HTTP lower-cases
    header names, a Kafka or SQS producer may not)."""

    def get(self, carrier: Mapping[str, str], key: str) -> list[str] | None:
        value = carrier.get(key)
        if value is None:
            lowered = key.lower()
            value = next((v for k, v in carrier.items() if k.lower() == lowered), None)
        return None if value is None else [value]

    def keys(self, carrier: Mapping[str, str]) -> list[str]:
        return list(carrier)


# duck-typed: subclassing Getter would import OpenTelemetry with this module
_GETTER = cast("Getter[Mapping[str, str]]", _HeaderGetter())

#: admission outcomes that end an event's trace as an error
_ERROR_OUTCOMES = frozenset({"invalid", "rejected"})


class SpanRecorder:
    """Makes sagaz's spans with one tracer; :func:`recorder` hands it out while tracing is on.

    The pipeline and the saga executor use it; it is not needed to turn tracing on."""

    __slots__ = ("tracer",)

    def __init__(self, tracer: Tracer) -> None:
        self.tracer = tracer

    @contextmanager
    def admission(self, trigger_id: str, delivery: Delivery) -> Iterator[Span]:
        """The span of admitting ``delivery``; sets ``delivery.trace_context`` to the event's
        context, which the saga span continues."""
        from opentelemetry import context, propagate, trace

        meta = delivery.meta
        parent = propagate.extract(meta.headers, context=delivery.trace_context, getter=_GETTER)
        with self.tracer.start_as_current_span(
            f"sagaz.admit {trigger_id}",
            context=parent,
            kind=trace.SpanKind.CONSUMER,
            attributes=_event_attributes(trigger_id, delivery),
        ) as span:
            continued = trace.get_current_span(parent).get_span_context().is_valid
            # no context came with the event: its saga joins the trace admission started
            delivery.trace_context = parent if continued else context.get_current()
            yield span

    @staticmethod
    def admitted(span: Span, result: AdmissionResult) -> None:
        """Record admission's answer on its span."""
        from opentelemetry.trace import StatusCode

        span.set_attribute("sagaz.admission.outcome", result.outcome.value)
        if result.reason is not None:
            span.set_attribute("sagaz.admission.reason", result.reason.value)
        if result.saga_id is not None:
            span.set_attribute("sagaz.saga.id", result.saga_id)
        if result.outcome.value in _ERROR_OUTCOMES:
            span.set_status(StatusCode.ERROR, result.error)

    @contextmanager
    def saga(
        self,
        saga_name: str,
        saga_id: str,
        *,
        parent: Context | None,
        trigger_id: str | None,
        delivery: Delivery | None,
    ) -> Iterator[Span]:
        """The span of one saga run; ``parent`` ``None``: the current context."""
        attributes = _event_attributes(trigger_id, delivery)
        attributes["sagaz.saga.name"] = saga_name
        attributes["sagaz.saga.id"] = saga_id
        with self.tracer.start_as_current_span(
            f"sagaz.saga {saga_name}", context=parent, attributes=attributes
        ) as span:
            try:
                yield span
            except asyncio.CancelledError:
                span.set_attribute("sagaz.saga.status", "interrupted")
                raise

    @staticmethod
    def ended(span: Span, result: SagaResult) -> None:
        """Record a saga run's result on its span."""
        from opentelemetry.trace import StatusCode

        span.set_attribute("sagaz.saga.status", result.status.value)
        span.set_attribute("sagaz.saga.attempt", result.attempt)
        if not result.succeeded:
            span.set_status(StatusCode.ERROR, result.error)

    @contextmanager
    def step(self, name: str, *, compensation: bool = False) -> Iterator[Span]:
        """The span of a step (or of its compensation), a child of the current (saga) span."""
        kind = "compensate" if compensation else "step"
        with self.tracer.start_as_current_span(
            f"sagaz.{kind} {name}", attributes={"sagaz.step.name": name}
        ) as span:
            yield span

    @staticmethod
    def failed_try(error: BaseException, try_no: int) -> None:
        """Record a failed try that will be retried on the current step span."""
        from opentelemetry import trace

        trace.get_current_span().record_exception(error, attributes={"sagaz.try": try_no})

    @staticmethod
    def failed(span: Span, description: str) -> None:
        """Mark ``span`` failed (a compensation that gave up: it returns, never raises)."""
        from opentelemetry.trace import StatusCode

        span.set_status(StatusCode.ERROR, description)


def _event_attributes(trigger_id: str | None, delivery: Delivery | None) -> dict[str, str]:
    attributes: dict[str, str] = {}
    if trigger_id is not None:
        attributes["sagaz.trigger.id"] = trigger_id
    if delivery is not None:
        meta = delivery.meta
        attributes["sagaz.source"] = meta.source
        if meta.message_id is not None:
            attributes["messaging.message.id"] = meta.message_id
        if meta.topic is not None:
            attributes["messaging.destination.name"] = meta.topic
    return attributes
