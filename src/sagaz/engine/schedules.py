"""Schedules at run time: run a cron or poll trigger now, backfill a window of cron ticks.

>>> report = await sagaz.run_trigger("nightly.on_tick", store=store)  # doctest: +SKIP
>>> report = await sagaz.backfill_trigger(  # doctest: +SKIP
...     "nightly.on_tick", datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC),
...     store=store,
... )
>>> [(run.tick, run.outcome, run.status) for run in report.runs]  # doctest: +SKIP

or ``sagaz triggers run ID --modules myapp.sagas`` and ``sagaz triggers backfill ID --from T
--to T --modules myapp.sagas``.

**Where the sagas run.** In the process-wide engine when it runs here with that trigger
(``sagaz.start_triggers()``), else in an engine of their own that runs no source (as ``sagaz
dlq replay`` does): nothing has to run elsewhere, and the caller learns what each saga became.
Every event is admitted by the same pipeline as the source's (decoding, idempotency key, inbox,
retries, dead letters) and accepted durably before it runs, so a saga that has not finished
when the call returns (``timeout``, Ctrl-C) is left pending in the store with its lease
released: the recovery loop of any engine that runs the trigger on that store resumes it.

**Run now** (:func:`run_trigger`) is an event of its own, not a tick: each call starts one saga
(unless the trigger's ``idempotency_key`` maps it onto one that ran). A cron trigger receives a
:class:`~sagaz.events.CronTick` scheduled at the moment of the call; a poll trigger is polled
once (``poll()`` returning ``Skip`` starts nothing), or, given ``context``, fires with it
without a poll. Its ``EventMeta.headers["sagaz-schedule"]`` is ``"run"``.

**Backfill** (:func:`~sagaz.engine.backfill.backfill_trigger`) runs each tick of a cron
trigger in ``[start, end]`` as the cron source would have fired it: the same
:class:`~sagaz.events.CronTick`, the same identity (``{trigger_id}@{tick}``, or the trigger's
``idempotency_key``), hence the same saga id and inbox key. So a tick whose saga exists (run
by the cron source, by a catch-up or by an earlier backfill) is skipped (``duplicate``), a
backfilled tick that the cron source reaches later (a catch-up) is a duplicate there, and
repeating a backfill starts nothing. Ticks the cron source claimed but never ran (skipped
while the trigger was paused, or lost to a store error) have no saga: a backfill runs them. A
backfill claims no cron tick, so the cron source's catch-up after a downtime still starts from
its own last tick. ``EventMeta.headers["sagaz-schedule"]`` is ``"backfill"``.

A paused trigger runs too (the call is an operator's explicit request); the report says it is
paused.
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar
from zoneinfo import ZoneInfo

from sagaz.abc import SagaStore
from sagaz.config import TriggerConfig
from sagaz.engine.active_trigger import ActiveTrigger
from sagaz.engine.instances import SagaFactory
from sagaz.engine.loading import load_source_module
from sagaz.events import AdmissionOutcome, AdmissionResult, CronTick, Delivery, EventMeta, NotRun
from sagaz.exceptions import ScheduleError, TriggerNotFoundError
from sagaz.saga.definition import Saga
from sagaz.triggers.options.cron import CronOptions
from sagaz.triggers.poll import Fire, Skip
from sagaz.triggers.registration import TriggerDefinition, registry

__all__ = [
    "SCHEDULE_HEADER",
    "CronTicks",
    "ScheduleReport",
    "ScheduledRun",
    "admitted",
    "cron_schedule",
    "event_meta",
    "in_engine",
    "paused_in_store",
    "run_in_engine",
    "run_trigger",
    "settle",
    "trigger_kind",
]

#: the ``EventMeta.headers`` key that marks a run now (``"run"``) or a backfilled tick
#: (``"backfill"``)
SCHEDULE_HEADER = "sagaz-schedule"

T = TypeVar("T")


class CronTicks(Protocol):
    """What run now and backfill need of the cron source's ``sagaz.sources.cron.CronSchedule``."""

    expression: str
    tz: ZoneInfo

    def resolve(self, wall: datetime) -> datetime:
        """The UTC instant of a naive local wall time."""
        ...

    def latest(self, after: datetime, until: datetime, limit: int) -> tuple[list[datetime], bool]:
        """The most recent ``limit`` ticks in ``(after, until]`` and whether more were left."""
        ...


