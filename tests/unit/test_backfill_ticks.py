"""``backfill_ticks``: the ticks of a cron trigger in a window, as the cron source fires them."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from sagaz.engine.backfill import backfill_ticks
from sagaz.exceptions import ScheduleError
from sagaz.triggers.options.cron import CronOptions

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def ticks(schedule: str, start: datetime, end: datetime, **options: object) -> list[str]:
    cron = CronOptions(schedule=schedule, **options)
    return [t.isoformat() for t in backfill_ticks("t.on_tick", cron, start, end, now=NOW)]


def test_both_ends_are_included_and_ticks_come_oldest_first() -> None:
    start, end = datetime(2026, 1, 1, 1, tzinfo=UTC), datetime(2026, 1, 1, 3, tzinfo=UTC)
    assert ticks("0 * * * *", start, end) == [
        "2026-01-01T01:00:00+00:00",
        "2026-01-01T02:00:00+00:00",
        "2026-01-01T03:00:00+00:00",
    ]
    assert ticks("0 * * * *", start, start) == ["2026-01-01T01:00:00+00:00"]
    assert ticks("30 * * * *", start, start) == []  # a window with no tick


def test_naive_times_are_in_the_trigger_time_zone_and_dst_fires_each_tick_once() -> None:
    # 2026-03-29 in Berlin: 02:00 does not exist; the hourly ticks of that day are 23
    day = ticks(
        "0 * * * *",
        datetime(2026, 3, 29, 0, 0),
        datetime(2026, 3, 29, 23, 59),
        timezone="Europe/Berlin",
    )
    assert len(day) == 23
    assert day[0] == "2026-03-28T23:00:00+00:00"  # midnight in Berlin, winter time
    assert day[-1] == "2026-03-29T21:00:00+00:00"  # 23:00 in Berlin, summer time


def test_windows_that_cannot_be_backfilled_say_what_to_change() -> None:
    cron = CronOptions(schedule="0 * * * *")
    jan = datetime(2026, 1, 1, tzinfo=UTC)
    with pytest.raises(ScheduleError, match=r"starts .* after it ends .* swap --from and --to"):
        backfill_ticks("t.on_tick", cron, jan.replace(day=2), jan, now=NOW)
    with pytest.raises(ScheduleError, match=r"ends in the future .* \(--to now\)"):
        backfill_ticks("t.on_tick", cron, jan, NOW.replace(day=2), now=NOW)
    with pytest.raises(ScheduleError, match=r"holds more than 24 ticks .* --max N"):
        backfill_ticks("t.on_tick", cron, jan, jan.replace(day=2, hour=1), now=NOW, max_ticks=24)
    assert len(backfill_ticks("t.on_tick", cron, jan, jan.replace(hour=23), max_ticks=24)) == 24
