"""Prometheus metrics of a running engine (the ``metrics`` extra: ``pip install "sagaz[metrics]"``).

The numbers are read from the engine's in-process counters when Prometheus scrapes, so they
cost nothing per event. Two ways to expose them:

* the webhook server answers ``GET /metrics`` while an engine with webhook triggers runs;
* or register the collector in your own registry:

>>> from prometheus_client import REGISTRY  # doctest: +SKIP
>>> REGISTRY.register(EngineCollector(engine))  # doctest: +SKIP

Every name starts with ``sagaz_``; per-trigger series carry a ``trigger`` label
(``"{saga_name}.{method}"``): the event counters, ``sagaz_queue_depth{trigger}`` (sum it for
the engine's queue) and ``sagaz_events_not_started{trigger, reason}``, whose ``reason`` is
``filtered``, ``duplicate``, ``dropped_oldest``, ``dropped_newest``, ``rejected``,
``overlap_skipped``, ``invalid`` or ``paused``. ``sagaz_trigger_paused{trigger}`` is 1 while a
trigger is paused in the engine.

Sources add their own counters (:meth:`sagaz.abc.Source.counters`). With webhook triggers,
``sagaz_webhook_requests_rejected_total{reason, trigger}`` counts the
requests the webhook server refused (reasons in
:class:`~sagaz.sources.webhook.rejections.RejectionReason`; ``trigger`` is empty when the
request reached no trigger) and ``sagaz_webhook_invalid_dead_letters_capped_total{trigger}``
the invalid requests not dead-lettered because the trigger's ``dead_letter_invalid_limit``
was reached.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from sagaz._imports import require_extra

if TYPE_CHECKING:
    from sagaz.engine.engine import TriggerEngine

__all__ = ["EngineCollector", "render"]

#: (metric name, help, EngineMetrics counter) of the per-trigger counters
_PER_TRIGGER = (
    ("sagaz_events_received", "Events handed to the pipeline by the sources.", "received"),
    ("sagaz_events_accepted", "Events durably accepted: a saga runs for each.", "accepted"),
    ("sagaz_sagas_completed", "Saga runs that completed.", "completed"),
    ("sagaz_sagas_compensated", "Saga runs that ended compensated.", "compensated"),
    ("sagaz_sagas_failed", "Saga runs whose compensation failed.", "failed"),
    ("sagaz_sagas_cancelled", "Saga runs an operator cancelled (sagaz sagas cancel).", "cancelled"),
    ("sagaz_saga_retries", "Compensated sagas started again as a new attempt.", "retried"),
    (
        "sagaz_sagas_lease_lost",
        "Saga runs stopped because another worker took the saga over (lease expired).",
        "lease_lost",
    ),
    (
        "sagaz_dead_letters",
        "Events dead-lettered (invalid, rejected, retries exhausted).",
        "dead_lettered",
    ),
    ("sagaz_source_errors", "Errors reported by sources, acks and the store.", "source_errors"),
)


class EngineCollector:
    """A ``prometheus_client`` collector of one :class:`~sagaz.engine.engine.TriggerEngine`."""

    def __init__(self, engine: TriggerEngine) -> None:
        require_extra("metrics", "prometheus_client")
        self.engine = engine

    def describe(self) -> list[Any]:
        """Nothing up front: the series depend on the triggers (collected at scrape time)."""
        return []

    def collect(self) -> Iterator[Any]:
        """The engine's counters and gauges as Prometheus metric families."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        state = self.engine.state
        if state is None:  # never started
            return
        metrics = state.metrics
        triggers = sorted(self.engine.triggers)
        for name, documentation, attribute in _PER_TRIGGER:
            family = CounterMetricFamily(name, documentation, labels=["trigger"])
            counts = getattr(metrics, attribute)
            for trigger_id in triggers:
                family.add_metric([trigger_id], counts[trigger_id])
            yield family
        reasons = CounterMetricFamily(
            "sagaz_events_not_started",
            "Events that did not become a saga, by trigger and reason.",
            labels=["trigger", "reason"],
        )
        for (trigger_id, reason), count in sorted(metrics.not_started.items()):
            reasons.add_metric([trigger_id, reason], count)
        yield reasons
        depth = GaugeMetricFamily(
            "sagaz_queue_depth",
            "Events accepted and waiting to start, by trigger (sum them for the engine's "
            "queue, bounded by queue_size).",
            labels=["trigger"],
        )
        for trigger_id in triggers:
            depth.add_metric([trigger_id], state.queue.depth(trigger_id))
        yield depth
        yield GaugeMetricFamily(
            "sagaz_sagas_in_flight", "Sagas running now.", value=metrics.in_flight
        )
        yield GaugeMetricFamily(
            "sagaz_sagas_in_flight_max",
            "The most sagas that ran at once since the engine started.",
            value=metrics.max_in_flight,
        )
        paused = GaugeMetricFamily(
            "sagaz_trigger_paused",
            "1 while the trigger is paused in this engine (sagaz triggers pause, or a poll "
            "trigger under enable_trigger_scheduling=False).",
            labels=["trigger"],
        )
        for trigger_id in triggers:
            paused.add_metric([trigger_id], 1 if self.engine.triggers[trigger_id].paused else 0)
        yield paused
        yield GaugeMetricFamily(
            "sagaz_store_available",
            "1 while the store answers; 0 during an outage (intake paused, nothing acked).",
            value=1 if state.outage.available else 0,
        )
        yield CounterMetricFamily(
            "sagaz_store_outages",
            "Times the store became unavailable since the engine started.",
            value=state.outage.outages,
        )
        yield from self._source_counters()

    def _source_counters(self) -> Iterator[Any]:
        """The sources' own counters (:meth:`sagaz.abc.Source.counters`), each name once."""
        from prometheus_client.core import CounterMetricFamily

        seen: set[str] = set()
        for source in self.engine.sources.values():
            for counter in source.counters():
                if counter.name in seen:  # a resource several sources share
                    continue
                seen.add(counter.name)
                family = CounterMetricFamily(
                    counter.name, counter.documentation, labels=list(counter.labels)
                )
                for labels, count in sorted(counter.values.items()):
                    family.add_metric(list(labels), count)
                yield family


def render(engine: TriggerEngine) -> tuple[bytes, str]:
    """The engine's metrics in the Prometheus text format, and its content type."""
    require_extra("metrics", "prometheus_client")
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(EngineCollector(engine))
    return generate_latest(registry), CONTENT_TYPE_LATEST
