"""Pausing triggers by id. The state lives in the store (``trigger_schedules.enabled``), so
every engine on that store follows a pause or a resume within
``TriggerConfig.trigger_state_interval_seconds``, and a restart keeps it.

>>> await sagaz.pause_trigger("orders.on_order")  # doctest: +SKIP
>>> await engine.resume_trigger("orders.on_order")  # doctest: +SKIP

or ``sagaz triggers pause|resume ID`` (``sagaz triggers list`` shows the states).

Inside one engine a trigger is paused while it has at least one reason:

* :data:`OPERATOR`: paused in the store (the CLI, :func:`sagaz.pause_trigger`,
  :meth:`TriggerEngine.pause_trigger`);
* :data:`SCHEDULING_DISABLED`: a poll trigger under ``enable_trigger_scheduling=False``.

Another part of the engine can pause intake for a reason of its own with
:meth:`TriggerPauses.hold` and :meth:`TriggerPauses.release` (e.g. every trigger while the
store is unreachable): a trigger runs again once no reason holds it.

What a paused trigger does is its source's business (:meth:`sagaz.abc.Source.pause`): broker
sources leave their messages on the broker, a cron trigger's ticks are skipped (reason
``paused``), a webhook answers 503 + Retry-After, a poll trigger is not polled, a source that
keeps the default is held in ``emit()``; ``fire_event`` skips a paused memory trigger (reason
``paused``). Nothing in flight is acked or nacked by a pause.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping

from sagaz.abc import SagaStore
from sagaz.config import TriggerConfig
from sagaz.engine.active_trigger import ActiveTrigger, PipelineState
from sagaz.exceptions import TriggerNotFoundError
from sagaz.records import TriggerScheduleRecord
from sagaz.triggers.poll import interval_seconds

__all__ = [
    "OPERATOR",
    "SCHEDULING_DISABLED",
    "TriggerPauses",
    "schedule_record",
    "set_trigger_enabled",
]

logger = logging.getLogger(__name__)

#: paused in the store: ``sagaz triggers pause ID``, ``sagaz.pause_trigger(ID)``
OPERATOR = "operator"
#: a poll trigger while ``TriggerConfig.enable_trigger_scheduling`` is False
SCHEDULING_DISABLED = "trigger_scheduling_disabled"


def schedule_record(active: ActiveTrigger, config: TriggerConfig) -> TriggerScheduleRecord:
    """The ``trigger_schedules`` row an engine saves for a trigger it runs (saving it again
    keeps the stored ``enabled``): a poll trigger's interval and overlap policy, ``0`` and
    ``True`` for the others."""
    poll = active.definition.poll_trigger
    if poll is None:
        return TriggerScheduleRecord(active.trigger_id, active.saga_name, 0, True)
    interval = max(interval_seconds(poll.poll_interval), config.trigger_base_poll_interval)
    return TriggerScheduleRecord(
        active.trigger_id, active.saga_name, int(interval * 1000), bool(poll.allow_concurrent)
    )


async def set_trigger_enabled(store: SagaStore, trigger_id: str, enabled: bool) -> None:
    """Pause (``enabled=False``) or resume a trigger in ``store``; every engine on it follows.

    Raises :class:`~sagaz.exceptions.TriggerNotFoundError` when the store knows no trigger
    ``trigger_id`` (an engine records its triggers when it starts)."""
    if not await store.set_trigger_enabled(trigger_id, enabled):
        known = [row.trigger_name for row in await store.list_trigger_schedules()]
        listed = ", ".join(known) if known else "none yet"
        raise TriggerNotFoundError(
            f"no trigger {trigger_id!r} in the store (known: {listed}); a trigger id is "
            "'{saga_name}.{method}', and a trigger is known once an engine has run it "
            "(`sagaz triggers list` shows them)"
        )


class TriggerPauses:
    """The paused triggers of one engine: follows the store and tells the sources."""

    def __init__(
        self,
        state: PipelineState,
        triggers: Mapping[str, ActiveTrigger],
        report: Callable[[ActiveTrigger, BaseException], Awaitable[None]],
    ) -> None:
        self.state = state
        self.triggers = triggers
        self._report = report
        self._lock = asyncio.Lock()  # one source.pause()/resume() at a time
        #: pauses and resumes made here; a read of the store begun before one is stale
        self._changes = 0
        self._unreachable = False

    def reasons(self, trigger_id: str) -> frozenset[str]:
        """Why ``trigger_id`` is paused here (empty: it runs)."""
        return frozenset(self.triggers[trigger_id].paused_by)

    async def hold(self, active: ActiveTrigger, reason: str) -> None:
        """Pause ``active`` for ``reason`` (a no-op if it already holds)."""
        active.paused_by.add(reason)
        await self._apply(active)

    async def release(self, active: ActiveTrigger, reason: str) -> None:
        """Drop ``reason``; the trigger runs again once no reason is left."""
        active.paused_by.discard(reason)
        await self._apply(active)

    async def _apply(self, active: ActiveTrigger) -> None:
        async with self._lock:
            paused = active.paused
            if paused:
                active.running.clear()
            else:
                active.running.set()
            source = active.source
            if source is None or active.source_paused == paused:
                return
            try:
                await (source.pause() if paused else source.resume())
            except Exception as exc:  # tried again at the next read of the states
                await self._report(active, exc)
                return
            active.source_paused = paused
        logger.info(
            "trigger %s %s",
            active.trigger_id,
            f"paused ({', '.join(sorted(active.paused_by))})" if paused else "resumed",
            extra={"trigger": active.trigger_id, "paused_by": sorted(active.paused_by)},
        )

    async def register(self) -> None:
        """Save the row of every trigger (a stored pause is kept) and pause what is paused,
        before the sources start. Store errors propagate: the engine does not start."""
        config = self.state.config
        for active in self.triggers.values():
            await self.state.store.save_trigger_schedule(schedule_record(active, config))
        if not config.enable_trigger_scheduling:
            for active in self.triggers.values():
                if active.definition.poll_trigger is not None:
                    await self.hold(active, SCHEDULING_DISABLED)
        await self.refresh()

    async def refresh(self) -> None:
        """Read the stored states once and follow them."""
        changes = self._changes
        rows = await self.state.store.list_trigger_schedules()
        if changes != self._changes:
            return  # paused or resumed here meanwhile: the next read has it
        enabled = {row.trigger_name: row.enabled for row in rows}
        for active in self.triggers.values():
            if enabled.get(active.trigger_id, True):
                await self.release(active, OPERATOR)
            else:
                await self.hold(active, OPERATOR)

    async def watch(self) -> None:
        """Follow the store every ``trigger_state_interval_seconds`` (engine clock)."""
        state = self.state
        while True:
            await state.clock.sleep(state.config.trigger_state_interval_seconds)
            try:
                await self.refresh()
            except Exception as exc:
                if not self._unreachable:  # once per outage, not every few seconds
                    logger.warning(
                        "cannot read the triggers' paused state from the store (%r); they "
                        "keep their current state until it answers",
                        exc,
                        extra={"worker_id": state.worker_id},
                    )
                self._unreachable = True
            else:
                if self._unreachable:
                    logger.info("the triggers' paused state is readable again")
                self._unreachable = False

    async def set_enabled(self, trigger_id: str, enabled: bool) -> None:
        """Pause or resume ``trigger_id`` in the store, and here at once."""
        active = self.triggers.get(trigger_id)
        if active is not None:  # an engine that runs no source recorded nothing yet
            await self.state.store.save_trigger_schedule(schedule_record(active, self.state.config))
        await set_trigger_enabled(self.state.store, trigger_id, enabled)
        if active is not None:
            self._changes += 1
            if enabled:
                await self.release(active, OPERATOR)
            else:
                await self.hold(active, OPERATOR)
