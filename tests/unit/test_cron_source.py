"""The cron source on fake time: schedules, DST, catch-up, multi-instance claims, validation."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from sagaz.abc import SagaStore, SourceContext
from sagaz.events import CronTick, Delivery
from sagaz.sources import cron
from sagaz.sources.cron import CronSchedule, CronSource
from sagaz.storage.memory import MemorySagaStore
from sagaz.testing.clock import FakeClock
from sagaz.triggers.options import CronOptions, parse_trigger_options
from tests.recording_emit import RecordingEmit, source_context, stop_intake

TRIGGER = "reports.on_tick"
BERLIN = ZoneInfo("Europe/Berlin")


def make_source(
    options: Mapping[str, Any],
    clock: FakeClock,
    store: SagaStore,
    *,
    worker_id: str = "worker-1",
    errors: list[BaseException] | None = None,
) -> CronSource:
    ctx: SourceContext = source_context(TRIGGER, errors=errors)
    ctx.clock = clock
    ctx.store = store
    ctx.worker_id = worker_id
    return cron.create(CronOptions.model_validate(options), ctx)


async def parked(clock: FakeClock, count: int = 1) -> None:
    """Wait (a bounded number of loop turns, no time passes) until ``count`` tasks sleep."""
    for _ in range(1000):
        if clock.sleepers >= count:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"expected {count} sleeper(s) on the clock, got {clock.sleepers}")


@contextlib.asynccontextmanager
async def running(*sources_and_emits: tuple[CronSource, RecordingEmit]) -> AsyncIterator[None]:
    """Run each source until the block ends; wait until all of them are parked first."""
    tasks = [asyncio.create_task(source.run(emit)) for source, emit in sources_and_emits]
    try:
        clock = sources_and_emits[0][0].ctx.clock
        assert isinstance(clock, FakeClock)
        await parked(clock, len(tasks))
        yield
    finally:
        for task in tasks:
            await stop_intake(task)


def ticks(emit: RecordingEmit) -> list[CronTick]:
    payloads = emit.payloads
    assert all(isinstance(p, CronTick) for p in payloads)
    return payloads


def scheduled_utc(emit: RecordingEmit) -> list[datetime]:
    return [t.scheduled_at.astimezone(UTC) for t in ticks(emit)]


async def run_for(
    options: Mapping[str, Any], start: datetime, seconds: float
) -> tuple[RecordingEmit, list[BaseException]]:
    clock = FakeClock(start)
    emit = RecordingEmit()
    errors: list[BaseException] = []
    source = make_source(options, clock, MemorySagaStore(), errors=errors)
    async with running((source, emit)):
        await clock.advance(seconds)
    return emit, errors


# -- schedules ----------------------------------------------------------------------------


async def test_every_five_minutes_fires_twelve_times_in_an_hour() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    emit, errors = await run_for({"schedule": "*/5 * * * *"}, start, 3600)

    assert errors == []
    expected = [start + timedelta(minutes=5 * i) for i in range(1, 13)]
    assert scheduled_utc(emit) == expected
    first = emit.deliveries[0]
    assert first.decoded is True
    assert first.identity == f"{TRIGGER}@2026-01-01T00:05:00+00:00"
    assert first.meta.source == "cron"
    assert first.meta.trigger == TRIGGER
    tick = ticks(emit)[0]
    assert tick.timestamp == expected[0].timestamp()
    assert tick.fired_at == expected[0]  # fake time: fired exactly on schedule, no drift
    assert tick.schedule == "*/5 * * * *"
    assert len(set(emit.identities)) == 12


async def test_hourly_alias_fires_on_the_hour() -> None:
    start = datetime(2026, 1, 1, 0, 20, tzinfo=UTC)
    emit, _ = await run_for({"schedule": "@hourly"}, start, 3 * 3600)

    assert scheduled_utc(emit) == [datetime(2026, 1, 1, h, tzinfo=UTC) for h in (1, 2, 3)]
    assert ticks(emit)[0].schedule == "@hourly"


async def test_six_fields_put_the_seconds_last() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    emit, _ = await run_for({"schedule": "* * * * * */20"}, start, 120)
    assert scheduled_utc(emit) == [start + timedelta(seconds=s) for s in (20, 40, 60, 80, 100, 120)]

    emit, _ = await run_for({"schedule": "0 * * * * 30"}, start, 3 * 3600)
    assert scheduled_utc(emit) == [datetime(2026, 1, 1, h, 0, 30, tzinfo=UTC) for h in (0, 1, 2)]


async def test_schedule_is_computed_in_the_trigger_timezone() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)  # 01:00 in Berlin (CET, UTC+1)
    emit, _ = await run_for({"schedule": "0 9 * * *", "timezone": "Europe/Berlin"}, start, 86400)

    assert scheduled_utc(emit) == [datetime(2026, 1, 1, 8, tzinfo=UTC)]
    assert ticks(emit)[0].scheduled_at.tzinfo == BERLIN
    assert ticks(emit)[0].scheduled_at.hour == 9


# -- daylight saving time (rule: see the docstring of sagaz.sources.cron) ------------------


async def test_spring_forward_daily_tick_in_the_gap_fires_once_after_the_gap() -> None:
    # 2026-03-29 02:00 CET -> 03:00 CEST: 02:30 does not exist that day
    start = datetime(2026, 3, 27, 12, tzinfo=UTC)
    emit, _ = await run_for(
        {"schedule": "30 2 * * *", "timezone": "Europe/Berlin"}, start, 3 * 86400
    )

    local = [t.scheduled_at for t in ticks(emit)]
    assert [(t.day, t.hour, t.minute) for t in local] == [(28, 2, 30), (29, 3, 0), (30, 2, 30)]
    assert scheduled_utc(emit)[1] == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)


async def test_spring_forward_hourly_fires_23_times_and_never_twice() -> None:
    start = datetime(2026, 3, 28, 23, tzinfo=UTC)  # 00:00 local on the short day
    emit, _ = await run_for(
        {"schedule": "0 * * * *", "timezone": "Europe/Berlin"}, start, 23 * 3600
    )

    hours = [t.scheduled_at.hour for t in ticks(emit)]
    assert hours == [1, *range(3, 24), 0]  # 02:00 does not exist, 03:00 fires once
    assert len(set(emit.identities)) == len(emit.identities) == 23


async def test_fall_back_daily_tick_in_the_repeated_hour_fires_once_at_first_occurrence() -> None:
    # 2026-10-25 03:00 CEST -> 02:00 CET: 02:30 happens twice that day
    start = datetime(2026, 10, 24, 12, tzinfo=UTC)
    emit, _ = await run_for(
        {"schedule": "30 2 * * *", "timezone": "Europe/Berlin"}, start, 3 * 86400
    )

    assert scheduled_utc(emit) == [
        datetime(2026, 10, 25, 0, 30, tzinfo=UTC),  # 02:30 CEST, the first occurrence
        datetime(2026, 10, 26, 1, 30, tzinfo=UTC),  # 02:30 CET
        datetime(2026, 10, 27, 1, 30, tzinfo=UTC),
    ]


async def test_fall_back_hourly_fires_each_wall_hour_once() -> None:
    start = datetime(2026, 10, 24, 22, tzinfo=UTC)  # 00:00 local on the long day
    emit, _ = await run_for(
        {"schedule": "0 * * * *", "timezone": "Europe/Berlin"}, start, 25 * 3600
    )

    hours = [t.scheduled_at.hour for t in ticks(emit)]
    assert hours == [*range(1, 24), 0]  # 24 firings in 25 hours: 02:00 once, not twice
    two_am = [t for t in ticks(emit) if t.scheduled_at.hour == 2]
    assert [t.scheduled_at.astimezone(UTC) for t in two_am] == [
        datetime(2026, 10, 25, 0, tzinfo=UTC)
    ]


async def test_starting_inside_the_repeated_hour_does_not_fire_its_wall_times_again() -> None:
    schedule = CronSchedule("*/5 * * * *", "Europe/Berlin")
    second_pass = datetime(2026, 10, 25, 1, 10, tzinfo=UTC)  # 02:10 CET, the second 02:10
    assert schedule.next_after(second_pass) == datetime(2026, 10, 25, 2, 0, tzinfo=UTC)


# -- catch-up after downtime --------------------------------------------------------------


async def catch_up(options: Mapping[str, Any]) -> tuple[RecordingEmit, RecordingEmit, FakeClock]:
    """Fire two ticks, stop for three hours, restart; return (before, after restart, clock)."""
    clock = FakeClock(datetime(2026, 1, 1, tzinfo=UTC))
    store = MemorySagaStore()
    before = RecordingEmit()
    async with running((make_source({"schedule": "*/5 * * * *"}, clock, store), before)):
        await clock.advance(600)
    assert await store.last_cron_tick(TRIGGER) == datetime(2026, 1, 1, 0, 10, tzinfo=UTC)

    clock.set_time(datetime(2026, 1, 1, 3, 10, tzinfo=UTC))  # outage: 36 ticks missed
    after = RecordingEmit()
    task = asyncio.create_task(make_source(options, clock, store).run(after))
    await parked(clock)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return before, after, clock


@pytest.mark.parametrize(
    ("catchup", "fired"),
    [
        ("none", []),
        ("latest", [datetime(2026, 1, 1, 3, 10, tzinfo=UTC)]),
        (
            "all",
            [datetime(2026, 1, 1, 0, 15, tzinfo=UTC) + timedelta(minutes=5 * i) for i in range(36)],
        ),
    ],
)
async def test_catchup_after_a_three_hour_outage(catchup: str, fired: list[datetime]) -> None:
    before, after, _ = await catch_up({"schedule": "*/5 * * * *", "catchup": catchup})
    assert len(before.deliveries) == 2
    assert scheduled_utc(after) == fired


async def test_catchup_all_is_bounded_by_max_catchup(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="sagaz.sources.cron")
    _, after, _ = await catch_up({"schedule": "*/5 * * * *", "catchup": "all", "max_catchup": 10})

    assert scheduled_utc(after) == [
        datetime(2026, 1, 1, 2, 25, tzinfo=UTC) + timedelta(minutes=5 * i) for i in range(10)
    ]
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "max_catchup=10" in warning.getMessage()
    assert warning.trigger == TRIGGER  # type: ignore[attr-defined]


async def test_schedule_resumes_after_catchup() -> None:
    clock = FakeClock(datetime(2026, 1, 1, 3, 10, tzinfo=UTC))
    store = MemorySagaStore()
    await store.claim_cron_tick(TRIGGER, datetime(2026, 1, 1, 0, 10, tzinfo=UTC), "old")
    emit = RecordingEmit()
    async with running(
        (make_source({"schedule": "*/5 * * * *", "catchup": "latest"}, clock, store), emit)
    ):
        await clock.advance(600)
    assert scheduled_utc(emit) == [datetime(2026, 1, 1, 3, m, tzinfo=UTC) for m in (10, 15, 20)]


async def test_catchup_across_a_spring_forward_gap_fires_the_collapsed_tick_once() -> None:
    clock = FakeClock(datetime(2026, 3, 29, 2, 0, tzinfo=UTC))  # 04:00 CEST
    store = MemorySagaStore()
    await store.claim_cron_tick(TRIGGER, datetime(2026, 3, 29, 0, 0, tzinfo=UTC), "old")  # 01:00
    emit = RecordingEmit()
    options = {"schedule": "*/30 * * * *", "timezone": "Europe/Berlin", "catchup": "all"}
    async with running((make_source(options, clock, store), emit)):
        pass
    # 01:30 CET, then 02:00/02:30 (missing) and 03:00 CEST as one tick, 03:30, 04:00
    assert [(t.hour, t.minute) for t in (x.scheduled_at for x in ticks(emit))] == [
        (1, 30),
        (3, 0),
        (3, 30),
        (4, 0),
    ]


async def test_first_start_misses_nothing_even_on_a_tick() -> None:
    start = datetime(2026, 1, 1, 0, 5, tzinfo=UTC)  # exactly on a tick, never run before
    emit, _ = await run_for({"schedule": "*/5 * * * *", "catchup": "all"}, start, 300)
    assert scheduled_utc(emit) == [datetime(2026, 1, 1, 0, 10, tzinfo=UTC)]


@pytest.mark.parametrize(("catchup", "count"), [("none", 0), ("latest", 1), ("all", 4)])
async def test_falling_behind_while_running_follows_the_catchup_policy(
    catchup: str, count: int
) -> None:
    clock = FakeClock(datetime(2026, 1, 1, tzinfo=UTC))
    emit = RecordingEmit()
    source = make_source({"schedule": "*/5 * * * *", "catchup": catchup}, clock, MemorySagaStore())
    async with running((source, emit)):
        await clock.advance(120)
        clock.set_time(datetime(2026, 1, 1, 0, 22, tzinfo=UTC))  # host suspended 20 min
        await clock.advance(60)  # the source re-reads the wall clock at least every minute
        assert len(emit.deliveries) == count
        await clock.advance(180)  # 00:26
    assert scheduled_utc(emit)[-1] == datetime(2026, 1, 1, 0, 25, tzinfo=UTC)
    assert len(set(emit.identities)) == len(emit.identities) == count + 1


async def test_wall_clock_stepping_back_never_fires_a_tick_twice() -> None:
    clock = FakeClock(datetime(2026, 1, 1, tzinfo=UTC))
    emit = RecordingEmit()
    source = make_source({"schedule": "*/5 * * * *"}, clock, MemorySagaStore())
    async with running((source, emit)):
        await clock.advance(360)  # fired 00:05
        clock.set_time(datetime(2026, 1, 1, 0, 1, tzinfo=UTC))
        await clock.advance(600)  # 00:11 again
    assert scheduled_utc(emit) == [datetime(2026, 1, 1, 0, m, tzinfo=UTC) for m in (5, 10)]


# -- several instances --------------------------------------------------------------------


async def test_two_sources_sharing_a_store_fire_each_tick_once_in_total() -> None:
    clock = FakeClock(datetime(2026, 1, 1, tzinfo=UTC))
    store = MemorySagaStore()
    first, second = RecordingEmit(), RecordingEmit()
    options = {"schedule": "*/5 * * * *"}
    async with running(
        (make_source(options, clock, store, worker_id="a"), first),
        (make_source(options, clock, store, worker_id="b"), second),
    ):
        await clock.advance(3600)

    identities = first.identities + second.identities
    assert len(identities) == len(set(identities)) == 12
    assert sorted(scheduled_utc(first) + scheduled_utc(second)) == [
        datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=5 * i) for i in range(1, 13)
    ]


async def test_two_sources_catching_up_together_fire_each_missed_tick_once() -> None:
    clock = FakeClock(datetime(2026, 1, 1, 1, 0, tzinfo=UTC))
    store = MemorySagaStore()
    await store.claim_cron_tick(TRIGGER, datetime(2026, 1, 1, 0, 0, tzinfo=UTC), "old")
    first, second = RecordingEmit(), RecordingEmit()
    options = {"schedule": "*/5 * * * *", "catchup": "all"}
    async with running(
        (make_source(options, clock, store, worker_id="a"), first),
        (make_source(options, clock, store, worker_id="b"), second),
    ):
        pass
    identities = first.identities + second.identities
    assert len(identities) == len(set(identities)) == 12


# -- errors -------------------------------------------------------------------------------


async def test_emit_errors_are_reported_and_the_schedule_keeps_running() -> None:
    clock = FakeClock(datetime(2026, 1, 1, tzinfo=UTC))
    errors: list[BaseException] = []
    recorded = RecordingEmit()

    async def flaky_emit(delivery: Delivery) -> Any:
        if not recorded.deliveries:
            recorded.deliveries.append(delivery)
            raise ConnectionError("queue unavailable")
        return await recorded(delivery)

    source = make_source({"schedule": "*/5 * * * *"}, clock, MemorySagaStore(), errors=errors)
    task = asyncio.create_task(source.run(flaky_emit))
    await parked(clock)
    await clock.advance(900)
    await stop_intake(task)
    assert [type(e) for e in errors] == [ConnectionError]
    assert len(recorded.deliveries) == 3


class FailingClaimStore(MemorySagaStore):
    def __init__(self) -> None:
        super().__init__()
        self.failures = 1

    async def claim_cron_tick(self, trigger_id: str, tick: datetime, owner: str) -> bool:
        if self.failures:
            self.failures -= 1
            raise OSError("store unreachable")
        return await super().claim_cron_tick(trigger_id, tick, owner)


async def test_store_errors_are_reported_and_the_schedule_keeps_running() -> None:
    clock = FakeClock(datetime(2026, 1, 1, tzinfo=UTC))
    errors: list[BaseException] = []
    emit = RecordingEmit()
    source = make_source({"schedule": "*/5 * * * *"}, clock, FailingClaimStore(), errors=errors)
    async with running((source, emit)):
        await clock.advance(900)
    assert [type(e) for e in errors] == [OSError]
    assert scheduled_utc(emit) == [datetime(2026, 1, 1, 0, m, tzinfo=UTC) for m in (10, 15)]


# -- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "schedule",
    ["61 * * * *", "* * * *", "* * * * * * 2030", "@fortnightly", "0 0 30 2 *", "", 5, "H * * * *"],
)
def test_a_bad_expression_is_rejected_naming_the_option(schedule: object) -> None:
    with pytest.raises(ValueError, match="schedule") as info:
        parse_trigger_options("cron", {"schedule": schedule})
    assert repr(schedule) in str(info.value)


def test_a_bad_timezone_is_rejected_naming_the_option() -> None:
    with pytest.raises(ValueError, match=r"timezone='Mars/Olympus_Mons'.*Europe/Berlin"):
        parse_trigger_options("cron", {"schedule": "@daily", "timezone": "Mars/Olympus_Mons"})
    with pytest.raises(ValueError, match="timezone"):
        parse_trigger_options("cron", {"schedule": "@daily", "timezone": "../etc/passwd"})


@pytest.mark.parametrize(
    ("options", "name"),
    [
        ({"schedule": "@daily", "catchup": "some"}, "catchup='some'"),
        ({"schedule": "@daily", "catchup": "all", "max_catchup": 0}, "max_catchup=0"),
        ({"schedule": "@daily", "max_catchup": True}, "max_catchup=True"),
    ],
)
def test_bad_catchup_options_are_rejected(options: dict[str, Any], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        parse_trigger_options("cron", options)


@pytest.mark.parametrize(
    "schedule",
    [
        "*/5 * * * *",
        "0 * * * * 30",
        "@yearly",
        "@annually",
        "@monthly",
        "@weekly",
        "@daily",
        "@midnight",
        "@HOURLY",
        "0 9 * * mon-fri",
        "0 0 L * *",
    ],
)
def test_valid_expressions_pass(schedule: str) -> None:
    parse_trigger_options(
        "cron", {"schedule": schedule, "timezone": "America/New_York", "catchup": "all"}
    )


def test_a_saga_with_a_bad_schedule_fails_at_class_definition() -> None:
    from sagaz import Saga, trigger

    with pytest.raises(ValueError, match=r"BadCron.*on_tick.*schedule='every day'"):

        class BadCron(Saga):
            @trigger(source="cron", schedule="every day")
            def on_tick(self, tick: CronTick) -> dict[str, Any]:
                return {}


def test_describe() -> None:
    source = make_source(
        {"schedule": "@daily", "timezone": "Europe/Berlin"}, FakeClock(), MemorySagaStore()
    )
    assert source.describe() == {
        "kind": "cron",
        "schedule": "@daily",
        "timezone": "Europe/Berlin",
        "catchup": "none",
        "max_catchup": 100,
    }
    assert source.redeliverable is False


# -- pausing ------------------------------------------------------------------------------


async def test_a_paused_cron_trigger_claims_and_skips_its_ticks_as_paused() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    clock, store, emit = FakeClock(start), MemorySagaStore(), RecordingEmit()
    source = make_source({"schedule": "*/5 * * * *", "catchup": "all"}, clock, store)
    skipped: list[tuple[Any, str]] = []

    async def report_skipped(event: Any, reason: Any) -> None:
        skipped.append((event, reason))

    source.ctx.report_skipped = report_skipped
    async with running((source, emit)):
        await clock.advance(300)  # 00:05 fires
        await source.pause()
        await clock.advance(600)  # 00:10 and 00:15 are skipped
        await source.resume()
        await clock.advance(300)  # 00:20 fires; the skipped ones are not caught up
    minutes = [t.scheduled_at.minute for t in ticks(emit)]
    assert minutes == [5, 20]
    assert [(tick.scheduled_at.minute, reason) for tick, reason in skipped] == [
        (10, "paused"),
        (15, "paused"),
    ]
    assert await store.last_cron_tick(TRIGGER) == start + timedelta(minutes=20)

    # a restart with catchup="all" does not fire the skipped ticks either: they were claimed
    again = RecordingEmit()
    restarted = make_source({"schedule": "*/5 * * * *", "catchup": "all"}, clock, store)
    async with running((restarted, again)):
        await clock.advance(300)
    assert [t.scheduled_at.minute for t in ticks(again)] == [25]


async def test_a_cron_trigger_paused_before_it_runs_catches_up_on_nothing() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    clock, store = FakeClock(start), MemorySagaStore()
    await store.claim_cron_tick(TRIGGER, start, "earlier-run")
    clock.set_time(start + timedelta(minutes=30))  # six ticks missed while down
    source = make_source({"schedule": "*/5 * * * *", "catchup": "all"}, clock, store)
    skipped: list[str] = []

    async def report_skipped(event: Any, reason: Any) -> None:
        skipped.append(reason)

    source.ctx.report_skipped = report_skipped
    await source.pause()  # the engine pauses a paused trigger before it runs
    emit = RecordingEmit()
    async with running((source, emit)):
        await clock.advance(300)
    assert emit.deliveries == []
    assert skipped == ["paused"] * 7  # the six missed (catchup="all") and the next one
