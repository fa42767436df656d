"""What every store forgets with age (memory, SQLite, PostgreSQL, Redis): finished sagas with
their steps, history and outbox (``purge_sagas``), old dead letters (``purge_dead_letters``),
and the rows of expired leases and full token buckets (``purge_expired``), so that neither many
sagas, nor a flood of bad events, nor many distinct keys grow the store without bound.
"""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime, timedelta

import pytest

from sagaz.abc import SagaStore
from sagaz.clock import utcnow
from sagaz.records import (
    ClaimOutcome,
    DeadLetterRecord,
    OutboxMessage,
    SagaAction,
    SagaControlRequest,
    SagaHistoryRecord,
    SchemaVersions,
    StepRecord,
    TriggerExecutionRecord,
)
from sagaz.storage import MemorySagaStore, PostgresSagaStore, RedisSagaStore, SQLiteSagaStore
from sagaz.storage.postgres import retention as postgres_retention
from sagaz.storage.redis import retention as redis_retention
from sagaz.storage.sqlite import retention as sqlite_retention
from sagaz.testing import eventually
from sagaz.types import SagaStatus, StepStatus
from tests.contract.store_backends import Backend, from_now, saga_record
from tests.schema_support import rewind_schema

FINISHED = (
    SagaStatus.COMPLETED,
    SagaStatus.COMPENSATED,
    SagaStatus.FAILED,
    SagaStatus.CANCELLED,
)


async def _finish(store: SagaStore, saga_id: str, status: SagaStatus, **changes: object) -> None:
    """A saga that ran one step, wrote an outbox message (published) and a history entry."""
    await store.save_step(
        StepRecord(saga_id, "charge", StepStatus.COMPLETED),
        [OutboxMessage(saga_id, "orders", {"saga": saga_id})],
    )
    await store.add_saga_history(SagaHistoryRecord(saga_id, "resume_requested"))
    await store.save_saga(saga_record(saga_id, status=status, **changes))  # type: ignore[arg-type]
    await store.mark_outbox_sent([m.id for m in await store.list_saga_outbox(saga_id) if m.id])


async def _moment() -> datetime:
    """A cutoff strictly between what was saved before and what is saved after it."""
    await asyncio.sleep(0.01)  # the stores' timestamps: microseconds, not always monotonic
    moment = utcnow()
    await asyncio.sleep(0.01)
    return moment


async def _gone(store: SagaStore, saga_id: str) -> bool:
    return (
        await store.get_saga(saga_id) is None
        and await store.get_steps(saga_id) == []
        and await store.list_saga_history(saga_id) == []
        and await store.list_saga_outbox(saga_id) == []
    )


async def test_purge_sagas_deletes_finished_sagas_older_than_the_cutoff_with_their_rows(
    store: SagaStore,
) -> None:
    for status in FINISHED:
        await _finish(store, f"old-{status.value}", status)
    await store.save_saga(saga_record("running", status=SagaStatus.RUNNING))
    await store.save_saga(saga_record("pending", status=SagaStatus.PENDING))
    cutoff = await _moment()
    await _finish(store, "recent", SagaStatus.COMPLETED)

    assert await store.purge_sagas(cutoff - timedelta(hours=1)) == 0
    assert await store.purge_sagas(cutoff) == len(FINISHED)
    for status in FINISHED:
        assert await _gone(store, f"old-{status.value}")
    kept = {r.saga_id for r in await store.list_sagas()}
    assert kept == {"running", "pending", "recent"}
    assert [s.name for s in await store.get_steps("recent")] == ["charge"]
    assert len(await store.list_saga_outbox("recent")) == 1
    assert await store.purge_sagas(cutoff) == 0

    # a live saga is never finished, whatever its age
    assert await store.purge_sagas(utcnow() + timedelta(days=1)) == 1  # "recent"
    assert {r.saga_id for r in await store.list_sagas()} == {"running", "pending"}
    assert {r.saga_id for r in await store.list_sagas(status=SagaStatus.COMPLETED)} == set()


async def test_purge_sagas_goes_oldest_first_in_batches_of_limit(store: SagaStore) -> None:
    for n in range(5):
        await _finish(store, f"s{n}", SagaStatus.COMPLETED)
        await asyncio.sleep(0.002)
    later = utcnow() + timedelta(days=1)

    assert await store.purge_sagas(later, limit=2) == 2
    assert {r.saga_id for r in await store.list_sagas()} == {"s2", "s3", "s4"}
    assert await store.purge_sagas(later, limit=2) == 2
    assert await store.purge_sagas(later, limit=2) == 1
    assert await store.purge_sagas(later, limit=2) == 0
    assert await store.list_sagas() == []


