"""The dispatcher: a worker pool taking eligible events from the queue under the rate limits."""

from __future__ import annotations

import asyncio
import logging

from sagaz._aio import wait_event
from sagaz.engine.active_trigger import PipelineState
from sagaz.engine.runner import SagaRunner
from sagaz.engine.work_item import WorkItem

__all__ = ["Dispatcher"]

logger = logging.getLogger(__name__)


class Dispatcher:
    """A pool of ``max_concurrent_sagas`` workers taking eligible events from the queue,
    applying the global and per-trigger rate limits, and running them."""

    def __init__(self, state: PipelineState, runner: SagaRunner) -> None:
        self.state = state
        self.runner = runner
        self._workers: list[asyncio.Task[None]] = []
        self._current: dict[asyncio.Task[None], WorkItem] = {}
        #: set once no saga runs; made only while someone waits for that (on the memory store
        #: every saga runs alone, and an event set and cleared around each would cost more)
        self._idle: asyncio.Event | None = None
        #: the sagas of the events whose worker :meth:`stop` cancelled (running, or waiting
        #: for a rate-limit token): unfinished, given back by the engine's stop
        self.interrupted: list[str] = []
        #: set by the engine as its stop begins: a run that errs from then on is unfinished
        #: work of a graceful stop, given back with the cancelled ones
        self.stopping = False

    def start(self, size: int) -> None:
        """Start ``size`` workers."""
        self.stopping = False
        for n in range(size):
            self._workers.append(asyncio.create_task(self._work(), name=f"sagaz-worker-{n}"))

    @property
    def in_flight(self) -> int:
        """Sagas running now."""
        return len(self._current)

    async def _work(self) -> None:
        state = self.state
        queue = state.queue
        me = asyncio.current_task()
        assert me is not None
        while True:
            item = queue.get_nowait()  # one ready: no coroutine (once per event)
            if item is None:
                item = await queue.get()
            try:
                # waiting for a global rate-limit token is not "in flight": shutdown cancels it
                # (per-trigger limits are applied by the queue, which parks the events)
                if state.global_bucket is not None:
                    await state.global_bucket.acquire()
                self._current[me] = item
                state.metrics.started(state.clock.monotonic() - item.accepted_at)
                try:
                    await self.runner.run(item)
                finally:
                    state.metrics.finished()
            except asyncio.CancelledError:
                self.interrupted.append(item.saga_id)
                await self.runner.settlement.nack(item.trigger, item.delivery)
                raise
            except Exception as exc:  # never let one event kill a worker
                if self.stopping:  # its saga is given back at the stop (else redelivered here)
                    self.interrupted.append(item.saga_id)
                await self.runner.settlement.report(item.trigger, exc, item.event)
                await self.runner.settlement.nack(item.trigger, item.delivery)
            finally:
                self._current.pop(me, None)
                cluster = item.trigger.cluster
                if cluster is not None and item.cluster_leases:
                    # before the key is free here: the next event of the key asks at once
                    await cluster.release(item)
                queue.done(item)
                if not self._current and self._idle is not None:
                    self._idle.set()
                    self._idle = None

    def _idle_event(self) -> asyncio.Event:
        """An event set once no saga runs (set already if none runs now)."""
        if not self._current:
            idle = asyncio.Event()
            idle.set()
            return idle
        if self._idle is None:
            self._idle = asyncio.Event()
        return self._idle

    async def wait_idle(self) -> None:
        """Wait until no saga is running."""
        await self._idle_event().wait()

    async def stop(self, timeout: float) -> None:
        """Let running sagas finish up to ``timeout`` seconds, then cancel the rest."""
        if not await wait_event(self._idle_event(), timeout):
            logger.warning(
                "shutdown_timeout=%ss reached: cancelling %d running saga(s); their events stay "
                "un-acked and will be redelivered and resumed",
                timeout,
                len(self._current),
            )
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers.clear()