def cron_schedule(options: CronOptions) -> CronTicks:
    """The schedule of a cron trigger, as its source computes it (the source module is loaded
    by its kind, as the engine loads sources)."""
    cron: Any = load_source_module("cron")
    schedule: CronTicks = cron.CronSchedule(options.schedule, options.timezone)
    return schedule


@dataclass(frozen=True, slots=True)
class ScheduledRun:
    """One event of :func:`run_trigger` or :func:`~sagaz.engine.backfill.backfill_trigger`
    and what became of it.

    ``outcome`` is ``"started"`` (a saga was accepted for it) or why not: ``"duplicate"``
    (its saga exists: the tick ran before; ``status`` is that saga's), ``"busy"`` (another
    live worker runs its saga), ``"skipped"`` (the poll returned ``Skip``), ``"filtered"``
    (the trigger method returned ``None``), ``"overlap_skipped"``, ``"invalid"``
    (dead-lettered), ``"rejected"``, ``"dropped_newest"``.

    ``status`` is the saga's: ``"completed"``, ``"compensated"``, ``"failed"``, or
    ``"running"`` when it did not finish within the timeout (it is durable: an engine's
    recovery loop resumes it), ``"interrupted"``, ``"dropped_oldest"``; ``None`` when the
    call did not wait.
    """

    trigger_id: str
    outcome: str
    tick: datetime | None = None
    saga_id: str | None = None
    status: str | None = None
    error: str | None = None

    @property
    def started(self) -> bool:
        """Whether this call started a saga for the event."""
        return self.outcome == "started"

    @property
    def failed(self) -> bool:
        """Whether the event ended badly here: its saga compensated, failed or did not finish
        in time, or the event was dead-lettered, rejected or dropped."""
        if self.outcome in ("invalid", "rejected", "dropped_newest"):
            return True
        return self.started and self.status not in (None, "completed")


@dataclass(frozen=True, slots=True)
class ScheduleReport:
    """What :func:`run_trigger` or :func:`~sagaz.engine.backfill.backfill_trigger` did, one
    :class:`ScheduledRun` per event (per tick of a backfill, oldest first)."""

    trigger_id: str
    runs: tuple[ScheduledRun, ...]
    #: the trigger is paused in the store (it ran anyway: the call asked for it)
    paused: bool = False

    @property
    def started(self) -> list[ScheduledRun]:
        """The events that started a saga."""
        return [run for run in self.runs if run.started]

    @property
    def skipped(self) -> list[ScheduledRun]:
        """The events that started none (``outcome`` says why)."""
        return [run for run in self.runs if not run.started]

    @property
    def ok(self) -> bool:
        """No run failed (see :attr:`ScheduledRun.failed`)."""
        return not any(run.failed for run in self.runs)


# -- the trigger ---------------------------------------------------------------------------------
def _definition(trigger_id: str) -> TriggerDefinition:
    for definition in registry.triggers():
        if definition.trigger_id == trigger_id:
            return definition
    known = ", ".join(sorted(t.trigger_id for t in registry.triggers())) or "none"
    raise TriggerNotFoundError(
        f"no trigger {trigger_id!r} is registered in this process (registered: {known}); a "
        "trigger id is '{saga_name}.{method}', and a trigger is registered when the module "
        "defining its saga is imported (sagaz triggers run ID --modules myapp.sagas)"
    )


def trigger_kind(definition: TriggerDefinition) -> str:
    """What an error calls the trigger: ``"poll"``, ``"cron"``, ``"kafka"``..."""
    return "poll" if definition.poll_trigger is not None else str(definition.source)


