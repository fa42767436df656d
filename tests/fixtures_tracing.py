"""OpenTelemetry fixtures: ``spans``, an in-memory exporter that records what sagaz traces.

The SDK's global tracer provider can be set once per process, so the fixture never sets it:
it hands sagaz a provider of the test's own (``sagaz.tracing.use_tracer_provider``) and takes
it back after, so every other test runs with tracing off, as an app without the extra does.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from sagaz import tracing

__all__ = ["named", "one", "span_id_of", "spans", "trace_id_of"]


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on for this test; ``spans.get_finished_spans()`` are the spans that ended."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_tracer_provider(provider)
    try:
        yield exporter
    finally:
        tracing.use_tracer_provider(None)
        provider.shutdown()


def named(exporter: InMemorySpanExporter, prefix: str) -> list[ReadableSpan]:
    """The finished spans whose name starts with ``prefix``, in the order they ended."""
    return [s for s in exporter.get_finished_spans() if s.name.startswith(prefix)]


def one(found: Sequence[ReadableSpan]) -> ReadableSpan:
    """The only span of ``found`` (fails naming them all otherwise)."""
    assert len(found) == 1, [s.name for s in found]
    return found[0]


def trace_id_of(traceparent: str) -> int:
    """The trace id of a W3C ``traceparent`` (``00-<trace id>-<span id>-<flags>``)."""
    version, trace_id, span_id, flags = traceparent.split("-")
    assert (version, len(trace_id), len(span_id), len(flags)) == ("00", 32, 16, 2), traceparent
    return int(trace_id, 16)


def span_id_of(traceparent: str) -> int:
    """The parent span id a ``traceparent`` names."""
    return int(traceparent.split("-")[2], 16)
