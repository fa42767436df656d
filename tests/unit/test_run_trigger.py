"""``sagaz.run_trigger`` and ``sagaz.backfill_trigger`` without ``store=``: the store the
process configured, started and stopped around the call."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import sagaz
from sagaz import CronTick, Saga, SagaContext, SagaStatus, action, trigger
from sagaz.config import reset_configuration
from sagaz.storage.sqlite import SQLiteSagaStore


@pytest.fixture
def configured(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "configured.db"
    sagaz.configure(store=SQLiteSagaStore(path))
    yield path
    reset_configuration()


async def test_without_store_the_configured_store_is_used_and_left_stopped(
    configured: Path,
) -> None:
    class Nightly(Saga):
        saga_name = "configured-nightly"

        @trigger(source="cron", schedule="0 2 * * *")
        def on_tick(self, tick: CronTick) -> dict[str, Any]:
            return {"day": tick.scheduled_at.date().isoformat()}

        @action("build")
        async def build(self, ctx: SagaContext) -> dict[str, Any]:
            return {}

    [now] = (await sagaz.run_trigger("configured-nightly.on_tick")).runs
    week = await sagaz.backfill_trigger(
        "configured-nightly.on_tick",
        datetime(2026, 1, 1, tzinfo=UTC),
        datetime(2026, 1, 7, 23, tzinfo=UTC),
    )
    assert now.status == "completed"
    assert [run.tick.day for run in week.runs if run.tick] == [1, 2, 3, 4, 5, 6, 7]
    async with SQLiteSagaStore(configured) as store:
        sagas = await store.list_sagas(saga_name="configured-nightly", limit=100)
    assert len(sagas) == 8 and {s.status for s in sagas} == {SagaStatus.COMPLETED}
