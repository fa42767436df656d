"""Two cron sources (two workers) sharing one real PostgreSQL store fire each tick once."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from sagaz.events import CronTick
from sagaz.sources import cron
from sagaz.sources.cron import CronSource
from sagaz.storage.postgres import PostgresSagaStore
from sagaz.testing import eventually
from sagaz.testing.clock import FakeClock
from sagaz.triggers.options import CronOptions
from tests.recording_emit import RecordingEmit, source_context, stop_intake
from tests.services import drop_postgres_schema, unique_name

START = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
async def stores(postgres_dsn: str) -> AsyncIterator[tuple[PostgresSagaStore, PostgresSagaStore]]:
    """Two store instances (two pools, as two processes would have) on one fresh schema."""
    schema = unique_name("sagaz_cron").replace("-", "_")
    first = PostgresSagaStore(postgres_dsn, schema=schema, max_size=2)
    second = PostgresSagaStore(postgres_dsn, schema=schema, max_size=2)
    await first.start()
    await second.start()
    try:
        yield first, second
    finally:
        await first.stop()
        await second.stop()
        await drop_postgres_schema(postgres_dsn, schema)


def make_source(
    trigger_id: str,
    options: dict[str, Any],
    clock: FakeClock,
    store: PostgresSagaStore,
    worker: str,
) -> CronSource:
    ctx = source_context(trigger_id)
    ctx.clock, ctx.store, ctx.worker_id = clock, store, worker
    return cron.create(CronOptions.model_validate(options), ctx)


@contextlib.asynccontextmanager
async def two_workers(
    trigger_id: str,
    options: dict[str, Any],
    clock: FakeClock,
    stores: tuple[PostgresSagaStore, PostgresSagaStore],
) -> AsyncIterator[tuple[RecordingEmit, RecordingEmit]]:
    emits = (RecordingEmit(), RecordingEmit())
    tasks = [
        asyncio.create_task(make_source(trigger_id, options, clock, store, worker).run(emit))
        for store, worker, emit in zip(stores, ("worker-a", "worker-b"), emits, strict=True)
    ]
    try:
        yield emits
    finally:
        for task in tasks:
            await stop_intake(task)


def fired(emits: tuple[RecordingEmit, RecordingEmit]) -> list[str]:
    return emits[0].identities + emits[1].identities


async def settled(clock: FakeClock, emits: tuple[RecordingEmit, RecordingEmit], count: int) -> None:
    """Wait (real time, bounded) until ``count`` ticks fired and both workers sleep again."""
    await eventually(
        lambda: len(fired(emits)) >= count and clock.sleepers == 2,
        within=10,
        what=f"{count} ticks fired and both workers parked (fired {len(fired(emits))})",
    )


async def test_two_workers_sharing_postgres_fire_each_tick_once(
    stores: tuple[PostgresSagaStore, PostgresSagaStore],
) -> None:
    trigger_id = unique_name("reports") + ".on_tick"
    clock = FakeClock(START)
    async with two_workers(trigger_id, {"schedule": "*/5 * * * *"}, clock, stores) as emits:
        await settled(clock, emits, 0)
        for i in range(1, 13):
            # step to the next tick and let both workers finish their claim (real I/O)
            await clock.advance(300)
            await settled(clock, emits, i)

    identities = fired(emits)
    assert len(identities) == len(set(identities)) == 12
    ticks = sorted(t.scheduled_at for e in emits for t in e.payloads if isinstance(t, CronTick))
    assert ticks == [START + timedelta(minutes=5 * i) for i in range(1, 13)]
    assert await stores[1].last_cron_tick(trigger_id) == START + timedelta(hours=1)


async def test_two_workers_catching_up_on_postgres_fire_each_missed_tick_once(
    stores: tuple[PostgresSagaStore, PostgresSagaStore],
) -> None:
    trigger_id = unique_name("reports") + ".on_tick"
    await stores[0].claim_cron_tick(trigger_id, START, "worker-before-the-outage")
    clock = FakeClock(START + timedelta(hours=1))  # 12 ticks missed
    options = {"schedule": "*/5 * * * *", "catchup": "all"}
    async with two_workers(trigger_id, options, clock, stores) as emits:
        await settled(clock, emits, 12)

    identities = fired(emits)
    assert len(identities) == len(set(identities)) == 12