async def test_purge_sagas_keeps_a_saga_whose_retry_request_or_outbox_is_still_due(
    store: SagaStore,
) -> None:
    # compensated, its event's inbox row still pending: the engine retries it after a backoff
    await store.claim_inbox("t", "k", "retrying", "w1", from_now())
    await _finish(store, "retrying", SagaStatus.COMPENSATED, owner="w1", trigger_id="t")
    # an operator asked to resume it
    await _finish(store, "requested", SagaStatus.FAILED)
    assert await store.add_saga_request(SagaControlRequest("requested", SagaAction.RESUME))
    # the relay has not published its terminal event yet
    await store.save_saga(
        saga_record("unsent", status=SagaStatus.COMPLETED), [OutboxMessage("unsent", "orders", 1)]
    )
    later = utcnow() + timedelta(days=1)

    assert await store.purge_sagas(later) == 0
    assert {r.saga_id for r in await store.list_sagas()} == {"retrying", "requested", "unsent"}

    await store.complete_inbox("t", "k")  # dead-lettered after its last retry
    assert await store.finish_saga_request("requested", SagaAction.RESUME)
    await store.mark_outbox_sent([m.id for m in await store.fetch_outbox() if m.id])
    assert await store.purge_sagas(later) == 3
    for saga_id in ("retrying", "requested", "unsent"):
        assert await _gone(store, saga_id)
    assert await store.fetch_outbox() == []


async def test_sagas_kept_in_front_do_not_hold_back_the_deletable_ones_behind_them(
    store: SagaStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_retention, "_SCAN_FACTOR", 1)  # a window of `limit` entries
    for n in range(5):  # the oldest: each with an unpublished outbox message
        await store.save_saga(
            saga_record(f"kept{n}", status=SagaStatus.COMPLETED),
            [OutboxMessage(f"kept{n}", "t", n)],
        )
    for n in range(3):
        await _finish(store, f"old{n}", SagaStatus.COMPLETED)
    later = utcnow() + timedelta(days=1)

    assert await store.purge_sagas(later, limit=2) == 2
    assert await store.purge_sagas(later, limit=2) == 1
    assert await store.purge_sagas(later, limit=2) == 0
    assert {r.saga_id for r in await store.list_sagas()} == {f"kept{n}" for n in range(5)}
    # published at last: their turn
    await store.mark_outbox_sent([m.id for m in await store.fetch_outbox() if m.id])
    assert await store.purge_sagas(utcnow() + timedelta(days=1), limit=10) == 5


async def test_an_abandoned_inbox_row_is_purged_and_no_longer_keeps_its_saga(
    store: SagaStore,
) -> None:
    """A worker died holding the row (a retry due, or a saga recovery finished without the
    event's key): once its lease has long expired and the event never came back, the row is
    forgotten like a completed one, and its finished saga is no longer kept for it."""
    long_ago = utcnow() - timedelta(hours=2)
    await store.claim_inbox("t", "dead", "s-dead", "w-dead", long_ago)
    await _finish(store, "s-dead", SagaStatus.COMPENSATED, owner="w-dead")
    await store.claim_inbox("t", "live", "s-live", "w-live", from_now())
    await _finish(store, "s-live", SagaStatus.COMPENSATED, owner="w-live")

    assert await store.purge_sagas(utcnow() + timedelta(days=1)) == 1  # not kept: w-dead died
    assert await store.get_saga("s-dead") is None
    assert await store.purge_expired(utcnow() - timedelta(hours=3)) == 0  # expired since
    assert await store.purge_expired(utcnow() - timedelta(hours=1)) == 1
    back = await store.claim_inbox("t", "dead", "s-dead", "w-new", from_now())
    assert back.outcome is ClaimOutcome.CLAIMED  # a redelivery now is a new event
    live = await store.claim_inbox("t", "live", "s-live", "w-new", from_now())
    assert live.outcome is ClaimOutcome.BUSY
    assert await store.get_saga("s-live") is not None


