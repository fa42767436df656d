"""Backfilling a cron trigger: run each tick of a past window that has no saga yet.

>>> report = await sagaz.backfill_trigger(  # doctest: +SKIP
...     "nightly.on_tick", datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC)
... )

A tick is fired as the cron source would have fired it (same ``CronTick``, identity, saga id
and inbox key), so neither runs a tick the other ran; see :mod:`sagaz.engine.schedules` for
where the sagas run and what the report holds.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from sagaz.abc import SagaStore
from sagaz.clock import utcnow
from sagaz.config import TriggerConfig
from sagaz.engine.active_trigger import ActiveTrigger
from sagaz.engine.identity import saga_id_for
from sagaz.engine.instances import SagaFactory
from sagaz.engine.schedules import (
    CronTicks,
    ScheduledRun,
    ScheduleReport,
    admitted,
    cron_schedule,
    event_meta,
    in_engine,
    paused_in_store,
    settle,
    trigger_kind,
)
from sagaz.events import CronTick, Delivery
from sagaz.exceptions import ScheduleError
from sagaz.saga.definition import Saga
from sagaz.triggers.options.cron import CronOptions
from sagaz.triggers.registration import TriggerDefinition
from sagaz.types import TERMINAL_SAGA_STATUSES

__all__ = ["DEFAULT_MAX_TICKS", "backfill_ticks", "backfill_trigger"]

#: a backfill of more ticks than this needs ``max_ticks`` (``--max``) raised
DEFAULT_MAX_TICKS = 1000


def _cron_options(definition: TriggerDefinition) -> CronOptions:
    options = definition.source_options
    if not isinstance(options, CronOptions):
        raise ScheduleError(
            f"cannot backfill trigger {definition.trigger_id!r}: it is a "
            f"{trigger_kind(definition)} trigger, and only a cron trigger has ticks to "
            "backfill (run it now with `sagaz triggers run ID` / sagaz.run_trigger, if it is "
            "a cron or poll trigger)"
        )
    return options


def backfill_ticks(
    trigger_id: str,
    options: CronOptions,
    start: datetime,
    end: datetime,
    *,
    now: datetime | None = None,
    max_ticks: int = DEFAULT_MAX_TICKS,
) -> list[datetime]:
    """The ticks (UTC) of a cron trigger in ``[start, end]``, oldest first.

    Naive datetimes are read in the trigger's time zone. Raises
    :class:`~sagaz.exceptions.ScheduleError` when ``start`` is after ``end``, ``end`` is
    after ``now`` (those ticks are the cron source's to fire), or the window holds more
    than ``max_ticks`` ticks.
    """
    schedule = cron_schedule(options)
    start, end = _aware(start, schedule), _aware(end, schedule)
    now = now or utcnow()
    if start > end:
        raise ScheduleError(
            f"backfill of {trigger_id!r}: the window starts ({start.isoformat()}) after it "
            f"ends ({end.isoformat()}); swap --from and --to"
        )
    if end > now:
        raise ScheduleError(
            f"backfill of {trigger_id!r}: the window ends in the future ({end.isoformat()}, "
            f"now is {now.isoformat()}); the cron source fires those ticks: end it at now "
            "(--to now) or earlier"
        )
    if max_ticks < 1:
        raise ScheduleError(f"max_ticks={max_ticks} must be at least 1")
    # latest() takes the ticks in (after, until]: one microsecond before `start` includes it
    ticks, more = schedule.latest(start - timedelta(microseconds=1), end, max_ticks)
    if more:
        raise ScheduleError(
            f"backfill of {trigger_id!r}: the window {start.isoformat()} .. {end.isoformat()} "
            f"holds more than {max_ticks} ticks of {options.schedule!r}; narrow it, or allow "
            f"more with --max N (max_ticks=N)"
        )
    return ticks


def _aware(moment: datetime, schedule: CronTicks) -> datetime:
    if moment.tzinfo is None:
        return schedule.resolve(moment)
    return moment.astimezone(UTC)


async def backfill_trigger(
    trigger_id: str,
    start: datetime,
    end: datetime,
    *,
    store: SagaStore | None = None,
    config: TriggerConfig | None = None,
    max_ticks: int = DEFAULT_MAX_TICKS,
    timeout: float | None = None,
    sagas: Iterable[Saga] = (),
    saga_factory: SagaFactory | None = None,
) -> ScheduleReport:
    """Run each tick of a cron trigger in ``[start, end]`` that has no saga yet, oldest first.

    A tick is the event the cron source would have fired (same ``CronTick``, identity, saga
    id and inbox key): a tick that ran before (cron source, catch-up, an earlier backfill) is
    skipped as ``"duplicate"``, so repeating a backfill starts nothing, and the cron source
    skips a backfilled tick. Naive datetimes are read in the trigger's time zone; ``end`` may
    not be in the future. Waits up to ``timeout`` seconds (``None``: until every saga
    finished; ``0``: not at all) and the sagas run under the trigger's limits
    (``max_concurrent_sagas``, ``rate_limit_per_second``, ``concurrency_key``).

    >>> report = await sagaz.backfill_trigger(  # doctest: +SKIP
    ...     "reports.on_tick", datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC)
    ... )
    >>> len(report.started), len(report.skipped)  # doctest: +SKIP
    (25, 0)

    Raises :class:`~sagaz.exceptions.TriggerNotFoundError` (listing the registered ids) or
    :class:`~sagaz.exceptions.ScheduleError` (not a cron trigger, a window that ends before
    it starts or in the future, more than ``max_ticks`` ticks).
    """
    window: list[datetime] = []  # the ticks, computed before any engine starts

    def check(definition: TriggerDefinition) -> None:
        options = _cron_options(definition)
        window[:] = backfill_ticks(trigger_id, options, start, end, max_ticks=max_ticks)

    async def body(engine: Any, active: ActiveTrigger) -> ScheduleReport:
        paused = await paused_in_store(engine.store, trigger_id)
        options = active.definition.source_options
        assert isinstance(options, CronOptions)
        schedule = cron_schedule(options)
        runs = [await _backfill_tick(engine, active, schedule, tick) for tick in window]
        return ScheduleReport(trigger_id, await settle(engine, runs, timeout), paused)

    return await in_engine(trigger_id, store, config, sagas, saga_factory, check, body)


async def _backfill_tick(
    engine: Any, active: ActiveTrigger, schedule: CronTicks, tick: datetime
) -> ScheduledRun:
    identity = f"{active.trigger_id}@{tick.isoformat()}"  # as the cron source names it
    if active.definition.idempotency_key is None:
        # the inbox forgets after event_retention_days, the saga after saga_retention_days
        existing = await engine.store.get_saga(saga_id_for(active.trigger_id, identity))
        if existing is not None and existing.status in TERMINAL_SAGA_STATUSES:
            return ScheduledRun(
                active.trigger_id, "duplicate", tick, existing.saga_id, existing.status.value
            )
    now = engine.clock.now()
    event = CronTick(
        timestamp=tick.timestamp(),
        scheduled_at=tick.astimezone(schedule.tz),
        fired_at=now,
        schedule=schedule.expression,
    )
    delivery = Delivery(
        payload=event,
        decoded=True,
        identity=identity,
        meta=event_meta(active, identity, "backfill", now),
    )
    return admitted(active.trigger_id, tick, await engine.admission.admit(active, delivery))
