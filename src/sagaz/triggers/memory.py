"""``source="memory"``: in-process events sent with ``sagaz.fire_event(channel, event)``."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, ClassVar

from sagaz.abc import Emit, Source
from sagaz.events import AdmissionResult, Delivery
from sagaz.triggers.sources import SourceContext

__all__ = ["OPTIONS", "REQUIRED", "MemorySource", "create", "validate"]

OPTIONS = frozenset({"channel"})
REQUIRED = frozenset({"channel"})


def validate(options: Mapping[str, Any]) -> None:
    """``channel`` must be a non-empty string."""
    channel = options.get("channel")
    if not isinstance(channel, str) or not channel:
        raise ValueError(f"option channel={channel!r} must be a non-empty string")


class MemorySource(Source):
    """Receives events handed in by :func:`sagaz.fire_event`; nothing to consume."""

    kind: ClassVar[str] = "memory"

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self._emit: Emit | None = None
        self._ready = asyncio.Event()

    async def run(self, emit: Emit) -> None:
        """Hold ``emit`` until cancelled."""
        self._emit = emit
        self._ready.set()
        await asyncio.Event().wait()

    async def submit(self, delivery: Delivery) -> AdmissionResult:
        """Admit one in-process event."""
        await self._ready.wait()
        assert self._emit is not None
        return await self._emit(delivery)

    def describe(self) -> dict[str, Any]:
        """Kind and channel."""
        return {"kind": self.kind, "channel": self.channel}


def create(options: Mapping[str, Any], ctx: SourceContext) -> MemorySource:
    """Build the source of one memory trigger."""
    return MemorySource(str(options["channel"]))
