"""``source="cron"``: fire a saga on a cron schedule, once per tick across all instances.

>>> class Nightly(Saga):  # doctest: +SKIP
...     @trigger(source="cron", schedule="30 2 * * *", timezone="Europe/Berlin", catchup="latest")
...     def on_tick(self, tick: CronTick) -> dict:
...         return {"day": tick.scheduled_at.date().isoformat()}

Schedules are computed in the trigger's time zone from the expression itself (never by adding
an interval to "now"), so they do not drift. Each tick is claimed in the store by
``(trigger_id, tick)`` before it is emitted: with several engines sharing a store, exactly one
of them fires it.

**Daylight saving time.** Ticks are the wall times the expression matches, each mapped to one
instant:

* a wall time that does not exist (spring forward, e.g. 02:30 on 2026-03-29 in Europe/Berlin)
  fires once, at the first valid instant after the gap (03:00 local). Several ticks inside one
  gap, and a tick of the schedule at the gap's end, collapse into that one firing;
* a wall time that occurs twice (fall back, e.g. 02:30 on 2026-10-25 in Europe/Berlin) fires
  once, at its first occurrence. The repeated hour fires nothing, so ``0 * * * *`` runs 24
  times that day, not 25, and ``*/5 * * * *`` pauses for the repeated hour.

Ticks are strictly increasing instants: no tick ever fires twice.

**Missed ticks.** On start, the ticks after the last claimed one (``store.last_cron_tick``) up
to now were missed (downtime): ``catchup="none"`` fires none of them, ``"latest"`` the most
recent one, ``"all"`` each of them oldest first, at most ``max_catchup`` (the oldest beyond it
are dropped with a warning). The first start of a trigger has missed nothing. A running source
that falls more than one tick behind (a blocked queue, a suspended host, a stepped clock)
treats the overdue ticks the same way.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from croniter import croniter

from sagaz.abc import Emit, Source, SourceContext
from sagaz.events import CronTick, Delivery, EventMeta, Reason
from sagaz.triggers.options.cron import CronOptions, check_expression, zone

__all__ = ["CronSchedule", "CronSource", "create"]

logger = logging.getLogger(__name__)

#: re-read the wall clock at least this often while waiting, so a suspended host or a
#: stepped system clock is noticed within a minute
_MAX_SLEEP_SECONDS = 60.0
#: guard against pathological expressions: never scan more candidate wall times than this
_MAX_SCAN = 100_000


class CronSchedule:
    """A cron expression in a time zone, as a strictly increasing sequence of UTC instants.

    See the module docstring for the daylight-saving rule.

    >>> s = CronSchedule("0 * * * *", "Europe/Berlin")
    >>> s.next_after(datetime(2026, 1, 1, 12, 30, tzinfo=UTC))
    datetime.datetime(2026, 1, 1, 13, 0, tzinfo=datetime.timezone.utc)
    """

    def __init__(self, expression: str, timezone: str = "UTC") -> None:
        self.expression = expression
        self.timezone = timezone
        self.tz = zone(timezone)
        self._expr = check_expression(expression)

    def resolve(self, wall: datetime) -> datetime:
        """The UTC instant of a naive local wall time, by the DST rule.

        A wall time in a spring-forward gap maps to the first valid instant after the gap;
        a wall time that occurs twice maps to its first occurrence.
        """
        first = wall.replace(tzinfo=self.tz, fold=0).astimezone(UTC)
        if first.astimezone(self.tz).replace(tzinfo=None) == wall:
            return first  # exists; with fold=0 the earlier of two occurrences (PEP 495)
        # In a gap: fold=0 reads the wall time with the offset before the transition (a UTC
        # instant after it), fold=1 with the offset after it (an instant before it).
        second = wall.replace(tzinfo=self.tz, fold=1).astimezone(UTC)
        low, high = min(first, second), max(first, second)
        after_offset = high.astimezone(self.tz).utcoffset()
        # binary search for the transition instant, to the second
        lo, hi = 0, int((high - low).total_seconds())
        while lo < hi:
            mid = (lo + hi) // 2
            if (low + timedelta(seconds=mid)).astimezone(self.tz).utcoffset() == after_offset:
                hi = mid
            else:
                lo = mid + 1
        return low + timedelta(seconds=lo)

    def _wall(self, instant: datetime) -> datetime:
        return instant.astimezone(self.tz).replace(tzinfo=None)

    def next_after(self, instant: datetime) -> datetime:
        """The first tick strictly after ``instant`` (an aware datetime), in UTC."""
        candidates = croniter(self._expr, self._wall(instant))
        for _ in range(_MAX_SCAN):
            tick = self.resolve(candidates.get_next(datetime))
            if tick > instant:
                return tick
        raise RuntimeError(  # pragma: no cover - needs a pathological expression
            f"cron schedule {self.expression!r} has no tick after {instant.isoformat()} "
            f"within {_MAX_SCAN} candidates"
        )

    def latest(self, after: datetime, until: datetime, limit: int) -> tuple[list[datetime], bool]:
        """The most recent ``limit`` ticks in ``(after, until]``, oldest first, and whether
        older ticks in that range were left out."""
        # start just past `until` so that a tick exactly at `until` is included
        candidates = croniter(self._expr, self._wall(until) + timedelta(seconds=1))
        found: list[datetime] = []
        for _ in range(_MAX_SCAN):
            tick = self.resolve(candidates.get_prev(datetime))
            if tick > until or (found and tick >= found[-1]):
                continue  # past the range, or collapsed into a tick already found (DST gap)
            if tick <= after:
                return found[::-1], False
            if len(found) == limit:
                return found[::-1], True
            found.append(tick)
        return found[::-1], True  # pragma: no cover - needs a pathological expression


class CronSource(Source):
    """Emits a :class:`~sagaz.events.CronTick` at every tick of the schedule.

    A tick is emitted only by the instance that claims it in the store
    (``store.claim_cron_tick``). Errors of the store or of ``emit`` are reported through
    ``ctx.report_error`` and the schedule keeps running; a tick whose emit failed after its
    claim is not retried (cron is not redeliverable).

    While paused (``sagaz triggers pause ID``) each tick is still claimed, then skipped: it
    is logged and reported (``on_trigger_filtered`` with reason ``paused``, counted in
    ``sagaz_events_not_started_total{reason="paused"}``), and neither a resume nor a later
    catch-up fires it.
    """

    kind: ClassVar[str] = "cron"
    redeliverable: ClassVar[bool] = False

    def __init__(self, options: CronOptions, ctx: SourceContext) -> None:
        self.options = options
        self.ctx = ctx
        self.schedule = CronSchedule(options.schedule, options.timezone)
        self._log_extra = {"trigger": ctx.trigger_id, "source": self.kind}
        #: while paused, each tick is still claimed (so no instance fires it, now or on a
        #: catch-up later) but skipped: reported with reason ``paused``, never emitted
        self.paused = False

    async def pause(self) -> None:
        """Skip the ticks from now on (reason ``paused``) until :meth:`resume`."""
        self.paused = True

    async def resume(self) -> None:
        """Fire the ticks again, from the next one (skipped ticks are not caught up)."""
        self.paused = False

    async def run(self, emit: Emit) -> None:
        """Catch up on missed ticks, then fire every tick until cancelled."""
        ctx = self.ctx
        now = ctx.clock.now()
        try:
            last = await ctx.store.last_cron_tick(ctx.trigger_id)
        except Exception as exc:
            await ctx.report_error(exc)
            last = None  # cannot tell what was missed: catch up on nothing
        if last is not None and last < now:
            await self._catch_up(emit, after=last, until=now, reason="downtime")
        cursor = now
        while True:
            tick = self.schedule.next_after(cursor)
            await self._sleep_until(tick)
            now = ctx.clock.now()
            if self.schedule.next_after(tick) <= now:
                # more than one tick is overdue: they were missed, like ticks of a downtime
                await self._catch_up(emit, after=cursor, until=now, reason="fell behind")
                cursor = now
            else:
                await self.fire(emit, tick)
                cursor = tick

    async def _sleep_until(self, tick: datetime) -> None:
        clock = self.ctx.clock
        while True:
            remaining = (tick - clock.now()).total_seconds()
            if remaining <= 0:
                return
            await clock.sleep(min(remaining, _MAX_SLEEP_SECONDS))

    async def _catch_up(self, emit: Emit, *, after: datetime, until: datetime, reason: str) -> None:
        policy = self.options.catchup
        if self.schedule.next_after(after) > until:
            return  # nothing missed
        extra = {
            **self._log_extra,
            "catchup": policy,
            "missed_after": after.isoformat(),
            "missed_until": until.isoformat(),
            "reason": reason,
        }
        if policy == "none":
            logger.info(
                "cron trigger %s missed ticks (%s); catchup='none' fires none of them",
                self.ctx.trigger_id,
                reason,
                extra=extra,
            )
            return
        limit = 1 if policy == "latest" else self.options.max_catchup
        ticks, truncated = self.schedule.latest(after, until, limit)
        if truncated and policy == "all":
            logger.warning(
                "cron trigger %s missed more than max_catchup=%d ticks (%s); firing the "
                "latest %d, the older ones are dropped (raise max_catchup to fire more)",
                self.ctx.trigger_id,
                limit,
                reason,
                len(ticks),
                extra=extra,
            )
        else:
            logger.info(
                "cron trigger %s fires %d missed tick(s) (%s, catchup=%r)",
                self.ctx.trigger_id,
                len(ticks),
                reason,
                policy,
                extra=extra,
            )
        for tick in ticks:
            await self.fire(emit, tick)

    async def fire(self, emit: Emit, tick: datetime) -> bool:
        """Claim ``tick`` (a UTC instant) and emit it, or skip it while paused (reason
        ``paused``); return whether this instance claimed it."""
        ctx = self.ctx
        tick_utc = tick.astimezone(UTC)
        try:
            claimed = await ctx.store.claim_cron_tick(ctx.trigger_id, tick_utc, ctx.worker_id)
        except Exception as exc:
            await ctx.report_error(exc)
            return False
        identity = f"{ctx.trigger_id}@{tick_utc.isoformat()}"
        if not claimed:
            logger.debug(
                "cron tick %s claimed by another instance",
                identity,
                extra={**self._log_extra, "message_id": identity},
            )
            return False
        fired_at = ctx.clock.now()
        event = CronTick(
            timestamp=tick_utc.timestamp(),
            scheduled_at=tick_utc.astimezone(self.schedule.tz),
            fired_at=fired_at,
            schedule=self.options.schedule,
        )
        if self.paused:
            logger.info(
                "cron tick %s skipped: the trigger is paused",
                identity,
                extra={**self._log_extra, "message_id": identity, "reason": Reason.PAUSED.value},
            )
            await ctx.report_skipped(event, Reason.PAUSED)
            return True
        delivery = Delivery(
            payload=event,
            decoded=True,
            identity=identity,
            meta=EventMeta(
                source=self.kind,
                trigger=ctx.trigger_id,
                message_id=identity,
                received_at=fired_at,
            ),
        )
        logger.debug(
            "cron tick %s fired", identity, extra={**self._log_extra, "message_id": identity}
        )
        try:
            await emit(delivery)
        except Exception as exc:
            await ctx.report_error(exc)
        return True

    def describe(self) -> dict[str, Any]:
        """Kind, schedule, time zone and catch-up policy."""
        return {
            "kind": self.kind,
            "schedule": self.options.schedule,
            "timezone": self.options.timezone,
            "catchup": self.options.catchup,
            "max_catchup": self.options.max_catchup,
        }


def create(options: CronOptions, ctx: SourceContext) -> CronSource:
    """Build the source of one cron trigger."""
    return CronSource(options, ctx)