async def test_a_duplicate_after_its_saga_was_purged_is_still_a_duplicate(
    store: SagaStore,
) -> None:
    claim = await store.claim_inbox("t", "order-7", "s-7", "w1", from_now())
    assert claim.outcome is ClaimOutcome.CLAIMED
    await store.save_checkpoint(
        saga_record("s-7", status=SagaStatus.COMPLETED, owner="w1", trigger_id="t"),
        complete_inbox=("t", "order-7"),
    )
    assert await store.purge_sagas(utcnow() + timedelta(days=1)) == 1
    assert await store.get_saga("s-7") is None

    # the inbox row outlives the saga: the key still answers "done"
    again = await store.claim_inbox("t", "order-7", "s-7", "w2", from_now())
    assert (again.outcome, again.saga_id) == (ClaimOutcome.DUPLICATE, "s-7")


async def test_a_finished_saga_run_again_is_kept_until_it_finishes_again(
    store: SagaStore,
) -> None:
    await _finish(store, "s1", SagaStatus.COMPENSATED)
    await store.save_saga(saga_record("s1", status=SagaStatus.RUNNING, attempt=2))  # resumed
    assert await store.purge_sagas(utcnow() + timedelta(days=1)) == 0
    assert await store.get_saga("s1") is not None

    cutoff = await _moment()
    await store.save_saga(saga_record("s1", status=SagaStatus.COMPLETED, attempt=2))
    assert await store.purge_sagas(cutoff) == 0  # finished after the cutoff
    assert await store.purge_sagas(utcnow() + timedelta(days=1)) == 1
    assert await _gone(store, "s1")


async def test_purge_dead_letters_deletes_the_oldest_first_in_batches(store: SagaStore) -> None:
    for n in range(3):
        await store.add_dead_letter(_dead_letter(n, "orders.on_order"))
    await store.add_dead_letter(_dead_letter(3, "payments.on_payment"))
    cutoff = await _moment()
    await store.add_dead_letter(_dead_letter(4, "orders.on_order"))

    assert await store.purge_dead_letters(cutoff - timedelta(hours=1)) == 0
    assert await store.purge_dead_letters(cutoff, limit=2) == 2
    assert [d.payload for d in await store.list_dead_letters()] == [{"n": 2}, {"n": 3}, {"n": 4}]
    assert await store.purge_dead_letters(cutoff, limit=2) == 2
    assert await store.purge_dead_letters(cutoff, limit=2) == 0
    [kept] = await store.list_dead_letters()
    assert kept.payload == {"n": 4}
    assert await store.list_dead_letters(trigger_id="payments.on_payment") == []
    assert [d.payload for d in await store.list_dead_letters(trigger_id="orders.on_order")] == [
        {"n": 4}
    ]
    assert kept.id is not None and await store.get_dead_letter(kept.id) is not None


def _dead_letter(n: int, trigger_id: str) -> DeadLetterRecord:
    return DeadLetterRecord(trigger_id, "order-saga", {"n": n}, "boom", "invalid")


