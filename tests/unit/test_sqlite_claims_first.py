"""The SQLite store hands a group's event claims their results a loop turn before the group's
other callers, whose results wait until the next group's SQL ran (its COMMIT then syncs in
the committer's thread while they run on). Every result still comes after its own group's
COMMIT, and a loop kept busy by another task does not starve the writes."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import timedelta
from pathlib import Path

from sagaz.clock import utcnow
from sagaz.records import ClaimOutcome, SagaRecord
from sagaz.storage.sqlite import SQLiteSagaStore
from sagaz.types import SagaStatus
from tests.busy_loop import busy_loop


def claimed(saga_id: str) -> SagaRecord:
    lease = utcnow() + timedelta(seconds=60)
    return SagaRecord(saga_id, "orders", SagaStatus.RUNNING, {}, owner="w1", lease_expires_at=lease)


def stored(path: Path, saga_id: str) -> bool:
    """Whether another connection sees the saga's row (committed)."""
    conn = sqlite3.connect(path)
    try:
        row = conn.execute("SELECT 1 FROM saga_executions WHERE saga_id = ?", (saga_id,))
        return row.fetchone() is not None
    finally:
        conn.close()


async def test_a_groups_claims_get_their_results_before_its_other_callers(tmp_path: Path) -> None:
    path = tmp_path / "sagaz.db"
    order: list[str] = []
    seen: dict[str, bool] = {}

    async with SQLiteSagaStore(path) as store:
        await store.create_saga(SagaRecord("warm", "orders", SagaStatus.RUNNING, {}))

        async def create(saga_id: str) -> None:
            await store.create_saga(SagaRecord(saga_id, "orders", SagaStatus.RUNNING, {}))
            order.append(saga_id)
            seen[saga_id] = stored(path, saga_id)

        async def claim(saga_id: str) -> None:
            outcome = (await store.claim_event("t", saga_id, claimed(saga_id))).outcome
            assert outcome is ClaimOutcome.CLAIMED
            order.append(saga_id)
            seen[saga_id] = stored(path, saga_id)

        # one group: queued in this order, the creates ahead of the claims
        await asyncio.gather(create("c1"), create("c2"), claim("e1"), claim("e2"))

    assert order == ["e1", "e2", "c1", "c2"]  # the claims' callers first, each part in order
    assert seen == {"c1": True, "c2": True, "e1": True, "e2": True}  # each after its COMMIT


async def test_the_others_wait_for_the_next_groups_sql_then_run_during_its_commit(
    tmp_path: Path,
) -> None:
    # a claim's caller claims again at once: its next claim forms the next group, and the
    # creates of the first group get their results only once that group's SQL ran
    path = tmp_path / "sagaz.db"
    order: list[str] = []

    async with SQLiteSagaStore(path) as store:
        await store.create_saga(SagaRecord("warm", "orders", SagaStatus.RUNNING, {}))

        async def create(saga_id: str) -> None:
            await store.create_saga(SagaRecord(saga_id, "orders", SagaStatus.RUNNING, {}))
            order.append(saga_id)

        async def claims() -> None:
            await store.claim_event("t", "e1", claimed("e1"))
            order.append("e1")
            await store.claim_event("t", "e2", claimed("e2"))
            order.append("e2")

        await asyncio.gather(create("c1"), claims())

    assert order == ["e1", "c1", "e2"]


async def test_claims_and_other_writes_go_on_while_another_task_keeps_the_loop_busy(
    tmp_path: Path,
) -> None:
    # A guard: the COMMIT that runs in the committer's thread is waited for with the loop
    # blocked after one turn (a thread that needs the GIL back from a loop that never blocks
    # gets it by chance). On the base and on this code: about 1 s.
    async def writer(store: SQLiteSagaStore, w: int) -> None:
        for n in range(500):
            saga_id = f"{w}-{n}"
            if w % 2:
                await store.claim_event("t", saga_id, claimed(saga_id))
            else:
                await store.create_saga(SagaRecord(saga_id, "orders", SagaStatus.RUNNING, {}))

    store = SQLiteSagaStore(tmp_path / "sagaz.db")
    # generous: a loaded machine must pass it
    async with store, busy_loop(), asyncio.timeout(30):
        await asyncio.gather(*(writer(store, w) for w in range(20)))


async def test_the_others_are_not_kept_waiting_while_the_next_group_waits_for_a_lock(
    tmp_path: Path,
) -> None:
    # the next group finds the file locked by another process and waits for it in the
    # committer's thread: the first group's other callers (committed) have their results
    # meanwhile, not once the lock is released
    path = tmp_path / "sagaz.db"
    other = sqlite3.connect(path, isolation_level=None)
    created = asyncio.Event()

    async with SQLiteSagaStore(path) as store:
        await store.create_saga(SagaRecord("warm", "orders", SagaStatus.RUNNING, {}))

        async def create() -> None:
            await store.create_saga(SagaRecord("c1", "orders", SagaStatus.RUNNING, {}))
            created.set()

        async def claims() -> None:
            await store.claim_event("t", "e1", claimed("e1"))
            other.execute("BEGIN IMMEDIATE")  # before the next group's SQL runs
            await store.claim_event("t", "e2", claimed("e2"))

        claiming = asyncio.gather(create(), claims())
        try:
            async with asyncio.timeout(2):  # the store waits for the lock 5 s
                await created.wait()
            assert other.in_transaction  # still held: c1 did not wait for it
        finally:
            if other.in_transaction:
                other.execute("ROLLBACK")
        await claiming
    other.close()
    assert stored(path, "e2")