async def in_engine(
    trigger_id: str,
    store: SagaStore | None,
    config: TriggerConfig | None,
    sagas: Iterable[Saga],
    saga_factory: SagaFactory | None,
    check: Callable[[TriggerDefinition], None],
    body: Callable[[Any, ActiveTrigger], Awaitable[T]],
) -> T:
    """Run ``body(engine, active)`` in the process-wide engine when it runs the trigger on
    ``store``, else in an engine of its own (no source, no recovery loop) on ``store``."""
    from sagaz.engine import process_engine
    from sagaz.engine.engine import TriggerEngine

    running = process_engine._engine
    if (
        running is not None
        and running.running
        and store in (None, running.store)
        and trigger_id in running.triggers
    ):
        active = running.triggers[trigger_id]
        check(active.definition)
        return await body(running, active)
    definition = _definition(trigger_id)
    check(definition)
    # the engine starts (and then stops) a store that is not started: the configured one
    async with TriggerEngine(
        config or TriggerConfig(),
        store,
        triggers=[definition],
        start_sources=False,
        sagas=sagas,
        saga_factory=saga_factory,
    ) as engine:
        return await body(engine, engine.triggers[trigger_id])


async def paused_in_store(store: SagaStore, trigger_id: str) -> bool:
    """Whether ``trigger_id`` is paused in ``store`` (``sagaz triggers pause``)."""
    row = await store.get_trigger_schedule(trigger_id)
    return row is not None and not row.enabled


# -- admitting and waiting -----------------------------------------------------------------------
_NOT_STARTED = {
    AdmissionOutcome.DUPLICATE: "duplicate",
    AdmissionOutcome.BUSY: "busy",
    AdmissionOutcome.INVALID: "invalid",
    AdmissionOutcome.REJECTED: "rejected",
}


def admitted(trigger_id: str, tick: datetime | None, result: AdmissionResult) -> ScheduledRun:
    """The :class:`ScheduledRun` of an admission's result: ``"started"``, or why not."""
    if result.outcome is AdmissionOutcome.ACCEPTED:
        return ScheduledRun(trigger_id, "started", tick, result.saga_id)
    outcome = (
        result.reason.value
        if result.reason is not None
        else _NOT_STARTED.get(result.outcome, result.outcome.value)
    )
    error = str(result.error) if result.error else None
    return ScheduledRun(trigger_id, outcome, tick, result.saga_id, error=error)


async def settle(
    engine: Any, runs: Sequence[ScheduledRun], timeout: float | None
) -> tuple[ScheduledRun, ...]:
    """Wait (up to ``timeout`` seconds in all; ``0``: not at all) for the started sagas."""
    if timeout == 0:
        return tuple(runs)
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    settled: list[ScheduledRun] = []
    for run in runs:
        if not run.started or run.saga_id is None:
            settled.append(run)
            continue
        left = None if deadline is None else max(0.0, deadline - loop.time())
        try:
            outcome = await engine.wait_for(run.saga_id, timeout=left)
        except TimeoutError:
            settled.append(_replace(run, status="running"))
            continue
        if isinstance(outcome, NotRun):
            settled.append(_replace(run, status=str(outcome.reason), error=outcome.error))
        else:
            error = str(outcome.error) if outcome.error else None
            settled.append(_replace(run, status=outcome.status.value, error=error))
    return tuple(settled)


def _replace(run: ScheduledRun, *, status: str, error: str | None = None) -> ScheduledRun:
    return ScheduledRun(run.trigger_id, run.outcome, run.tick, run.saga_id, status, error)


def event_meta(active: ActiveTrigger, identity: str, kind: str, now: datetime) -> EventMeta:
    """The ``EventMeta`` of a run now or backfilled tick (``kind`` in :data:`SCHEDULE_HEADER`)."""
    return EventMeta(
        source=active.definition.source,
        trigger=active.trigger_id,
        message_id=identity,
        headers={SCHEDULE_HEADER: kind},
        received_at=now,
    )


