"""Running a saga's steps as a DAG: each step once its dependencies finished (or, for a
streaming action's readers, once it started), several at a time, a task each.

:class:`SagaDag` is that half of :class:`~sagaz.saga.execution.SagaExecution` (which
inherits it); a saga without ``depends_on`` nor a streaming action runs its steps in
sequence there, without a task per step.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from sagaz.exceptions import LeaseLostError, StoreUnavailableError
from sagaz.saga.context import SagaContext, StreamChannel
from sagaz.saga.definition import StepDefinition

if TYPE_CHECKING:
    from sagaz.saga.definition import SagaDefinition

__all__ = ["SagaDag"]

logger = logging.getLogger("sagaz.saga.execution")  # its log lines, as before the split


class SagaDag:
    """The DAG path of one saga execution (a base of ``SagaExecution``)."""

    definition: SagaDefinition
    saga_name: str

    def _run_step(
        self, step: StepDefinition, ctx: SagaContext, channel: StreamChannel | None
    ) -> Coroutine[Any, Any, None]:
        raise NotImplementedError  # SagaExecution's: one step with its retries

    async def _forward_dag(
        self, ctx: SagaContext, done: set[str]
    ) -> tuple[str, BaseException] | None:
        """Run the steps not ``done`` as their dependencies allow; the first failure (its
        step and exception), or ``None``."""
        started: set[str] = set(done)
        running: dict[asyncio.Task[None], str] = {}
        channels: dict[str, StreamChannel] = {}
        failure: tuple[str, BaseException] | None = None
        try:
            while True:
                if failure is None:
                    for step in self.definition.steps:
                        name = step.action.name
                        if name in started or not self._ready(step, done, started):
                            continue
                        started.add(name)
                        channel = ctx.open_stream(name) if step.action.streaming else None
                        if channel is not None:
                            channels[name] = channel
                            self._detach_unread({name: channel}, done)
                        task = asyncio.create_task(
                            self._run_step(step, ctx, channel), name=f"sagaz-step-{name}"
                        )
                        running[task] = name
                if not running:
                    return failure
                finished, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in finished:
                    name = running.pop(task)
                    exc = task.exception()
                    if isinstance(exc, (StoreUnavailableError, LeaseLostError)):
                        ctx.abort_streams()
                        raise exc  # not a step failure (see above); the others are cancelled
                    if exc is not None:
                        if failure is None:
                            failure = (name, exc)
                            ctx.abort_streams()
                    else:
                        done.add(name)
                self._detach_unread(channels, done)
                self._report_drained(ctx, channels)
        finally:
            for task in running:
                task.cancel()
            if running:
                await asyncio.gather(*running, return_exceptions=True)

    def _ready(self, step: StepDefinition, done: set[str], started: set[str]) -> bool:
        for dep in step.depends_on:
            if dep in done:
                continue
            if dep in started and self.definition.step(dep).action.streaming:
                continue  # readers of a stream run while it is produced
            return False
        return True

    def _detach_unread(self, channels: dict[str, StreamChannel], done: set[str]) -> None:
        """Nobody will read a stream whose readers all finished (or that has none): from then
        on its producer runs to completion without waiting, its records counted and dropped."""
        for name, channel in channels.items():
            if all(r in done for r in self.definition.readers[name]):
                channel.detach()

    def _report_drained(self, ctx: SagaContext, channels: dict[str, StreamChannel]) -> None:
        """Log each finished stream whose records were (partly) not read, once."""
        for name, channel in list(channels.items()):
            if not (channel.closed and channel.detached):
                continue
            del channels[name]
            if channel.discarded:
                logger.info(
                    "stream %r of saga %r: %d of its %d records were read by no step "
                    "and were dropped",
                    name,
                    self.saga_name,
                    channel.discarded,
                    channel.yielded,
                    extra={
                        "saga_id": ctx.saga_id,
                        "step": name,
                        "yielded": channel.yielded,
                        "discarded": channel.discarded,
                    },
                )
