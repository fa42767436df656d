"""In-process counters of the pipeline (exported to Prometheus by the metrics extra)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

__all__ = ["EngineMetrics"]


class _Counts(Counter[str]):
    """A ``Counter`` whose ``counts[key] += 1`` stores with ``dict``'s own C code.

    ``Counter`` defines ``__delitem__`` in Python, and item assignment shares its slot: each
    store then goes through Python's slot dispatch (about 750 instructions more than a dict,
    a few times per event). Deleting a key that is not there raises ``KeyError`` here, as
    for a dict (nothing deletes from the engine's counters)."""

    __delitem__ = dict.__delitem__  # type: ignore[assignment]  # (typeshed: str keys)

    def __repr__(self) -> str:
        return repr(Counter(self))


@dataclass(slots=True)
class EngineMetrics:
    """Counters and gauges of one engine. Cheap: plain integers, no locks (one event loop)."""

    received: Counter[str] = field(default_factory=_Counts)  # by trigger id
    accepted: Counter[str] = field(default_factory=_Counts)
    reasons: Counter[str] = field(default_factory=_Counts)  # filtered, duplicate, dropped_*...
    #: the same events by (trigger id, reason): see :meth:`not_started_by`
    not_started: Counter[tuple[str, str]] = field(default_factory=Counter)
    completed: Counter[str] = field(default_factory=_Counts)
    compensated: Counter[str] = field(default_factory=_Counts)
    failed: Counter[str] = field(default_factory=_Counts)
    cancelled: Counter[str] = field(default_factory=_Counts)  # by an operator
    retried: Counter[str] = field(default_factory=_Counts)
    #: runs stopped because another worker took their saga over (their lease had expired)
    lease_lost: Counter[str] = field(default_factory=_Counts)
    dead_lettered: Counter[str] = field(default_factory=_Counts)
    source_errors: Counter[str] = field(default_factory=_Counts)
    in_flight: int = 0
    max_in_flight: int = 0
    start_latencies: list[float] = field(default_factory=list)  # seconds, bounded sample
    _latency_limit: int = 100_000

    def count_not_started(self, trigger_id: str, reason: str) -> None:
        """An event of ``trigger_id`` did not become a saga, for ``reason``."""
        self.reasons[reason] += 1
        self.not_started[trigger_id, reason] += 1

    def not_started_by(self, trigger_id: str) -> dict[str, int]:
        """The events of ``trigger_id`` that did not become a saga, by reason (sorted)."""
        return {
            reason: count
            for (trigger, reason), count in sorted(self.not_started.items())
            if trigger == trigger_id and count
        }

    def started(self, latency: float) -> None:
        """A saga started ``latency`` seconds after its event was accepted."""
        self.in_flight += 1
        if self.in_flight > self.max_in_flight:
            self.max_in_flight = self.in_flight
        if len(self.start_latencies) < self._latency_limit:
            self.start_latencies.append(latency)

    def finished(self) -> None:
        """A saga left the in-flight set."""
        self.in_flight -= 1

    def snapshot(self) -> dict[str, object]:
        """A plain dict of every counter (for logs, ``/metrics`` and tests)."""
        return {
            "received": sum(self.received.values()),
            "accepted": sum(self.accepted.values()),
            "reasons": dict(self.reasons),
            "completed": sum(self.completed.values()),
            "compensated": sum(self.compensated.values()),
            "failed": sum(self.failed.values()),
            "cancelled": sum(self.cancelled.values()),
            "retried": sum(self.retried.values()),
            "lease_lost": sum(self.lease_lost.values()),
            "dead_lettered": sum(self.dead_lettered.values()),
            "source_errors": sum(self.source_errors.values()),
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
        }