# -- run now -------------------------------------------------------------------------------------
async def run_trigger(
    trigger_id: str,
    *,
    context: Mapping[str, Any] | None = None,
    store: SagaStore | None = None,
    config: TriggerConfig | None = None,
    timeout: float | None = 60.0,
    sagas: Iterable[Saga] = (),
    saga_factory: SagaFactory | None = None,
) -> ScheduleReport:
    """Fire a cron or poll trigger now, once: each call is an event of its own.

    A cron trigger receives a :class:`~sagaz.events.CronTick` scheduled now; a poll trigger
    is polled once (``Skip``: nothing starts, outcome ``"skipped"``), or fires ``context``
    without a poll when it is given. Waits up to ``timeout`` seconds for the saga (``0``: not
    at all; ``None``: as long as it takes); an unfinished saga is durable and resumed by an
    engine's recovery loop.

    >>> report = await sagaz.run_trigger("reports.on_tick", store=store)  # doctest: +SKIP
    >>> report.runs[0].saga_id, report.runs[0].status  # doctest: +SKIP
    ('0f6c...', 'completed')

    ``store``, ``config``, ``sagas``, ``saga_factory``: as for ``start_triggers`` (used when
    the process-wide engine does not run this trigger on that store). Raises
    :class:`~sagaz.exceptions.TriggerNotFoundError` (listing the registered ids) or
    :class:`~sagaz.exceptions.ScheduleError` (a trigger that is neither cron nor poll,
    ``context`` for a cron trigger).
    """

    check = functools.partial(_check_runnable, trigger_id, context)
    body = functools.partial(_run_now, trigger_id, context, timeout)
    return await in_engine(trigger_id, store, config, sagas, saga_factory, check, body)


async def run_in_engine(
    engine: Any, trigger_id: str, *, timeout: float | None = 0
) -> ScheduleReport:
    """:func:`run_trigger` in ``engine``, a running engine that runs ``trigger_id`` (the
    dashboard's *Run now*); raises what :func:`run_trigger` raises, and
    :class:`~sagaz.exceptions.TriggerNotFoundError` when ``engine`` does not run it."""
    active = engine.triggers.get(trigger_id)
    if active is None:
        raise TriggerNotFoundError(
            f"this engine runs no trigger {trigger_id!r} (it runs: "
            f"{', '.join(sorted(engine.triggers)) or 'none'})"
        )
    _check_runnable(trigger_id, None, active.definition)
    return await _run_now(trigger_id, None, timeout, engine, active)


def _check_runnable(
    trigger_id: str, context: Mapping[str, Any] | None, definition: TriggerDefinition
) -> None:
    """Refuse a trigger that does not run on its own schedule, or a context for a cron one."""
    is_cron = isinstance(definition.source_options, CronOptions)
    if not is_cron and definition.poll_trigger is None:
        raise ScheduleError(
            f"cannot run trigger {trigger_id!r} now: it is a {trigger_kind(definition)} "
            "trigger, whose events come from outside; only cron and poll triggers run on "
            "their own schedule (send a memory trigger's event with sagaz.fire_event)"
        )
    if is_cron and context is not None:
        raise ScheduleError(
            f"trigger {trigger_id!r} is a cron trigger: its method receives a CronTick, "
            "not a context; run it without one (--context is for poll triggers)"
        )


async def _run_now(
    trigger_id: str,
    context: Mapping[str, Any] | None,
    timeout: float | None,
    engine: Any,
    active: ActiveTrigger,
) -> ScheduleReport:
    now = engine.clock.now()
    paused = await paused_in_store(engine.store, trigger_id)
    run = await _run_once(active, engine, now, context)
    runs = await settle(engine, [run], timeout)
    return ScheduleReport(trigger_id, runs, paused)


async def _run_once(
    active: ActiveTrigger, engine: Any, now: datetime, context: Mapping[str, Any] | None
) -> ScheduledRun:
    options = active.definition.source_options
    poll = active.definition.poll_trigger
    identity = f"{active.trigger_id}@run:{uuid.uuid4().hex}"
    payload: Any
    if isinstance(options, CronOptions):
        schedule = cron_schedule(options)
        payload = CronTick(
            timestamp=now.timestamp(),
            scheduled_at=now.astimezone(schedule.tz),
            fired_at=now,
            schedule=options.schedule,
        )
    elif context is not None:
        payload = dict(context)
    else:
        assert poll is not None
        async with asyncio.timeout(engine.config.trigger_poll_timeout):
            fired = await poll.poll()
        if fired is Skip:
            return ScheduledRun(active.trigger_id, "skipped", error="poll() returned Skip")
        if not isinstance(fired, Fire):
            raise ScheduleError(
                f"poll() of trigger {active.trigger_id!r} returned {fired!r}; it must return "
                "Fire(context) or Skip"
            )
        payload = dict(fired.context or {})
    delivery = Delivery(
        payload=payload,
        decoded=True,
        identity=identity,
        meta=event_meta(active, identity, "run", now),
    )
    return admitted(active.trigger_id, None, await engine.admission.admit(active, delivery))
