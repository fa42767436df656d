"""Test helpers: ``TriggerTestHarness``, ``FakeClock``, ``eventually``/``continually`` and the
pytest plugin."""

from __future__ import annotations

from sagaz.testing.clock import FakeClock
from sagaz.testing.harness import TriggerTestHarness
from sagaz.testing.waiting import continually, eventually

__all__ = ["FakeClock", "TriggerTestHarness", "continually", "eventually"]
