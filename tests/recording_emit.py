"""Drive a :class:`sagaz.abc.Source` without the engine: a recording ``emit`` and helpers.

>>> emit = RecordingEmit(auto_ack=True)            # doctest: +SKIP
>>> async with consuming(source, emit):            # doctest: +SKIP
...     await emit.wait_for(10)
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator
from typing import Any

from sagaz.abc import Source, SourceContext
from sagaz.clock import SystemClock
from sagaz.config import TriggerConfig
from sagaz.events import AdmissionOutcome, AdmissionResult, Delivery
from sagaz.storage.memory import MemorySagaStore
from sagaz.testing import eventually

__all__ = ["RecordingEmit", "consuming", "source_context", "stop_intake"]


class RecordingEmit:
    """An ``emit`` that records every delivery and answers ``ACCEPTED``.

    With ``auto_ack=True`` each delivery is acked as soon as it is emitted (as if its saga
    completed at once); otherwise the test acks/nacks ``deliveries`` itself.
    """

    def __init__(self, *, auto_ack: bool = False) -> None:
        self.auto_ack = auto_ack
        self.deliveries: list[Delivery] = []

    async def __call__(self, delivery: Delivery) -> AdmissionResult:
        self.deliveries.append(delivery)
        if self.auto_ack:
            await delivery.ack()
        return AdmissionResult(AdmissionOutcome.ACCEPTED, saga_id=delivery.identity)

    @property
    def identities(self) -> list[str]:
        """Identities of the deliveries, in arrival order (duplicates kept)."""
        return [d.identity for d in self.deliveries]

    @property
    def payloads(self) -> list[Any]:
        """Payloads of the deliveries, in arrival order (duplicates kept)."""
        return [d.payload for d in self.deliveries]

    async def wait_for(self, count: int, *, within: float = 10.0) -> list[Delivery]:
        """Wait until at least ``count`` deliveries arrived; return them all."""
        await eventually(
            lambda: len(self.deliveries) >= count,
            within=within,
            what=f"{count} deliveries (got {len(self.deliveries)})",
        )
        return list(self.deliveries)


def source_context(
    trigger_id: str = "test-saga.on_event",
    errors: list[BaseException] | None = None,
    **config: Any,
) -> SourceContext:
    """A :class:`SourceContext` as the engine would build it; reported errors go to ``errors``.

    ``config`` holds ``TriggerConfig`` fields; its ``dead_letter_topic`` becomes the context's,
    as for a trigger without a ``dead_letter_topic`` of its own.
    """
    reported = errors if errors is not None else []

    async def report_error(exc: BaseException) -> None:
        reported.append(exc)

    trigger_config = TriggerConfig(**config)
    return SourceContext(
        trigger_id=trigger_id,
        saga_name=trigger_id.split(".", 1)[0],
        config=trigger_config,
        store=MemorySagaStore(),
        clock=SystemClock(),
        worker_id="test-worker",
        report_error=report_error,
        dead_letter_topic=trigger_config.dead_letter_topic,
    )


@contextlib.asynccontextmanager
async def consuming(source: Source, emit: RecordingEmit) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``source.run(emit)`` in a task; on exit cancel it (stop intake), then ``stop()``."""
    task = asyncio.create_task(source.run(emit))
    try:
        yield task
    finally:
        await stop_intake(task)
        await source.stop()


#: seconds a cancelled ``run()`` has to end before :func:`stop_intake` says where it is stuck
STOP_WITHIN = 30.0


async def stop_intake(task: asyncio.Task[None]) -> None:
    """Cancel a ``run()`` task and wait for it, as the engine does at shutdown; raises what
    it raised, or an :class:`AssertionError` with its stack when it does not end within
    :data:`STOP_WITHIN` (rather than hanging the test until its timeout; the wait does not
    swallow a cancel of the test itself either)."""
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=STOP_WITHIN)
    if not done:
        stack = io.StringIO()
        task.print_stack(file=stack)
        raise AssertionError(
            f"run() did not end within {STOP_WITHIN:.0f} s of its cancel:\n{stack.getvalue()}"
        )
    if not task.cancelled() and task.exception() is not None:
        await task  # raises it
