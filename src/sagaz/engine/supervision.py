"""Source supervision: one task per source runs ``source.run(emit)`` and restarts it.

A source that fails is reported (``on_trigger_error``) and restarted after a backoff; one
that fails because the store is unavailable (cron, poll) waits for the store instead. A
source that cannot pause itself is held in its ``emit`` while its trigger is paused.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable

from sagaz.abc import EmitMany, Source
from sagaz.backoff import Backoff
from sagaz.engine.active_trigger import ActiveTrigger, PipelineState
from sagaz.engine.admission import Admission
from sagaz.events import AdmissionResult, Delivery
from sagaz.exceptions import StoreUnavailableError

__all__ = ["supervise_source"]


class _TriggerEmit(functools.partial[Awaitable[AdmissionResult]]):
    """The ``emit`` of one trigger's source: admission bound to the trigger (a C-level call,
    once per event), and ``many``, its batch form (:func:`sagaz.abc.emit_many`)."""

    many: EmitMany | None = None


async def supervise_source(
    state: PipelineState,
    admission: Admission,
    active: ActiveTrigger,
    source: Source,
    report_error: Callable[[ActiveTrigger, BaseException], Awaitable[None]],
) -> None:
    """Run ``source`` for ``active`` until it returns or the task is cancelled, restarting
    it after a failure (reported through ``report_error``)."""
    emit: Callable[[Delivery], Awaitable[AdmissionResult]]
    if type(source).pause is Source.pause:  # it cannot pause itself: hold it in emit()
        emit = functools.partial(_emit_when_running, admission, active)
    else:
        admit = _TriggerEmit(admission.admit, active)
        admit.many = functools.partial(admission.admit_many, active)
        emit = admit
    backoff = Backoff(state.clock, initial=0.5, maximum=30.0)
    outage = state.outage
    while True:
        try:
            await source.run(emit)
            return
        except asyncio.CancelledError:
            raise
        except StoreUnavailableError as exc:  # a source that uses the store (cron, poll)
            await outage.wait(exc)  # logged once for the outage, not per source failure
        except Exception as exc:
            await report_error(active, exc)
            await backoff.sleep()
        try:
            await source.start()
        except Exception as start_error:
            await report_error(active, start_error)


async def _emit_when_running(
    admission: Admission, active: ActiveTrigger, item: Delivery
) -> AdmissionResult:
    """``emit`` of a source that cannot pause itself: it waits here while paused."""
    await active.running.wait()
    return await admission.admit(active, item)
