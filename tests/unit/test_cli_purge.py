"""``sagaz sagas purge --older-than AGE`` and ``sagaz dlq purge --older-than AGE`` on a SQLite
store."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sagaz.cli.main import main
from sagaz.records import DeadLetterRecord, OutboxMessage, SagaRecord, StepRecord
from sagaz.storage.sqlite import SQLiteSagaStore
from sagaz.types import SagaStatus, StepStatus


async def _seed_sagas(db: Path) -> None:
    async with SQLiteSagaStore(db) as store:
        for saga_id, status in [
            ("done", SagaStatus.COMPLETED),
            ("failed", SagaStatus.FAILED),
            ("running", SagaStatus.RUNNING),
        ]:
            await store.save_step(StepRecord(saga_id, "charge", StepStatus.COMPLETED))
            await store.save_saga(SagaRecord(saga_id, "shop", status, {"n": 1}))
        # finished, but its terminal event is not published yet: kept
        await store.save_saga(
            SagaRecord("unsent", "shop", SagaStatus.COMPLETED, {}),
            [OutboxMessage("unsent", "orders", {"n": 1})],
        )


async def _saga_ids(db: Path) -> set[str]:
    async with SQLiteSagaStore(db) as store:
        return {r.saga_id for r in await store.list_sagas()}


def test_sagas_purge_deletes_finished_sagas_older_than_the_age(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "sagas.db"
    asyncio.run(_seed_sagas(db))
    store = ["--store", f"sqlite:///{db}"]

    assert main([*store, "sagas", "purge", "--older-than", "1h"]) == 0
    assert "purged 0 finished saga(s)" in capsys.readouterr().out
    assert asyncio.run(_saga_ids(db)) == {"done", "failed", "running", "unsent"}

    assert main([*store, "sagas", "purge", "--older-than", "0s"]) == 0
    assert "purged 2 finished saga(s)" in capsys.readouterr().out
    assert asyncio.run(_saga_ids(db)) == {"running", "unsent"}


def test_sagas_purge_needs_an_age(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main(["--store", f"sqlite:///{tmp_path / 'x.db'}", "sagas", "purge"])
    assert "--older-than" in capsys.readouterr().err


async def _seed_dead_letters(db: Path, count: int) -> None:
    async with SQLiteSagaStore(db) as store:
        for n in range(count):
            await store.add_dead_letter(
                DeadLetterRecord("shop.on_order", "shop", {"n": n}, "boom", "invalid")
            )


async def _dead_payloads(db: Path) -> list[object]:
    async with SQLiteSagaStore(db) as store:
        return [d.payload for d in await store.list_dead_letters()]


def test_dlq_purge_older_than_keeps_the_newer_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "dlq.db"
    asyncio.run(_seed_dead_letters(db, 2))
    store = ["--store", f"sqlite:///{db}"]

    assert main([*store, "dlq", "purge", "--older-than", "1h"]) == 0
    assert "purged 0 dead letter(s)" in capsys.readouterr().out
    assert main([*store, "dlq", "purge", "--older-than", "0s"]) == 0
    assert "purged 2 dead letter(s)" in capsys.readouterr().out
    assert asyncio.run(_dead_payloads(db)) == []
