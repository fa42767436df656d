"""``source="custom"``: a poll-based :class:`~sagaz.triggers.poll.Trigger` (Cloacina semantics)
or a push :class:`~sagaz.abc.Source` given as ``trigger=``.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any, ClassVar

from sagaz.abc import Emit, Source, SourceContext
from sagaz.events import Delivery, EventMeta
from sagaz.triggers.options.custom import CustomOptions
from sagaz.triggers.poll import Fire, Skip, Trigger, interval_seconds

__all__ = ["PollSource", "create"]

logger = logging.getLogger(__name__)


class PollSource(Source):
    """Polls a :class:`Trigger` every ``max(poll_interval, trigger_base_poll_interval)``.

    Each poll is bounded by ``trigger_poll_timeout``; a poll that raises, times out or returns
    anything but ``Fire``/``Skip`` is logged, reported to listeners (``on_trigger_error``) and
    counted (``sagaz_source_errors``), and polling continues.
    """

    kind: ClassVar[str] = "custom"

    def __init__(self, poll_trigger: Trigger, ctx: SourceContext) -> None:
        self.poll_trigger = poll_trigger
        self.ctx = ctx
        #: the trigger's ``name`` (in logs and ``EventMeta.topic``), else the trigger id
        self.name = poll_trigger.name or ctx.trigger_id
        self._running = asyncio.Event()  # cleared while paused: not polled
        self._running.set()

    @property
    def interval(self) -> float:
        """Seconds between polls."""
        return max(
            interval_seconds(self.poll_trigger.poll_interval),
            self.ctx.config.trigger_base_poll_interval,
        )

    async def run(self, emit: Emit) -> None:
        """Poll until cancelled; not while paused."""
        ctx = self.ctx
        while True:
            await ctx.clock.sleep(self.interval)
            await self._running.wait()
            await self.poll_once(emit)

    async def pause(self) -> None:
        """Poll no more until :meth:`resume` (a poll under way finishes)."""
        self._running.clear()

    async def resume(self) -> None:
        """Poll again, from the next interval."""
        self._running.set()

    async def poll_once(self, emit: Emit) -> None:
        """One poll: ``Fire`` → emit the context; errors and timeouts are reported."""
        ctx = self.ctx
        try:
            async with asyncio.timeout(ctx.config.trigger_poll_timeout):
                outcome = await self.poll_trigger.poll()
        except TimeoutError:
            await ctx.report_error(
                TimeoutError(
                    f"poll of trigger {self.name!r} exceeded trigger_poll_timeout="
                    f"{ctx.config.trigger_poll_timeout}s; polling continues"
                )
            )
            return
        except Exception as exc:
            await ctx.report_error(exc)
            return
        finally:
            try:
                await ctx.store.touch_trigger_schedule(ctx.trigger_id, ctx.clock.now())
            except Exception as exc:
                await ctx.report_error(exc)
        if outcome is Skip:
            return
        if not isinstance(outcome, Fire):  # never taken for a Skip: say so, keep polling
            await ctx.report_error(
                TypeError(
                    f"poll() of trigger {self.name!r} ({ctx.trigger_id}) returned {outcome!r}; "
                    "it must return Fire(context) or Skip. Nothing fired; polling continues"
                )
            )
            return
        context = dict(outcome.context or {})
        delivery = Delivery(
            payload=context,
            decoded=True,
            identity=f"{self.name}:{uuid.uuid4().hex}",
            meta=EventMeta(source="custom", trigger=ctx.trigger_id, topic=self.name),
        )
        try:
            await emit(delivery)
        except Exception as exc:
            await ctx.report_error(exc)

    def describe(self) -> dict[str, Any]:
        """Kind, name, interval and overlap policy."""
        return {
            "kind": "poll",
            "name": self.name,
            "poll_interval": self.interval,
            "allow_concurrent": self.poll_trigger.allow_concurrent,
        }


def create(options: CustomOptions, ctx: SourceContext) -> Source:
    """The :class:`PollSource` of the poll trigger given as ``trigger=`` (a push source given
    as ``trigger=`` is already a :class:`~sagaz.abc.Source`: the engine runs it as it is)."""
    poll_trigger = options.trigger
    if not isinstance(poll_trigger, Trigger):
        raise TypeError(
            f"trigger {ctx.trigger_id!r}: option trigger= must be an instance of a sagaz.Trigger "
            f"subclass, got {poll_trigger!r}"
        )
    return PollSource(poll_trigger, ctx)
