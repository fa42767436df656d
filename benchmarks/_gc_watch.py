"""Garbage collections over a benchmark's window, counted with ``gc.callbacks``.

Only counts: the collector's settings are left as they are (a library must not change them,
and a benchmark of one must not either).
"""

from __future__ import annotations

import gc
import time
from typing import Any

__all__ = ["GcWatch"]


class GcWatch:
    """Collections per generation and the time spent in them, between ``start`` and ``stop``."""

    def __init__(self) -> None:
        self.collections = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self._began = 0.0
        self.tracked_before = 0
        self.tracked_after = 0

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        else:
            self.collections[info["generation"]] += 1
            self.seconds[info["generation"]] += time.perf_counter() - self._began

    def start(self) -> None:
        """Count from now on."""
        self.tracked_before = len(gc.get_objects())
        gc.callbacks.append(self._callback)

    def stop(self) -> None:
        """Stop counting."""
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)
        self.tracked_after = len(gc.get_objects())

    def per(self, events: int, per: int = 20_000) -> str:
        """``young/middle/full`` collections per ``per`` events, and their µs per event (all
        three, then each generation's); the objects the collector tracked at the start, and
        how many more at the end."""
        scaled = "/".join(f"{n * per / events:.0f}" for n in self.collections)
        each = "/".join(f"{s / events * 1e6:.1f}" for s in self.seconds)
        grown = self.tracked_after - self.tracked_before
        return (
            f"{scaled} per {per:,}; {sum(self.seconds) / events * 1e6:.1f} ({each}) µs; "
            f"tracked {self.tracked_before:,} {grown:+,}"
        )
