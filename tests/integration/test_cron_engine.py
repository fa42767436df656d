"""Cron triggers end to end through ``TriggerEngine`` on fake time: ticks become completed sagas.

The source-level behaviour (DST, aliases, claims) is in ``tests/unit/test_cron_source.py`` and
``tests/integration/test_cron_postgres.py``; here every tick walks the whole pipeline
(admission, inbox, queue, dispatcher, saga run) and the store is what the tests count.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from sagaz import CronTick, Saga, SagaContext, SagaStatus, TriggerConfig, action, trigger
from sagaz.abc import SagaStore
from sagaz.engine.engine import TriggerEngine
from sagaz.engine.pausing import set_trigger_enabled
from sagaz.storage.memory import MemorySagaStore
from sagaz.storage.postgres import PostgresSagaStore
from sagaz.testing import FakeClock, eventually
from tests.engine_support import RecordingListener
from tests.services import drop_postgres_schema, unique_name

START = datetime(2026, 1, 1, tzinfo=UTC)
EVERY_FIVE_MINUTES = "*/5 * * * *"


def define_report_saga(name: str, runs: list[str], **options: Any) -> type[Saga]:
    """A saga named ``name`` started by a ``*/5`` cron trigger; ``runs`` records the tick of
    every run of its step."""

    class Report(Saga):
        saga_name = name

        @trigger(source="cron", schedule=EVERY_FIVE_MINUTES, **options)
        def on_tick(self, tick: CronTick) -> dict[str, Any]:
            return {"tick": tick.scheduled_at.astimezone(UTC).isoformat()}

        @action("build")
        async def build(self, ctx: SagaContext) -> dict[str, Any]:
            runs.append(ctx["tick"])
            return {"built": True}

    return Report


def ticks_after(start: datetime, count: int) -> list[str]:
    return [(start + timedelta(minutes=5 * i)).isoformat() for i in range(1, count + 1)]


async def completed_per_tick(store: SagaStore, saga_name: str) -> Counter[str]:
    sagas = await store.list_sagas(status=SagaStatus.COMPLETED, saga_name=saga_name, limit=1000)
    return Counter(s.context["tick"] for s in sagas)


async def total_sagas(store: SagaStore, saga_name: str) -> int:
    return len(await store.list_sagas(saga_name=saga_name, limit=1000))


async def settled(
    clock: FakeClock, engines: list[TriggerEngine], store: SagaStore, saga_name: str, count: int
) -> None:
    """Wait (real time, bounded) until ``count`` sagas completed, every cron source sleeps on
    the fake clock again (beside each engine's trigger-state watcher) and no saga runs."""

    async def done() -> bool:
        if clock.sleepers < 2 * len(engines) or any(e.dispatcher.in_flight for e in engines):
            return False
        return sum((await completed_per_tick(store, saga_name)).values()) >= count

    await eventually(done, within=15, what=f"{count} completed sagas and parked cron sources")


async def step_through(
    clock: FakeClock,
    engines: list[TriggerEngine],
    store: SagaStore,
    saga_name: str,
    ticks: int,
    *,
    already: int = 0,
) -> None:
    """Advance the fake clock tick by tick, letting each tick's saga complete."""
    await settled(clock, engines, store, saga_name, already)
    for i in range(1, ticks + 1):
        await clock.advance(300)
        await settled(clock, engines, store, saga_name, already + i)


async def test_every_five_minutes_for_an_hour_starts_twelve_completed_sagas() -> None:
    saga_name = unique_name("report")
    runs: list[str] = []
    define_report_saga(saga_name, runs)
    clock = FakeClock(START)
    store = MemorySagaStore()
    async with TriggerEngine(TriggerConfig(), store, clock=clock) as engine:
        await step_through(clock, [engine], store, saga_name, 12)
        # a little past the hour (but before the next tick) fires nothing more
        await clock.advance(240)
        await settled(clock, [engine], store, saga_name, 12)

    per_tick = await completed_per_tick(store, saga_name)
    assert sorted(per_tick) == ticks_after(START, 12)
    assert set(per_tick.values()) == {1}
    assert await total_sagas(store, saga_name) == 12  # nothing pending, failed or compensated
    assert sorted(runs) == ticks_after(START, 12)
    assert engine.metrics.completed[f"{saga_name}.on_tick"] == 12


@pytest.fixture
async def shared_postgres(postgres_dsn: str) -> AsyncIterator[tuple[SagaStore, SagaStore]]:
    """Two store instances (two pools, as two processes have) on one fresh schema, dropped
    after the test."""
    schema = unique_name("sagaz_cron_engine").replace("-", "_")
    stores = (
        PostgresSagaStore(postgres_dsn, schema=schema, max_size=4),
        PostgresSagaStore(postgres_dsn, schema=schema, max_size=4),
    )
    for store in stores:
        await store.start()
    try:
        yield stores
    finally:
        for store in stores:
            await store.stop()
        await drop_postgres_schema(postgres_dsn, schema)


async def test_two_engines_sharing_postgres_fire_each_tick_once(
    shared_postgres: tuple[SagaStore, SagaStore],
) -> None:
    saga_name = unique_name("report")
    runs: list[str] = []
    define_report_saga(saga_name, runs)
    clock = FakeClock(START)
    first, second = shared_postgres
    engines = [
        TriggerEngine(TriggerConfig(worker_id="worker-a"), first, clock=clock),
        TriggerEngine(TriggerConfig(worker_id="worker-b"), second, clock=clock),
    ]
    for engine in engines:
        await engine.start()
    try:
        await step_through(clock, engines, first, saga_name, 12)
    finally:
        for engine in engines:
            await engine.stop()

    per_tick = await completed_per_tick(second, saga_name)
    assert sorted(per_tick) == ticks_after(START, 12)
    assert set(per_tick.values()) == {1}, per_tick
    assert await total_sagas(first, saga_name) == 12
    # each tick was emitted by exactly one engine (not merely deduplicated by the inbox)
    trigger_id = f"{saga_name}.on_tick"
    received = [e.metrics.received[trigger_id] for e in engines]
    assert sum(received) == 12, received
    assert all(e.metrics.reasons["duplicate"] == 0 for e in engines)
    assert Counter(runs) == Counter(ticks_after(START, 12))


async def test_a_paused_cron_trigger_skips_each_tick_once_across_engines_as_paused(
    shared_postgres: tuple[SagaStore, SagaStore],
) -> None:
    saga_name = unique_name("report")
    runs: list[str] = []
    define_report_saga(saga_name, runs, catchup="all")
    trigger_id = f"{saga_name}.on_tick"
    clock = FakeClock(START)
    first, second = shared_postgres
    listeners = [RecordingListener(), RecordingListener()]
    engines = [
        TriggerEngine(
            TriggerConfig(worker_id=worker, trigger_state_interval_seconds=60),
            store,
            clock=clock,
            listeners=[listener],
        )
        for worker, store, listener in zip(("a", "b"), shared_postgres, listeners, strict=True)
    ]
    for engine in engines:
        await engine.start()
    try:
        await step_through(clock, engines, first, saga_name, 1)  # 00:05 fires
        await set_trigger_enabled(second, trigger_id, False)  # as `sagaz triggers pause`
        await clock.advance(60)  # both engines read it within the watch interval
        await eventually(lambda: all(e.paused_triggers() for e in engines))
        for _ in range(3):  # 00:10, 00:15, 00:20: claimed once each, skipped as paused
            await clock.advance(300)
            await settled(clock, engines, first, saga_name, 1)
        await set_trigger_enabled(first, trigger_id, True)
        await clock.advance(60)
        await eventually(lambda: not any(e.paused_triggers() for e in engines))
        await clock.advance(180)  # 00:25 fires; the skipped ticks are not caught up
        await settled(clock, engines, first, saga_name, 2)
    finally:
        for engine in engines:
            await engine.stop()

    assert sorted(runs) == [(START + timedelta(minutes=m)).isoformat() for m in (5, 25)]
    skipped = [tick for listener in listeners for tick, reason in listener.filtered]
    assert sorted(t.scheduled_at.minute for t in skipped) == [10, 15, 20]
    assert {reason for listener in listeners for _, reason in listener.filtered} == {"paused"}
    assert sum(e.metrics.reasons["paused"] for e in engines) == 3
    assert await first.last_cron_tick(trigger_id) == START + timedelta(minutes=25)


@pytest.mark.parametrize(("catchup", "expected"), [("none", 0), ("latest", 1), ("all", 36)])
async def test_catchup_after_a_three_hour_outage(catchup: str, expected: int) -> None:
    saga_name = unique_name("report")
    runs: list[str] = []
    define_report_saga(saga_name, runs, catchup=catchup)
    trigger_id = f"{saga_name}.on_tick"
    clock = FakeClock(START)
    store = MemorySagaStore()
    await store.start()
    try:
        # before the outage: one tick fires and completes
        async with TriggerEngine(TriggerConfig(worker_id="before"), store, clock=clock) as engine:
            await step_through(clock, [engine], store, saga_name, 1)
        last = START + timedelta(minutes=5)
        assert await store.last_cron_tick(trigger_id) == last

        # the process is down for three hours: 36 ticks are missed
        clock.set_time(last + timedelta(hours=3))
        async with TriggerEngine(TriggerConfig(worker_id="after"), store, clock=clock) as engine:
            await settled(clock, [engine], store, saga_name, 1 + expected)
            caught_up = await completed_per_tick(store, saga_name)
            # and the schedule goes on after the catch-up
            await clock.advance(300)
            await settled(clock, [engine], store, saga_name, 2 + expected)
        per_tick = await completed_per_tick(store, saga_name)
    finally:
        await store.stop()

    missed = ticks_after(last, 36)
    assert sorted(caught_up) == sorted([last.isoformat(), *missed[len(missed) - expected :]])
    assert set(caught_up.values()) == {1}
    next_tick = (last + timedelta(hours=3, minutes=5)).isoformat()
    assert sorted(per_tick) == sorted([*caught_up, next_tick])
    assert await total_sagas(store, saga_name) == 2 + expected
    assert len(runs) == 2 + expected


async def test_a_stopped_engine_leaves_no_cron_task_behind() -> None:
    saga_name = unique_name("report")
    define_report_saga(saga_name, [])
    clock = FakeClock(START)
    engine = TriggerEngine(TriggerConfig(), MemorySagaStore(), clock=clock)
    await engine.start()
    # the cron source and the trigger-state watcher
    await eventually(lambda: clock.sleepers == 2, what="the cron source to sleep")
    await engine.stop()
    assert clock.sleepers == 0  # the source's sleep was cancelled with its task
