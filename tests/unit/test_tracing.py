"""Tracing (``sagaz.tracing``): spans of admission, sagas, steps and compensations; the trace
context an event arrives with (headers, the caller of ``fire_event``) continued; the step's
context carried into outbox messages; nothing at all without the extra or without a tracer
provider. The Kafka end-to-end trace is ``tests/integration/test_tracing.py``."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import sagaz
from sagaz import (
    EventMeta,
    OutboxSagaListener,
    Saga,
    SagaContext,
    SagaStatus,
    TriggerConfig,
    WebhookRequest,
    action,
    compensate,
    tracing,
    trigger,
)
from sagaz.engine.engine import TriggerEngine
from sagaz.records import OutboxMessage
from sagaz.storage.memory import MemorySagaStore
from sagaz.testing import eventually
from tests.fixtures_tracing import named, one, span_id_of, trace_id_of

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
REMOTE_TRACE, REMOTE_SPAN = trace_id_of(TRACEPARENT), span_id_of(TRACEPARENT)


class Checkout(Saga):
    """Two steps; the second emits one outbox message."""

    saga_name = "tracing-checkout"
    listeners = [OutboxSagaListener()]

    @action("reserve")
    async def reserve(self, ctx: SagaContext) -> dict[str, Any]:
        return {"reserved": True}

    @action("announce")
    async def announce(self, ctx: SagaContext) -> None:
        ctx.emit("orders", {"order": ctx["order"]}, ctx.get("headers"))


class Failing(Saga):
    """``charge`` fails both of its tries; ``reserve`` is compensated."""

    saga_name = "tracing-failing"

    @action("reserve")
    async def reserve(self, ctx: SagaContext) -> None:
        return None

    @compensate("reserve")
    async def release(self, ctx: SagaContext) -> None:
        return None

    @action("charge", max_retries=1)
    async def charge(self, ctx: SagaContext) -> None:
        raise RuntimeError("card declined")


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def span_id(span: ReadableSpan) -> int:
    context = span.get_span_context()
    assert context is not None
    return context.span_id


def trace_of(span: ReadableSpan) -> int:
    context = span.get_span_context()
    assert context is not None
    return context.trace_id


async def outbox(store: MemorySagaStore) -> list[OutboxMessage]:
    return await store.fetch_outbox()


# -- a saga run --------------------------------------------------------------------------------
async def test_a_saga_run_is_one_trace_and_its_outbox_messages_carry_it(
    spans: InMemorySpanExporter,
) -> None:
    store = MemorySagaStore()
    result = await Checkout().run({"order": 7}, store=store)

    assert result.succeeded
    saga = one(named(spans, "sagaz.saga"))
    reserve, announce = named(spans, "sagaz.step")
    assert saga.name == "sagaz.saga tracing-checkout"
    assert (reserve.name, announce.name) == ("sagaz.step reserve", "sagaz.step announce")
    assert saga.parent is None  # run outside any span: a trace of its own
    assert {trace_of(s) for s in (saga, reserve, announce)} == {trace_of(saga)}
    assert parent_of(reserve) == parent_of(announce) == span_id(saga)
    assert saga.attributes == {
        "sagaz.saga.name": "tracing-checkout",
        "sagaz.saga.id": result.saga_id,
        "sagaz.saga.status": "completed",
        "sagaz.saga.attempt": 1,
    }
    assert saga.status.status_code is StatusCode.UNSET
    assert announce.attributes == {"sagaz.step.name": "announce"}
    emitted, completed = await outbox(store)
    assert emitted.topic == "orders" and completed.topic == "saga.completed"
    # the step's message names the step span, the listener's the saga span
    assert trace_id_of(emitted.headers["traceparent"]) == trace_of(saga)
    assert span_id_of(emitted.headers["traceparent"]) == span_id(announce)
    assert span_id_of(completed.headers["traceparent"]) == span_id(saga)


async def test_a_saga_run_inside_a_span_continues_that_trace(
    spans: InMemorySpanExporter,
) -> None:
    tracer = trace.get_tracer("test", tracer_provider=tracing._gate.override)
    with tracer.start_as_current_span("request") as request:
        await Checkout().run({"order": 1}, store=MemorySagaStore())

    saga = one(named(spans, "sagaz.saga"))
    assert trace_of(saga) == request.get_span_context().trace_id
    assert parent_of(saga) == request.get_span_context().span_id


class Fanned(Saga):
    """Two independent steps (run concurrently, as tasks), then one that needs both."""

    saga_name = "tracing-fanned"

    @action("left")
    async def left(self, ctx: SagaContext) -> None:
        ctx.emit("sides", {"side": "left"})

    @action("right")
    async def right(self, ctx: SagaContext) -> None:
        return None

    @action("join", depends_on=["left", "right"])
    async def join(self, ctx: SagaContext) -> None:
        return None


async def test_the_steps_of_a_dag_are_children_of_the_saga_span(
    spans: InMemorySpanExporter,
) -> None:
    store = MemorySagaStore()
    await Fanned().run({}, store=store)

    saga = one(named(spans, "sagaz.saga"))
    steps = {s.name: s for s in named(spans, "sagaz.step")}
    assert sorted(steps) == ["sagaz.step join", "sagaz.step left", "sagaz.step right"]
    assert {parent_of(s) for s in steps.values()} == {span_id(saga)}
    [message] = await outbox(store)
    assert span_id_of(message.headers["traceparent"]) == span_id(steps["sagaz.step left"])


async def test_headers_given_to_emit_win_over_the_trace_context(
    spans: InMemorySpanExporter,
) -> None:
    store = MemorySagaStore()
    mine = {"traceparent": TRACEPARENT, "tenant": "acme"}
    await Checkout().run({"order": 1, "headers": mine}, store=store)

    emitted, _ = await outbox(store)
    assert emitted.headers == mine


async def test_a_failed_step_and_the_compensation_are_recorded(
    spans: InMemorySpanExporter,
) -> None:
    result = await Failing().run({}, store=MemorySagaStore())

    assert result.status is SagaStatus.COMPENSATED
    saga = one(named(spans, "sagaz.saga"))
    charge = one(named(spans, "sagaz.step charge"))
    release = one(named(spans, "sagaz.compensate"))
    assert release.name == "sagaz.compensate reserve"
    assert parent_of(charge) == parent_of(release) == span_id(saga)
    assert charge.status.status_code is StatusCode.ERROR
    # the retried try is an event, the last one the span's own error
    assert [e.attributes.get("sagaz.try") for e in charge.events if e.attributes] == [1, None]
    assert [e.attributes["exception.message"] for e in charge.events if e.attributes] == [
        "card declined",
        "card declined",
    ]
    assert release.status.status_code is StatusCode.UNSET
    assert saga.status.status_code is StatusCode.ERROR
    assert saga.status.description == result.error
    assert saga.attributes["sagaz.saga.status"] == "compensated"


class Stuck(Saga):
    """``charge`` fails; undoing ``reserve`` fails both of its tries."""

    saga_name = "tracing-stuck"

    @action("reserve")
    async def reserve(self, ctx: SagaContext) -> None:
        return None

    @compensate("reserve", max_retries=1)
    async def release(self, ctx: SagaContext) -> None:
        raise RuntimeError("warehouse down")

    @action("charge")
    async def charge(self, ctx: SagaContext) -> None:
        raise RuntimeError("card declined")


async def test_a_failed_compensation_is_an_error_span(spans: InMemorySpanExporter) -> None:
    result = await Stuck().run({}, store=MemorySagaStore())

    assert result.status is SagaStatus.FAILED
    saga, release = one(named(spans, "sagaz.saga")), one(named(spans, "sagaz.compensate"))
    assert release.status.status_code is StatusCode.ERROR
    assert release.status.description == result.compensation_errors["reserve"]
    # the first try was retried: an event; the last one is the span's status
    assert [e.attributes.get("sagaz.try") for e in release.events if e.attributes] == [1]
    assert saga.attributes is not None and saga.attributes["sagaz.saga.status"] == "failed"
    assert saga.status.status_code is StatusCode.ERROR


# -- events through the engine -----------------------------------------------------------------
def define_orders() -> type[Saga]:
    class Orders(Saga):
        saga_name = "tracing-orders"

        @trigger(source="memory", channel="tracing-orders")
        def on_order(self, event: dict[str, Any]) -> dict[str, Any] | None:
            if event.get("skip"):
                return None
            if event.get("bad"):
                raise sagaz.InvalidEventError("no such order")
            return {"order": event["id"]}

        @action("reserve")
        async def reserve(self, ctx: SagaContext) -> None:
            ctx.emit("reserved", {"order": ctx["order"]})

    return Orders


async def test_an_event_without_a_context_is_one_trace_started_by_its_admission(
    spans: InMemorySpanExporter,
) -> None:
    define_orders()
    store = MemorySagaStore()
    async with TriggerEngine(TriggerConfig(), store) as engine:
        [saga_id] = await engine.fire("tracing-orders", {"id": 1})
        assert await engine.wait_for(saga_id, timeout=10)

    admit = one(named(spans, "sagaz.admit"))
    saga = one(named(spans, "sagaz.saga"))
    step = one(named(spans, "sagaz.step"))
    assert admit.name == "sagaz.admit tracing-orders.on_order"
    assert admit.kind is SpanKind.CONSUMER
    assert admit.parent is None
    assert parent_of(saga) == span_id(admit)
    assert parent_of(step) == span_id(saga)
    assert admit.attributes == {
        "sagaz.trigger.id": "tracing-orders.on_order",
        "sagaz.source": "memory",
        "messaging.destination.name": "tracing-orders",
        "sagaz.admission.outcome": "accepted",
        "sagaz.saga.id": saga_id,
    }
    assert saga.attributes is not None
    assert saga.attributes["sagaz.trigger.id"] == "tracing-orders.on_order"
    [message] = await outbox(store)
    assert trace_id_of(message.headers["traceparent"]) == trace_of(admit)


async def test_fire_event_continues_the_callers_span(spans: InMemorySpanExporter) -> None:
    define_orders()
    tracer = trace.get_tracer("test", tracer_provider=tracing._gate.override)
    async with TriggerEngine(TriggerConfig(), MemorySagaStore()) as engine:
        with tracer.start_as_current_span("caller") as caller:
            [saga_id] = await engine.fire("tracing-orders", {"id": 1})
        assert await engine.wait_for(saga_id, timeout=10)

    context = caller.get_span_context()
    admit, saga = one(named(spans, "sagaz.admit")), one(named(spans, "sagaz.saga"))
    assert trace_of(admit) == trace_of(saga) == context.trace_id
    assert parent_of(admit) == parent_of(saga) == context.span_id


async def test_admission_continues_a_traceparent_header_of_any_case(
    spans: InMemorySpanExporter,
) -> None:
    define_orders()
    meta = EventMeta(source="kafka", message_id="orders:0:5", headers={"TraceParent": TRACEPARENT})
    async with TriggerEngine(TriggerConfig(), MemorySagaStore()) as engine:
        admitted = await engine.dispatch("tracing-orders.on_order", {"id": 1}, meta=meta)
        assert admitted.saga_id is not None
        assert await engine.wait_for(admitted.saga_id, timeout=10)

    admit, saga = one(named(spans, "sagaz.admit")), one(named(spans, "sagaz.saga"))
    step = one(named(spans, "sagaz.step"))
    assert {trace_of(admit), trace_of(saga), trace_of(step)} == {REMOTE_TRACE}
    assert parent_of(admit) == parent_of(saga) == REMOTE_SPAN  # siblings under the message
    assert admit.parent is not None and admit.parent.is_remote
    assert saga.attributes is not None
    assert saga.attributes["messaging.message.id"] == "orders:0:5"
    assert saga.attributes["sagaz.source"] == "kafka"


async def test_admission_records_an_event_that_does_not_become_a_saga(
    spans: InMemorySpanExporter,
) -> None:
    define_orders()
    async with TriggerEngine(TriggerConfig(), MemorySagaStore()) as engine:
        await engine.fire("tracing-orders", {"id": 1, "skip": True})
        await engine.fire("tracing-orders", {"id": 2, "bad": True})

    filtered, invalid = named(spans, "sagaz.admit")
    assert filtered.attributes is not None and invalid.attributes is not None
    assert filtered.attributes["sagaz.admission.outcome"] == "filtered"
    assert filtered.attributes["sagaz.admission.reason"] == "filtered"
    assert filtered.status.status_code is StatusCode.UNSET
    assert invalid.attributes["sagaz.admission.outcome"] == "invalid"
    assert invalid.status.status_code is StatusCode.ERROR
    assert invalid.status.description is not None
    assert "no such order" in invalid.status.description
    assert named(spans, "sagaz.saga") == []


async def test_a_webhook_request_with_traceparent_continues_its_trace(
    spans: InMemorySpanExporter,
) -> None:
    class Hooks(Saga):
        saga_name = "tracing-hooks"

        @trigger(source="webhook", path="/traced")
        def on_request(self, request: WebhookRequest) -> dict[str, Any]:
            return {"order": request.json()["id"]}

        @action("reserve")
        async def reserve(self, ctx: SagaContext) -> None:
            return None

    app = sagaz.webhook_app()  # mounted here: no port of its own
    engine = await sagaz.start_triggers(TriggerConfig(), MemorySagaStore())
    try:
        await eventually(lambda: app.ready, what="the webhook routes to be active")
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            response = await client.post(
                "/traced",
                json={"id": 1},
                headers={"traceparent": TRACEPARENT, "tracestate": "vendor=x"},
            )
        assert response.status_code == 202, response.text
        assert await engine.wait_for(response.json()["saga_id"], timeout=10)
    finally:
        await sagaz.stop_triggers()

    admit, saga = one(named(spans, "sagaz.admit")), one(named(spans, "sagaz.saga"))
    assert {trace_of(admit), trace_of(saga)} == {REMOTE_TRACE}
    assert parent_of(admit) == parent_of(saga) == REMOTE_SPAN
    assert saga.attributes is not None and saga.attributes["sagaz.source"] == "webhook"
    assert dict(saga.context.trace_state) == {"vendor": "x"}  # type: ignore[union-attr]


# -- off: no extra, no provider ----------------------------------------------------------------
async def test_without_the_extra_nothing_is_traced(
    spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tracing, "_gate", tracing._Gate())
    monkeypatch.setitem(sys.modules, "opentelemetry.trace", None)  # its import now fails
    define_orders()
    store = MemorySagaStore()
    tracing.use_tracer_provider(TracerProvider())  # a provider, but no OpenTelemetry

    assert tracing.recorder() is None
    async with TriggerEngine(TriggerConfig(), store) as engine:
        [saga_id] = await engine.fire("tracing-orders", {"id": 1})
        assert await engine.wait_for(saga_id, timeout=10)

    assert tracing.recorder() is None
    assert tracing.outgoing_headers() == {}
    assert tracing.current_context() is None
    [message] = await outbox(store)
    assert message.headers == {}
    assert spans.get_finished_spans() == ()


async def test_without_a_tracer_provider_nothing_is_traced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tracing, "_gate", tracing._Gate())
    # nothing in the test process sets the global provider: it is OpenTelemetry's proxy
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    store = MemorySagaStore()

    assert tracing.recorder() is None
    await Checkout().run({"order": 1}, store=store)
    emitted, completed = await outbox(store)

    assert emitted.headers == completed.headers == {}


SET_LATER = """
import asyncio
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from sagaz import Saga, action, tracing
from sagaz.storage.memory import MemorySagaStore

