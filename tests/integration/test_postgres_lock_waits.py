"""Row locks held by another transaction of the PostgreSQL store, and writes queued before
another, where they would make workers wait on each other (all found by the frozen-worker
chaos test):

- a worker frozen (SIGSTOP, a long pause) or cut off in the middle of a transaction holds the
  rows it locked: its sessions are ended by the server once idle in a transaction for
  ``idle_transaction_timeout`` (5 s by default), which releases them. Before, the frozen
  worker's open group kept the live one's claims of its events waiting for 60 s (the command
  timeout): none of its sagas could be taken over, every partition of the live one stalled;
- the lease renewal skips the rows another transaction holds instead of waiting on them: an
  UPDATE of all of a worker's rows locks them in no particular order, a group's checkpoints
  and claims in theirs, and the two deadlocked (and waited on each other for 20 s and more,
  everything else queued behind them);
- the renewal is not an operation of the group committer: queued behind its backlog it
  landed seconds late, past a short lease (another worker took a live worker's sagas over).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
import pytest

from sagaz.clock import utcnow
from sagaz.records import OutboxMessage, SagaRecord
from sagaz.storage.postgres import PostgresSagaStore
from sagaz.testing import eventually
from sagaz.types import SagaStatus
from tests.services import drop_postgres_schema, unique_name


@pytest.fixture
async def schema(postgres_dsn: str) -> AsyncIterator[str]:
    name = unique_name("sagaz_idle")
    try:
        yield name
    finally:
        await drop_postgres_schema(postgres_dsn, name)


async def test_a_transaction_left_open_by_a_frozen_worker_stops_holding_its_rows(
    postgres_dsn: str, schema: str
) -> None:
    lapsed = utcnow() - timedelta(seconds=1)
    frozen = PostgresSagaStore(postgres_dsn, schema=schema)
    live = PostgresSagaStore(postgres_dsn, schema=schema)
    async with frozen, live:
        await frozen.save_saga(
            SagaRecord("s-1", "order", SagaStatus.RUNNING, {}, owner="a", lease_expires_at=lapsed)
        )
        # the frozen worker's group: a transaction of its pool, the saga row locked, no COMMIT
        async with frozen._pool.acquire() as conn:
            transaction = conn.transaction()
            await transaction.start()
            await conn.execute(
                f'UPDATE "{schema}".saga_executions SET owner = $1 WHERE saga_id = $2', "a", "s-1"
            )
            # its lease is over: the live worker takes the saga over once the row is free
            async with asyncio.timeout(20):  # (the command timeout is 60 s)
                assert await live.claim_saga("s-1", "b", utcnow() + timedelta(seconds=30))
            # thawed, the frozen worker finds its session ended: the store is "unavailable"
            # (its operations are retried once it is back), not failed
            # (25P03, a closed connection, or asyncpg's protocol tripping over the ending)
            errors = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError)
            with pytest.raises(errors) as ended:
                await conn.execute("SELECT 1")
            assert frozen._unavailable(ended.value), repr(ended.value)
        saga = await frozen.get_saga("s-1")  # the pool replaced the ended connection
        assert saga is not None and saga.owner == "b"


async def test_renewing_leases_skips_the_rows_another_transaction_holds(
    postgres_dsn: str, schema: str
) -> None:
    later = utcnow() + timedelta(seconds=30)
    async with PostgresSagaStore(postgres_dsn, schema=schema) as store:
        for saga_id in ("s-1", "s-2", "s-3"):
            await store.save_saga(
                SagaRecord(
                    saga_id, "order", SagaStatus.RUNNING, {}, owner="a", lease_expires_at=later
                )
            )
        holder = await asyncpg.connect(postgres_dsn)  # another transaction: a checkpoint
        try:
            async with holder.transaction():
                await holder.execute(
                    f'SELECT 1 FROM "{schema}".saga_executions WHERE saga_id = $1 FOR UPDATE',
                    "s-2",
                )
                renewed = utcnow() + timedelta(minutes=5)
                async with asyncio.timeout(10):  # it waited as long as the holder did
                    assert await store.renew_leases("a", renewed) == 2
        finally:
            await holder.close()
        leases = {s.saga_id: s.lease_expires_at for s in await store.list_sagas()}
        assert leases["s-1"] == leases["s-3"] == renewed
        assert leases["s-2"] == later  # renewed by the next renewal
        assert await store.renew_leases("a", renewed) == 3


async def test_renewing_leases_does_not_wait_behind_the_writes_queued_before_it(
    postgres_dsn: str, schema: str
) -> None:
    # queued in the group committer behind a backlog (here: writes of a row another
    # transaction holds, on every connection the committer may use, and more queued), a
    # renewal used to land seconds late under load, past a short lease: another worker took
    # a live worker's sagas over
    later = utcnow() + timedelta(seconds=30)
    lapsed = utcnow() - timedelta(seconds=1)  # "held" is claimable: its claims wait on it
    async with PostgresSagaStore(postgres_dsn, schema=schema) as store:
        for saga_id, owner, lease in (("mine", "a", later), ("held", "c", lapsed)):
            await store.save_saga(
                SagaRecord(
                    saga_id, "order", SagaStatus.RUNNING, {}, owner=owner, lease_expires_at=lease
                )
            )
        holder = await asyncpg.connect(postgres_dsn)
        blocked: list[asyncio.Task[bool]] = []
        try:
            async with holder.transaction():
                await holder.execute(
                    f'SELECT 1 FROM "{schema}".saga_executions WHERE saga_id = $1 FOR UPDATE',
                    "held",
                )
                for n in range(8):  # one group after another, each waiting on the row
                    claim = store.claim_saga("held", f"w{n}", later)
                    blocked.append(asyncio.ensure_future(claim))
                    await asyncio.sleep(0.05)
                renewed = utcnow() + timedelta(minutes=5)
                async with asyncio.timeout(10):  # the writes before it wait as long as the holder
                    assert await store.renew_leases("a", renewed) == 1
                assert not any(task.done() for task in blocked)
        finally:
            await holder.close()
            await asyncio.gather(*blocked, return_exceptions=True)
        mine = await store.get_saga("mine")
        assert mine is not None and mine.lease_expires_at == renewed


async def test_a_group_run_again_an_operation_at_a_time_holds_no_row_meanwhile(
    postgres_dsn: str, schema: str
) -> None:
    # a group one operation of which fails is run again an operation at a time; in
    # savepoints of one transaction, every row it had written stayed locked until its last
    # operation was done (a thawed worker's groups of hundreds held them for 25 s and more,
    # the other worker's writes of those rows waiting as long)
    later = utcnow() + timedelta(seconds=30)
    lapsed = utcnow() - timedelta(seconds=1)  # "held" is claimable: its claim waits on it
    async with PostgresSagaStore(postgres_dsn, schema=schema) as store:
        for saga_id, lease in (("early", later), ("held", lapsed)):
            await store.save_saga(
                SagaRecord(
                    saga_id, "order", SagaStatus.RUNNING, {}, owner="c", lease_expires_at=lease
                )
            )
        holder = await asyncpg.connect(postgres_dsn)
        other = await asyncpg.connect(postgres_dsn)  # another worker's write of "early"
        try:
            async with holder.transaction():
                await holder.execute(
                    f'SELECT 1 FROM "{schema}".saga_executions WHERE saga_id = $1 FOR UPDATE',
                    "held",
                )
                broken = OutboxMessage("s-3", None, {"ok": True})  # type: ignore[arg-type]
                group = asyncio.gather(  # one group, in this order
                    store.save_saga(
                        SagaRecord(
                            "early",
                            "order",
                            SagaStatus.RUNNING,
                            {"n": 1},
                            owner="c",
                            lease_expires_at=later,
                        )
                    ),
                    store.save_checkpoint(  # fails (NOT NULL): the group runs again
                        SagaRecord("s-3", "order", SagaStatus.RUNNING, {}), [], [broken]
                    ),
                    store.claim_saga("held", "b", later),  # waits on the holder
                    return_exceptions=True,
                )

                async def claim_waits() -> bool:  # the group is at its last operation
                    waiting = await other.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                        "AND query LIKE $1",
                        f"%{schema}%",
                    )
                    return bool(waiting)

                await eventually(claim_waits, what="the group's claim waiting on the holder")
                try:
                    async with asyncio.timeout(10):  # the group waits as long as the holder
                        status = await other.execute(
                            f'UPDATE "{schema}".saga_executions SET attempt = 2 WHERE saga_id = $1',
                            "early",
                        )
                    assert status == "UPDATE 1"
                    assert not group.done()
                finally:
                    await holder.execute("SELECT 1")  # (the holder commits below)
            outcomes = await group
        finally:
            await holder.close()
            await other.close()
        assert outcomes[0] is None and outcomes[2] is True
        assert isinstance(outcomes[1], asyncpg.NotNullViolationError)