async def test_purge_expired_goes_on_batch_after_batch_until_nothing_is_left(
    store: SagaStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each transaction (script) deletes a bounded number of rows; one call still purges all."""
    for module in (sqlite_retention, postgres_retention, redis_retention):
        monkeypatch.setattr(module, "_PURGE_BATCH", 2)
    first_tick = datetime(2024, 3, 1, tzinfo=UTC)
    for n in range(5):
        await store.claim_inbox("t", f"k{n}", f"s{n}", "w1", from_now())
        await store.complete_inbox("t", f"k{n}")
        await store.save_saga(saga_record(f"s{n}", status=SagaStatus.COMPLETED, event={"n": n}))
        execution = TriggerExecutionRecord("poll", f"h{n}", f"s{n}", started_at=first_tick)
        assert await store.start_trigger_execution(execution, exclusive=False)
        await store.complete_trigger_execution("poll", f"s{n}")
        assert await store.claim_cron_tick("cron", first_tick + timedelta(hours=n), "w1")

    # 5 inbox rows, 5 stored events, 5 executions, 4 cron ticks (the newest is kept)
    assert await store.purge_expired(utcnow() + timedelta(seconds=5)) == 19
    assert await store.purge_expired(utcnow() + timedelta(seconds=5)) == 0
    assert all(s.event is None for s in await store.list_sagas())
    assert await store.list_trigger_executions("poll") == []
    assert await store.last_cron_tick("cron") == first_tick + timedelta(hours=4)
    again = await store.claim_inbox("t", "k0", "s0", "w2", from_now())
    assert again.outcome is ClaimOutcome.CLAIMED


async def test_expired_leases_and_full_buckets_leave_no_rows_behind(backend: Backend) -> None:
    """One row per distinct concurrency key (``sagaz.key/<trigger>/<key>``) would grow the
    store with every new key: released leases go at once, expired ones and full token buckets
    with the next purge."""
    store = await backend.open()
    names = [f"sagaz.key/orders.on_order/{n}" for n in range(20)]
    for name in names:  # long enough to outlast the count below on a loaded machine
        assert await store.acquire_lease(name, "holder", 1.5)
    for name in names[:10]:
        assert await store.release_lease(name, "holder")
    for n in range(5):
        assert await store.take_rate_token(f"sagaz.rate/t{n}", 50.0, 1) == 0.0
    assert await _stored_names(backend, store) == 15  # the unreleased leases, the buckets

    async def forgotten() -> bool:
        await store.purge_expired(utcnow() - timedelta(days=1))
        return await _stored_names(backend, store) == 0

    await eventually(forgotten, within=10, what="expired leases and full buckets purged")
    # free and full, as before
    assert await store.acquire_lease(names[-1], "another", 30.0)
    assert await store.take_rate_token("sagaz.rate/t0", 50.0, 1) == 0.0


async def _stored_names(backend: Backend, store: SagaStore) -> int:
    """How many lease and token-bucket rows (keys) the storage holds."""
    if isinstance(store, MemorySagaStore):
        return len(store._leases) + len(store._rate_limits)
    if isinstance(store, SQLiteSagaStore):
        conn = sqlite3.connect(store.path)
        try:
            row = conn.execute(
                "SELECT (SELECT count(*) FROM leases) + (SELECT count(*) FROM rate_limits)"
            ).fetchone()
        finally:
            conn.close()
        return int(row[0])
    if isinstance(store, PostgresSagaStore):
        import asyncpg

        conn = await asyncpg.connect(store.dsn)
        try:
            s = f'"{store.schema}"'
            return int(
                await conn.fetchval(
                    f"SELECT (SELECT count(*) FROM {s}.leases) "
                    f"+ (SELECT count(*) FROM {s}.rate_limits)"
                )
            )
        finally:
            await conn.close()
    assert isinstance(store, RedisSagaStore), backend.name
    import redis.asyncio as redis

    client = redis.Redis.from_url(store.url)
    try:
        count = 0
        for kind in ("lease", "rate"):
            count += len([k async for k in client.scan_iter(match=f"{store.prefix}:{kind}:*")])
        return count
    finally:
        await client.aclose()


#: the migration that indexes finished sagas for purge_sagas: SQL schema 7, Redis layout 7
SAGA_RETENTION_MIGRATION = 7


async def test_sagas_finished_before_the_upgrade_are_purged_after_it(
    durable_backend: Backend,
) -> None:
    backend = durable_backend
    store = await backend.open()
    await _finish(store, "old", SagaStatus.COMPLETED)
    await store.save_saga(saga_record("live", status=SagaStatus.RUNNING))
    await store.stop()
    await _downgrade(store, SAGA_RETENTION_MIGRATION - 1)
    expected = (await backend.make().schema_versions()).expected
    assert await backend.make().upgrade_schema() == SchemaVersions(
        SAGA_RETENTION_MIGRATION - 1, expected
    )
    upgraded = await backend.open()
    assert await upgraded.purge_sagas(utcnow() + timedelta(days=1)) == 1
    assert await _gone(upgraded, "old")
    assert await upgraded.get_saga("live") is not None


async def _downgrade(store: SagaStore, version: int) -> None:
    """The storage as the sagaz of ``version`` left it: no index of finished sagas."""
    await rewind_schema(
        store,
        version,
        drop=[("INDEX", "saga_executions_finished"), ("INDEX", "outbox_by_saga")],
        redis_keys=["sagas-finished"],
    )


@pytest.mark.parametrize("limit", [0])
async def test_purge_sagas_with_no_room_deletes_nothing(store: SagaStore, limit: int) -> None:
    await _finish(store, "s1", SagaStatus.COMPLETED)
    assert await store.purge_sagas(utcnow() + timedelta(days=1), limit=limit) == 0
    assert await store.get_saga("s1") is not None