class Once(Saga):
    @action("one")
    async def one(self, ctx):
        ctx.emit("t", {})

async def headers():
    store = MemorySagaStore()
    await Once().run({}, store=store)
    return sorted((await store.fetch_outbox())[0].headers)

print(tracing.recorder() is None, asyncio.run(headers()))
trace.set_tracer_provider(TracerProvider())
print(tracing.recorder() is None, asyncio.run(headers()))
"""


@pytest.mark.parametrize(
    ("environment", "expected"),
    [
        ({}, "True []\nFalse ['traceparent']\n"),
        # the environment names the provider: traced from the first saga on
        ({"OTEL_PYTHON_TRACER_PROVIDER": "sdk_tracer_provider"}, "False ['traceparent']\n" * 2),
    ],
)
def test_a_global_provider_set_after_start_turns_tracing_on(
    environment: dict[str, str], expected: str
) -> None:
    # the global provider can be set once per process: in a process of its own
    done = subprocess.run(
        [sys.executable, "-c", SET_LATER],
        capture_output=True,
        text=True,
        env={**os.environ, **environment, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == expected


def test_importing_sagaz_and_its_engine_imports_no_opentelemetry() -> None:
    code = (
        "import sys, sagaz, sagaz.engine, sagaz.outbox\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert done.stdout == "[]\n"


# -- log fields --------------------------------------------------------------------------------
async def test_saga_and_dead_letter_log_lines_name_the_trigger_saga_and_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Payments(Saga):
        saga_name = "tracing-payments"

        @trigger(source="memory", channel="tracing-payments", max_retries=0)
        def on_payment(self, event: dict[str, Any]) -> dict[str, Any]:
            return dict(event)

        @action("charge")
        async def charge(self, ctx: SagaContext) -> None:
            if ctx["declined"]:
                raise RuntimeError("card declined")

    caplog.set_level(logging.DEBUG, logger="sagaz.engine")
    trigger_id = "tracing-payments.on_payment"
    async with TriggerEngine(TriggerConfig(), MemorySagaStore()) as engine:
        ids = {}
        for message_id, declined in (("m-ok", False), ("m-declined", True)):
            meta = EventMeta(source="memory", message_id=message_id)
            admitted = await engine.dispatch(trigger_id, {"declined": declined}, meta=meta)
            assert admitted.saga_id is not None
            ids[message_id] = admitted.saga_id
            await engine.wait_for(admitted.saga_id, timeout=10)

    def fields(record: logging.LogRecord) -> tuple[Any, ...]:
        return tuple(getattr(record, name, "-") for name in ("trigger", "saga_id", "message_id"))

    lines = {record.getMessage(): record for record in caplog.records}
    completed = lines[f"saga {ids['m-ok']} (tracing-payments, attempt 1) completed"]
    compensated = next(r for m, r in lines.items() if m.startswith(f"saga {ids['m-declined']}"))
    dead = next(r for m, r in lines.items() if m.startswith("dead-lettered an event"))
    assert fields(completed) == (trigger_id, ids["m-ok"], "m-ok")
    assert completed.levelno == logging.DEBUG
    assert fields(compensated) == (trigger_id, ids["m-declined"], "m-declined")
    assert compensated.levelno == logging.INFO
    assert "compensated: step 'charge' failed: RuntimeError: card declined" in (
        compensated.getMessage()
    )
    assert fields(dead) == (trigger_id, ids["m-declined"], "m-declined")
