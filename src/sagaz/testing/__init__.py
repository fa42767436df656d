"""Test helpers: ``TriggerTestHarness``, ``FakeClock`` and the pytest plugin."""

from __future__ import annotations

from sagaz.testing.clock import FakeClock
from sagaz.testing.harness import TriggerTestHarness

__all__ = ["FakeClock", "TriggerTestHarness"]
