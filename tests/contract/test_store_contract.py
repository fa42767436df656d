"""One suite for every :class:`sagaz.abc.SagaStore`: memory, SQLite, PostgreSQL and Redis.

Each test runs against all four stores. PostgreSQL gets a throw-away schema and Redis a
throw-away key prefix per test; both are removed afterwards. Contention tests open several
store instances (separate connections) on the same storage and race them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import sys
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from sagaz.abc import SagaStore
from sagaz.clock import utcnow
from sagaz.exceptions import (
    ConfigurationError,
    MissingExtraError,
    SchemaOutdatedError,
    StoreError,
    StoreUnavailableError,
)
from sagaz.records import (
    ClaimOutcome,
    DeadLetterRecord,
    OutboxMessage,
    SagaAction,
    SagaControlRequest,
    SagaHistoryRecord,
    SagaRecord,
    SchemaVersions,
    StepRecord,
    TriggerExecutionRecord,
    TriggerScheduleRecord,
)
from sagaz.storage import (
    MemorySagaStore,
    PostgresSagaStore,
    RedisSagaStore,
    SQLiteSagaStore,
    store_from_url,
)
from sagaz.testing import eventually
from sagaz.types import SagaStatus, StepStatus
from tests.contract.store_backends import Backend, from_now, saga_record
from tests.schema_support import make_outdated, rewind_schema
from tests.services import backend_params

CONTENDERS = 50


def _earlier(seconds: float = 1) -> datetime:
    return utcnow() - timedelta(seconds=seconds)


# -- sagas ---------------------------------------------------------------------------------
async def test_create_saga_inserts_only_if_absent(store: SagaStore) -> None:
    first, created = await store.create_saga(saga_record(context={"n": 1}))
    assert created
    assert first.context == {"n": 1}
    assert first.created_at is not None
    assert first.updated_at is not None

    again, created = await store.create_saga(
        saga_record(status=SagaStatus.RUNNING, context={"n": 2})
    )
    assert not created
    assert (again.status, again.context, again.created_at) == (
        SagaStatus.PENDING,
        {"n": 1},
        first.created_at,
    )
    stored = await store.get_saga("s1")
    assert stored is not None
    assert stored.context == {"n": 1}


async def test_save_saga_overwrites_but_keeps_created_at(store: SagaStore) -> None:
    assert await store.get_saga("s1") is None
    await store.save_saga(saga_record())
    before = await store.get_saga("s1")
    assert before is not None
    assert before.created_at is not None

    lease = from_now()
    await store.save_saga(
        saga_record(
            status=SagaStatus.COMPENSATED,
            context={"order_id": 1, "refund": True},
            attempt=2,
            error="boom",
            trigger_id="order-saga.on_order",
            owner="worker-a",
            lease_expires_at=lease,
        )
    )
    after = await store.get_saga("s1")
    assert after is not None
    assert after.status is SagaStatus.COMPENSATED
    assert (after.context, after.attempt, after.error) == (
        {"order_id": 1, "refund": True},
        2,
        "boom",
    )
    assert (after.trigger_id, after.owner, after.lease_expires_at) == (
        "order-saga.on_order",
        "worker-a",
        lease,
    )
    assert after.created_at == before.created_at
    assert after.updated_at is not None
    assert after.updated_at >= before.created_at

    await store.save_saga(saga_record(status=SagaStatus.RUNNING))  # optional fields cleared again
    cleared = await store.get_saga("s1")
    assert cleared is not None
    assert (cleared.error, cleared.owner, cleared.lease_expires_at, cleared.trigger_id) == (
        None,
        None,
        None,
        None,
    )


async def test_values_round_trip_including_bytes_and_datetimes(store: SagaStore) -> None:
    moment = datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=UTC)
    context = {
        "text": "zürich ✓",
        "nested": {"items": [1, 2.5, None, True, {"deep": []}], "empty": {}},
        "blob": b"\x00\xffraw",
        "when": moment,
        "$sagaz:bytes": "not an envelope",  # a user key that looks like ours stays a key
    }
    event = b"\x01binary event"
    lease = datetime(2030, 1, 1, 10, 0, tzinfo=timezone(timedelta(hours=2)))
    await store.save_saga(saga_record(context=context, event=event, lease_expires_at=lease))
    stored = await store.get_saga("s1")
    assert stored is not None
    assert stored.context == context
    assert stored.event == event
    assert stored.lease_expires_at == lease  # same instant, whatever the zone
    assert stored.lease_expires_at is not None
    assert stored.lease_expires_at.utcoffset() is not None


async def test_list_sagas_newest_first_with_filters_and_limit(store: SagaStore) -> None:
    specs = [
        ("a", "orders", SagaStatus.COMPLETED),
        ("b", "payments", SagaStatus.RUNNING),
        ("c", "orders", SagaStatus.RUNNING),
        ("d", "orders", SagaStatus.COMPLETED),
        ("e", "payments", SagaStatus.COMPLETED),
    ]
    for saga_id, name, status in specs:
        await store.create_saga(saga_record(saga_id, saga_name=name, status=status))
    await store.save_saga(saga_record("a", saga_name="orders", status=SagaStatus.FAILED))

    def ids(records: list[SagaRecord]) -> list[str]:
        return [r.saga_id for r in records]

    assert ids(await store.list_sagas()) == ["e", "d", "c", "b", "a"]
    assert ids(await store.list_sagas(limit=2)) == ["e", "d"]
    assert ids(await store.list_sagas(status=SagaStatus.COMPLETED)) == ["e", "d"]
    assert ids(await store.list_sagas(status=SagaStatus.FAILED)) == ["a"]
    assert ids(await store.list_sagas(saga_name="orders")) == ["d", "c", "a"]
    assert ids(await store.list_sagas(saga_name="orders", status=SagaStatus.COMPLETED)) == ["d"]
    assert await store.list_sagas(saga_name="nope") == []


async def test_list_sagas_filters_by_trigger_and_creation_time(store: SagaStore) -> None:
    day = datetime(2024, 5, 1, tzinfo=UTC)
    specs = [
        ("old", "orders.on_order", day - timedelta(days=2)),
        ("noon", "orders.on_order", day + timedelta(hours=12)),
        ("by-hand", None, day + timedelta(hours=13)),
        ("web", "orders.on_web", day + timedelta(hours=14)),
        ("late", "orders.on_order", day + timedelta(days=1)),  # exactly the upper bound
    ]
    for saga_id, trigger_id, created in specs:
        await store.create_saga(saga_record(saga_id, trigger_id=trigger_id, created_at=created))

    def ids(records: list[SagaRecord]) -> list[str]:
        return [r.saga_id for r in records]

    assert ids(await store.list_sagas(trigger_id="orders.on_order")) == ["late", "noon", "old"]
    assert ids(await store.list_sagas(trigger_id="nope")) == []
    window = {"created_after": day, "created_before": day + timedelta(days=1)}
    assert ids(await store.list_sagas(**window)) == ["web", "by-hand", "noon"]
    assert ids(await store.list_sagas(created_after=day + timedelta(hours=12))) == [
        "late",
        "web",
        "by-hand",
        "noon",  # created_after is inclusive
    ]
    assert ids(await store.list_sagas(created_before=day)) == ["old"]
    assert ids(await store.list_sagas(trigger_id="orders.on_order", **window)) == ["noon"]
    stored = await store.get_saga("noon")
    assert stored is not None
    assert stored.created_at == day + timedelta(hours=12)


async def test_list_sagas_pages_after_a_saga_id(store: SagaStore) -> None:
    total = 450  # more than one chunk of an index scan
    for n in range(total):
        status = SagaStatus.COMPLETED if n % 3 else SagaStatus.FAILED
        await store.create_saga(saga_record(f"s{n:03}", status=status))

    async def every_page(**filters: Any) -> list[list[str]]:
        pages: list[list[str]] = []
        after: str | None = None
        while page := await store.list_sagas(limit=100, after=after, **filters):
            pages.append([r.saga_id for r in page])
            after = page[-1].saga_id
        return pages

    pages = await every_page()
    assert [len(page) for page in pages] == [100, 100, 100, 100, 50]
    newest_first = [f"s{n:03}" for n in reversed(range(total))]
    assert [saga_id for page in pages for saga_id in page] == newest_first
    failed = await every_page(status=SagaStatus.FAILED)
    assert [len(page) for page in failed] == [100, 50]
    assert [saga_id for page in failed for saga_id in page] == newest_first[2::3]
    assert [r.saga_id for r in await store.list_sagas(after="s002", limit=5)] == ["s001", "s000"]
    assert await store.list_sagas(after="s000") == []
    assert await store.list_sagas(after="no-such-saga") == []


async def test_delete_saga_removes_it_and_its_steps(store: SagaStore) -> None:
    await store.create_saga(saga_record("gone"))
    await store.create_saga(saga_record("kept"))
    await store.save_step(StepRecord("gone", "reserve", StepStatus.COMPLETED))
    await store.save_step(StepRecord("kept", "reserve", StepStatus.COMPLETED))
    await store.delete_saga("gone")
    await store.delete_saga("never-existed")
    assert await store.get_saga("gone") is None
    assert await store.get_steps("gone") == []
    assert [r.saga_id for r in await store.list_sagas()] == ["kept"]
    assert len(await store.get_steps("kept")) == 1


async def test_list_recoverable_finds_unleased_and_expired_live_sagas(store: SagaStore) -> None:
    await store.save_saga(saga_record("no-lease", status=SagaStatus.PENDING))
    await store.save_saga(
        saga_record("expired", status=SagaStatus.RUNNING, owner="w", lease_expires_at=_earlier())
    )
    await store.save_saga(
        saga_record("live", status=SagaStatus.RUNNING, owner="w", lease_expires_at=from_now())
    )
    await store.save_saga(saga_record("done", status=SagaStatus.COMPLETED))
    await store.save_saga(saga_record("undoing", status=SagaStatus.COMPENSATING))
    await store.save_saga(saga_record("undoing", status=SagaStatus.COMPENSATED))  # became terminal

    found = await store.list_recoverable(utcnow())
    assert [r.saga_id for r in found] == ["no-lease", "expired"]
    assert [r.saga_id for r in await store.list_recoverable(utcnow(), limit=1)] == ["no-lease"]
    later = await store.list_recoverable(utcnow() + timedelta(hours=1))
    assert [r.saga_id for r in later] == ["no-lease", "expired", "live"]


async def test_claim_saga_takes_free_expired_or_own_leases_only(store: SagaStore) -> None:
    assert not await store.claim_saga("missing", "a", from_now())
    await store.save_saga(saga_record(status=SagaStatus.RUNNING))

    lease = from_now()
    assert await store.claim_saga("s1", "a", lease)
    stored = await store.get_saga("s1")
    assert stored is not None
    assert (stored.owner, stored.lease_expires_at) == ("a", lease)
    assert not await store.claim_saga("s1", "b", from_now())  # a's lease is live
    assert await store.claim_saga("s1", "a", from_now(120))  # own lease: renewed

    await store.claim_saga("s1", "a", _earlier())  # a's lease lapses
    assert await store.claim_saga("s1", "b", from_now())
    stored = await store.get_saga("s1")
    assert stored is not None
    assert stored.owner == "b"
    assert [r.saga_id for r in await store.list_recoverable(utcnow())] == []


# -- steps ---------------------------------------------------------------------------------
async def test_steps_round_trip_upsert_and_reset(store: SagaStore) -> None:
    await store.save_step(StepRecord("s1", "reserve", StepStatus.RUNNING, attempts=1))
    await store.save_step(StepRecord("s1", "charge", StepStatus.FAILED, error="card declined"))
    await store.save_step(
        StepRecord(
            "s1",
            "reserve",
            StepStatus.COMPENSATION_FAILED,
            result={"sku": "x", "raw": b"\x00"},
            attempts=3,
            completed_seq=1,
            compensation_error="still reserved",
        )
    )
    await store.save_step(StepRecord("other", "reserve", StepStatus.COMPLETED))

    steps = {s.name: s for s in await store.get_steps("s1")}
    assert set(steps) == {"reserve", "charge"}
    reserve = steps["reserve"]
    assert reserve.status is StepStatus.COMPENSATION_FAILED
    assert (reserve.result, reserve.attempts, reserve.completed_seq) == (
        {"sku": "x", "raw": b"\x00"},
        3,
        1,
    )
    assert reserve.compensation_error == "still reserved"
    assert reserve.updated_at is not None
    assert (steps["charge"].error, steps["charge"].result) == ("card declined", None)

    await store.reset_steps("s1")
    assert await store.get_steps("s1") == []
    assert len(await store.get_steps("other")) == 1


# -- inbox ---------------------------------------------------------------------------------
async def test_inbox_claimed_then_duplicate_then_released(store: SagaStore) -> None:
    claim = await store.claim_inbox("t", "k1", "saga-1", "a", from_now())
    assert (claim.outcome, claim.saga_id, claim.owner) == (ClaimOutcome.CLAIMED, "saga-1", "a")

    await store.complete_inbox("t", "k1")
    dup = await store.claim_inbox("t", "k1", "saga-2", "b", from_now())
    assert (dup.outcome, dup.saga_id) == (ClaimOutcome.DUPLICATE, "saga-1")
    other_trigger = await store.claim_inbox("t2", "k1", "saga-3", "b", from_now())
    assert other_trigger.outcome is ClaimOutcome.CLAIMED

    await store.release_inbox("t", "k1")
    again = await store.claim_inbox("t", "k1", "saga-4", "b", from_now())
    assert (again.outcome, again.saga_id) == (ClaimOutcome.CLAIMED, "saga-4")


async def test_inbox_busy_while_another_owner_holds_a_live_lease(store: SagaStore) -> None:
    await store.claim_inbox("t", "k", "saga-1", "a", from_now())
    busy = await store.claim_inbox("t", "k", "saga-2", "b", from_now())
    assert (busy.outcome, busy.saga_id, busy.owner) == (ClaimOutcome.BUSY, "saga-1", "a")


async def test_inbox_taken_over_by_own_owner_or_after_expiry(store: SagaStore) -> None:
    await store.claim_inbox("t", "k", "saga-1", "a", from_now())
    own = await store.claim_inbox("t", "k", "saga-x", "a", _earlier())  # a lets it lapse
    assert (own.outcome, own.saga_id, own.owner) == (ClaimOutcome.TAKEN_OVER, "saga-1", "a")

    stolen = await store.claim_inbox("t", "k", "saga-2", "b", from_now())
    assert (stolen.outcome, stolen.saga_id, stolen.owner) == (
        ClaimOutcome.TAKEN_OVER,
        "saga-1",
        "b",
    )
    back = await store.claim_inbox("t", "k", "saga-3", "a", from_now())
    assert (back.outcome, back.owner) == (ClaimOutcome.BUSY, "b")


async def test_renew_leases_extends_what_an_owner_still_holds(store: SagaStore) -> None:
    await store.claim_inbox("t", "k1", "s-1", "a", _earlier())
    await store.claim_inbox("t", "k2", "s-2", "a", _earlier())
    await store.claim_inbox("t", "k3", "s-3", "a", _earlier())
    await store.complete_inbox("t", "k3")  # completed rows are not renewed
    await store.claim_inbox("t", "k4", "s-4", "z", _earlier())  # someone else's
    await store.save_saga(saga_record("run", status=SagaStatus.RUNNING, owner="a"))
    await store.save_saga(saga_record("done", status=SagaStatus.COMPLETED, owner="a"))
    await store.save_saga(saga_record("theirs", status=SagaStatus.RUNNING, owner="z"))

    assert await store.renew_leases("a", from_now()) == 3
    assert (await store.claim_inbox("t", "k1", "x", "b", from_now())).outcome is ClaimOutcome.BUSY
    assert (await store.claim_inbox("t", "k4", "x", "b", from_now())).outcome is (
        ClaimOutcome.TAKEN_OVER
    )
    assert [r.saga_id for r in await store.list_recoverable(utcnow())] == ["theirs"]
    run = await store.get_saga("run")
    assert run is not None
    assert run.lease_expires_at is not None
    assert await store.renew_leases("nobody", from_now()) == 0

    # a row another worker took over is no longer renewed for the old owner
    await store.claim_inbox("t", "k2", "s-2", "a", _earlier())
    await store.claim_inbox("t", "k2", "s-2", "b", from_now())
    assert await store.renew_leases("a", from_now()) == 2


async def test_purge_expired_drops_old_completed_rows_and_stored_events(store: SagaStore) -> None:
    await store.claim_inbox("t", "done", "s-1", "a", from_now())
    await store.complete_inbox("t", "done")
    await store.claim_inbox("t", "pending", "s-2", "a", from_now())
    await store.save_saga(saga_record("finished", status=SagaStatus.COMPLETED, event={"id": 1}))
    await store.save_saga(saga_record("running", status=SagaStatus.RUNNING, event={"id": 2}))

    assert await store.purge_expired(utcnow() - timedelta(hours=1)) == 0
    assert await store.purge_expired(utcnow() + timedelta(seconds=5)) == 2

    again = await store.claim_inbox("t", "done", "s-9", "b", from_now())
    assert (again.outcome, again.saga_id) == (ClaimOutcome.CLAIMED, "s-9")
    pending = await store.claim_inbox("t", "pending", "s-9", "b", from_now())
    assert pending.outcome is ClaimOutcome.BUSY
    finished = await store.get_saga("finished")
    running = await store.get_saga("running")
    assert finished is not None
    assert finished.event is None
    assert finished.status is SagaStatus.COMPLETED
    assert finished.context == {"order_id": 1}
    assert running is not None
    assert running.event == {"id": 2}
    assert await store.purge_expired(utcnow() + timedelta(seconds=5)) == 0


async def test_purge_expired_deletes_old_completed_trigger_executions_only(
    store: SagaStore,
) -> None:
    started = datetime(2024, 1, 1, tzinfo=UTC)  # every execution started long ago
    for trigger, saga_id in [("poll", "old"), ("poll", "running"), ("poll", "recent"),
                             ("poll-2", "other")]:  # fmt: skip
        record = TriggerExecutionRecord(trigger, f"hash-{saga_id}", saga_id, started_at=started)
        assert await store.start_trigger_execution(record, exclusive=True)
    await store.complete_trigger_execution("poll", "old")
    await store.complete_trigger_execution("poll-2", "other")
    await asyncio.sleep(0.01)
    cutoff = utcnow()
    await asyncio.sleep(0.01)
    await store.complete_trigger_execution("poll", "recent")

    assert await store.purge_expired(cutoff - timedelta(hours=1)) == 0
    assert await store.purge_expired(cutoff) == 2
    rows = await store.list_trigger_executions("poll")
    assert [(r.saga_id, r.completed_at is None) for r in rows] == [
        ("running", True),
        ("recent", False),
    ]
    assert await store.list_trigger_executions("poll-2") == []
    # the running execution still holds its context; a purged one no longer does
    running_again = TriggerExecutionRecord("poll", "hash-running", "again")
    assert not await store.start_trigger_execution(running_again, exclusive=True)
    old_again = TriggerExecutionRecord("poll", "hash-old", "again")
    assert await store.start_trigger_execution(old_again, exclusive=True)

    assert await store.purge_expired(utcnow() + timedelta(seconds=5)) == 1  # "recent"
    rows = await store.list_trigger_executions("poll")
    assert [r.saga_id for r in rows] == ["running", "again"]
    assert await store.purge_expired(utcnow() + timedelta(seconds=5)) == 0


async def test_purge_expired_keeps_the_newest_cron_tick_of_each_trigger(store: SagaStore) -> None:
    first = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)
    ticks = [first + timedelta(hours=h) for h in range(3)]
    for tick in ticks:
        assert await store.claim_cron_tick("a", tick, "w1")
    assert await store.claim_cron_tick("b", first, "w1")

    assert await store.purge_expired(first - timedelta(days=1)) == 0
    assert await store.purge_expired(utcnow() + timedelta(seconds=5)) == 2  # a's older two
    assert await store.last_cron_tick("a") == ticks[-1]
    assert await store.last_cron_tick("b") == first
    assert not await store.claim_cron_tick("a", ticks[-1], "w2")  # the kept tick stays claimed
    assert not await store.claim_cron_tick("b", first, "w2")
    assert await store.purge_expired(utcnow() + timedelta(seconds=5)) == 0

    upcoming = utcnow() + timedelta(days=1)  # newer than the cutoff
    assert await store.claim_cron_tick("a", upcoming, "w1")
    assert await store.purge_expired(utcnow() + timedelta(seconds=5)) == 1  # ticks[-1]
    assert await store.last_cron_tick("a") == upcoming
    assert not await store.claim_cron_tick("a", upcoming, "w2")
    assert await store.last_cron_tick("b") == first
    assert await store.last_cron_tick("never") is None


# -- outbox --------------------------------------------------------------------------------
async def test_outbox_is_written_with_the_step_and_fetched_in_id_order(store: SagaStore) -> None:
    step = StepRecord("s1", "reserve", StepStatus.COMPLETED)
    await store.save_step(
        step,
        [
            OutboxMessage("s1", "orders", {"event": "reserved"}, {"trace": "1"}),
            OutboxMessage("s1", "orders", b"\x00raw"),
        ],
    )
    await store.save_step(StepRecord("s2", "charge", StepStatus.COMPLETED))  # no messages
    await store.save_step(StepRecord("s2", "ship", StepStatus.COMPLETED), [
        OutboxMessage("s2", "shipping", None),
        OutboxMessage("s2", "shipping", "text"),
    ])  # fmt: skip
    assert {s.name for s in await store.get_steps("s1")} == {"reserve"}

    messages = await store.fetch_outbox()
    assert [m.payload for m in messages] == [{"event": "reserved"}, b"\x00raw", None, "text"]
    ids = [m.id if m.id is not None else -1 for m in messages]
    assert all(i > 0 for i in ids)
    assert ids == sorted(ids)
    assert len(set(ids)) == 4
    assert messages[0].headers == {"trace": "1"}
    assert messages[1].headers == {}
    assert all(m.created_at is not None and m.sent_at is None for m in messages)
    assert [m.topic for m in await store.fetch_outbox(limit=2)] == ["orders", "orders"]

    await store.mark_outbox_sent(ids[:3])
    await store.mark_outbox_sent([])
    rest = await store.fetch_outbox()
    assert [(m.id, m.payload) for m in rest] == [(ids[3], "text")]


async def test_a_sagas_outbox_rows_are_listed_sent_or_not(store: SagaStore) -> None:
    """The dashboard's saga page: one saga's messages, in id order, bounded by ``limit``,
    whether a step or the saga's own row wrote them."""
    await store.save_step(StepRecord("s1", "a", StepStatus.COMPLETED), [
        OutboxMessage("s1", "orders", {"n": 1}, headers={"trace": "1"}),
        OutboxMessage("s1", "orders", {"n": 2}),
    ])  # fmt: skip
    await store.save_step(
        StepRecord("s2", "b", StepStatus.COMPLETED), [OutboxMessage("s2", "other", None)]
    )
    await store.save_saga(saga_record("s1", status=SagaStatus.COMPLETED), [
        OutboxMessage("s1", "done", {"n": 3}),
    ])  # fmt: skip
    listed = await store.list_saga_outbox("s1")
    assert [(m.saga_id, m.topic, m.payload) for m in listed] == [
        ("s1", "orders", {"n": 1}),
        ("s1", "orders", {"n": 2}),
        ("s1", "done", {"n": 3}),
    ]
    assert listed[0].headers == {"trace": "1"}
    assert all(m.created_at is not None and m.sent_at is None for m in listed)
    ids = [m.id or 0 for m in listed]
    assert ids == sorted(ids) and len(set(ids)) == 3
    await store.mark_outbox_sent([ids[0]])
    again = await store.list_saga_outbox("s1")
    assert again[0].sent_at is not None and again[1].sent_at is None
    assert [m.payload for m in await store.list_saga_outbox("s1", limit=1)] == [{"n": 1}]
    assert [m.payload for m in await store.list_saga_outbox("s2")] == [None]
    assert await store.list_saga_outbox("nobody") == []


async def test_a_step_whose_outbox_cannot_be_stored_writes_nothing(
    durable_backend: Backend,
) -> None:
    store = await durable_backend.open()
    step = StepRecord("s1", "reserve", StepStatus.COMPLETED)
    good = OutboxMessage("s1", "orders", {"ok": True})
    bad = OutboxMessage("s1", "orders", object())
    with pytest.raises(StoreError, match="convert it first"):
        await store.save_step(step, [good, bad])
    assert await store.get_steps("s1") == []
    assert await store.fetch_outbox() == []


async def test_a_database_error_inside_save_step_rolls_the_step_back(
    sql_backend: Backend,
) -> None:
    backend = sql_backend
    import asyncpg

    store = await backend.open()
    await store.save_step(StepRecord("s1", "reserve", StepStatus.RUNNING))
    broken = OutboxMessage("s1", None, {"ok": True})  # type: ignore[arg-type]  # NOT NULL topic
    with pytest.raises((StoreError, asyncpg.NotNullViolationError)):
        await store.save_step(StepRecord("s1", "reserve", StepStatus.COMPLETED), [broken])
    assert [s.status for s in await store.get_steps("s1")] == [StepStatus.RUNNING]
    assert await store.fetch_outbox() == []


# -- combined checkpoints (save_checkpoint) ------------------------------------------------
async def test_save_checkpoint_starts_a_saga_with_its_first_step(store: SagaStore) -> None:
    await store.create_saga(saga_record())  # PENDING, as admission writes it
    running = saga_record(status=SagaStatus.RUNNING, owner="w1", lease_expires_at=from_now())
    await store.save_checkpoint(
        running, [StepRecord("s1", "reserve", StepStatus.RUNNING, attempts=1)]
    )
    saved = await store.get_saga("s1")
    assert saved is not None
    assert (saved.status, saved.owner) == (SagaStatus.RUNNING, "w1")
    assert [(s.name, s.status, s.attempts) for s in await store.get_steps("s1")] == [
        ("reserve", StepStatus.RUNNING, 1)
    ]
    assert await store.fetch_outbox() == []


async def test_save_checkpoint_finishes_a_saga_its_outbox_and_its_inbox_row(
    store: SagaStore,
) -> None:
    claim = await store.claim_inbox("orders", "k1", "s1", "w1", from_now())
    assert claim.outcome is ClaimOutcome.CLAIMED
    await store.save_checkpoint(
        saga_record(status=SagaStatus.RUNNING), [StepRecord("s1", "reserve", StepStatus.RUNNING)]
    )
    await store.save_checkpoint(
        saga_record(status=SagaStatus.COMPLETED, context={"order_id": 1, "reserved": True}),
        [
            StepRecord(
                "s1", "reserve", StepStatus.COMPLETED, result={"reserved": True}, completed_seq=1
            )
        ],
        [
            OutboxMessage("s1", "orders", {"event": "reserved"}),  # the step's
            OutboxMessage("s1", "saga.completed", {"saga_id": "s1"}, {"trace": "1"}),
        ],
        complete_inbox=("orders", "k1"),
    )
    saved = await store.get_saga("s1")
    assert saved is not None
    assert saved.status is SagaStatus.COMPLETED
    assert saved.context == {"order_id": 1, "reserved": True}
    [step] = await store.get_steps("s1")
    assert (step.status, step.result, step.completed_seq) == (
        StepStatus.COMPLETED,
        {"reserved": True},
        1,
    )
    messages = await store.fetch_outbox()
    assert [(m.topic, m.payload) for m in messages] == [
        ("orders", {"event": "reserved"}),
        ("saga.completed", {"saga_id": "s1"}),
    ]
    assert messages[1].headers == {"trace": "1"}
    assert (messages[0].id or 0) < (messages[1].id or 0)
    again = await store.claim_inbox("orders", "k1", "s1", "w2", from_now())
    assert again.outcome is ClaimOutcome.DUPLICATE


async def test_save_checkpoint_with_steps_only_writes_them_and_their_outbox(
    store: SagaStore,
) -> None:
    await store.save_checkpoint(
        steps=[
            StepRecord("s1", "a", StepStatus.COMPLETED, result={"a": 1}, completed_seq=1),
            StepRecord("s1", "b", StepStatus.RUNNING),
        ],
        outbox=[OutboxMessage("s1", "orders", {"a": 1})],
    )
    assert await store.get_saga("s1") is None
    assert sorted((s.name, s.status) for s in await store.get_steps("s1")) == [
        ("a", StepStatus.COMPLETED),
        ("b", StepStatus.RUNNING),
    ]
    assert [m.payload for m in await store.fetch_outbox()] == [{"a": 1}]
    with pytest.raises(ValueError, match="need a saga or a step"):
        await store.save_checkpoint(outbox=[OutboxMessage("s1", "orders", {})])


async def _started(store: SagaStore) -> None:
    """A claimed inbox row and a saga started with its step running (before a finish)."""
    await store.claim_inbox("orders", "k1", "s1", "w1", from_now())
    await store.save_checkpoint(
        saga_record(status=SagaStatus.RUNNING), [StepRecord("s1", "reserve", StepStatus.RUNNING)]
    )


async def _assert_still_started(store: SagaStore) -> None:
    saved = await store.get_saga("s1")
    assert saved is not None
    assert saved.status is SagaStatus.RUNNING
    assert [s.status for s in await store.get_steps("s1")] == [StepStatus.RUNNING]
    assert await store.fetch_outbox() == []
    claim = await store.claim_inbox("orders", "k1", "s1", "w2", from_now())
    assert claim.outcome is ClaimOutcome.BUSY  # still pending, held by w1: not completed


def _finish(outbox: list[OutboxMessage]) -> tuple[Any, ...]:
    return (
        saga_record(status=SagaStatus.COMPLETED),
        [StepRecord("s1", "reserve", StepStatus.COMPLETED, completed_seq=1)],
        outbox,
    )


async def test_a_finish_whose_outbox_cannot_be_stored_writes_nothing(
    durable_backend: Backend,
) -> None:
    store = await durable_backend.open()
    await _started(store)
    good = OutboxMessage("s1", "saga.completed", {"ok": True})
    bad = OutboxMessage("s1", "saga.completed", object())
    with pytest.raises(StoreError, match="convert it first"):
        await store.save_checkpoint(*_finish([good, bad]), complete_inbox=("orders", "k1"))
    await _assert_still_started(store)


async def test_a_database_error_inside_a_finish_rolls_all_of_it_back(
    sql_backend: Backend,
) -> None:
    import asyncpg

    store = await sql_backend.open()
    await _started(store)
    good = OutboxMessage("s1", "saga.completed", {"ok": True})
    broken = OutboxMessage("s1", None, {"ok": True})  # type: ignore[arg-type]  # NOT NULL topic
    with pytest.raises((StoreError, asyncpg.NotNullViolationError)):
        await store.save_checkpoint(*_finish([good, broken]), complete_inbox=("orders", "k1"))
    await _assert_still_started(store)


async def test_a_memory_finish_that_cannot_copy_a_row_writes_nothing() -> None:
    store = MemorySagaStore()
    await _started(store)
    # the step and the outbox could be copied; the saga row cannot: none of them is stored
    with pytest.raises(TypeError, match="cannot be copied"):
        await store.save_checkpoint(
            saga_record(status=SagaStatus.COMPLETED, context={"x": _Uncopyable()}),
            [StepRecord("s1", "reserve", StepStatus.COMPLETED, completed_seq=1)],
            [OutboxMessage("s1", "saga.completed", {"ok": True})],
            complete_inbox=("orders", "k1"),
        )
    await _assert_still_started(store)


class _Uncopyable:
    def __deepcopy__(self, memo: Any) -> Any:
        raise TypeError("this value cannot be copied")


async def test_save_saga_writes_its_outbox_in_the_same_transaction(store: SagaStore) -> None:
    await store.save_saga(saga_record(status=SagaStatus.RUNNING))
    await store.save_step(StepRecord("s1", "reserve", StepStatus.COMPLETED), [
        OutboxMessage("s1", "orders", {"event": "reserved"}),
    ])  # fmt: skip
    await store.save_saga(
        saga_record(status=SagaStatus.COMPLETED),
        [
            OutboxMessage("s1", "saga.completed", {"saga_id": "s1"}, {"trace": "1"}),
            OutboxMessage("s1", "audit", b"\x00raw"),
        ],
    )
    saved = await store.get_saga("s1")
    assert saved is not None
    assert saved.status is SagaStatus.COMPLETED
    assert [s.name for s in await store.get_steps("s1")] == ["reserve"]
    messages = await store.fetch_outbox()
    assert [(m.saga_id, m.topic, m.payload) for m in messages] == [
        ("s1", "orders", {"event": "reserved"}),
        ("s1", "saga.completed", {"saga_id": "s1"}),
        ("s1", "audit", b"\x00raw"),
    ]
    assert messages[1].headers == {"trace": "1"}
    ids = [m.id or 0 for m in messages]
    assert 0 < ids[0] < ids[1] < ids[2]
    assert all(m.created_at is not None and m.sent_at is None for m in messages)

    await store.save_saga(saga_record(status=SagaStatus.COMPLETED, error="again"))  # no messages
    assert len(await store.fetch_outbox()) == 3


async def test_a_saga_whose_outbox_cannot_be_stored_keeps_its_previous_state(
    durable_backend: Backend,
) -> None:
    store = await durable_backend.open()
    await store.save_saga(saga_record(status=SagaStatus.RUNNING))
    good = OutboxMessage("s1", "saga.completed", {"ok": True})
    bad = OutboxMessage("s1", "saga.completed", object())
    with pytest.raises(StoreError, match="convert it first"):
        await store.save_saga(saga_record(status=SagaStatus.COMPLETED), [good, bad])
    saved = await store.get_saga("s1")
    assert saved is not None
    assert saved.status is SagaStatus.RUNNING
    assert await store.fetch_outbox() == []


async def test_a_database_error_inside_save_saga_rolls_the_saga_back(
    sql_backend: Backend,
) -> None:
    import asyncpg

    store = await sql_backend.open()
    await store.save_saga(saga_record(status=SagaStatus.RUNNING))
    broken = OutboxMessage("s1", None, {"ok": True})  # type: ignore[arg-type]  # NOT NULL topic
    with pytest.raises((StoreError, asyncpg.NotNullViolationError)):
        await store.save_saga(saga_record(status=SagaStatus.COMPLETED), [broken])
    saved = await store.get_saga("s1")
    assert saved is not None
    assert saved.status is SagaStatus.RUNNING
    assert await store.fetch_outbox() == []


@pytest.mark.parametrize("decline", [False, True], ids=["completed", "compensated"])
async def test_a_saga_with_an_outbox_listener_keeps_outbox_state_out_of_the_steps(
    store: SagaStore, decline: bool
) -> None:
    from sagaz import OutboxSagaListener, Saga, SagaContext, action, compensate

    class Order(Saga, abstract=True):
        saga_name = "order"
        listeners = [OutboxSagaListener(store)]

        @action("reserve")
        async def reserve(self, ctx: SagaContext) -> None:
            ctx.emit("orders.reserved", {"id": 1})

        @compensate("reserve")
        async def release(self, ctx: SagaContext) -> None:
            pass

        @action("charge")
        async def charge(self, ctx: SagaContext) -> None:
            if ctx["decline"]:
                raise RuntimeError("card declined")
            ctx.emit("orders.charged", {"id": 1})

    result = await Order().run({"decline": decline}, saga_id="o1", store=store)
    assert result.status is (SagaStatus.COMPENSATED if decline else SagaStatus.COMPLETED)
    assert sorted(s.name for s in await store.get_steps("o1")) == ["charge", "reserve"]
    topics = [m.topic for m in await store.fetch_outbox()]
    if decline:
        assert topics == ["orders.reserved", "saga.failed"]
    else:
        assert topics == ["orders.reserved", "orders.charged", "saga.completed"]


# -- saga control --------------------------------------------------------------------------
async def test_delete_steps_forgets_only_the_named_steps(store: SagaStore) -> None:
    for name in ("reserve", "charge", "ship"):
        await store.save_step(StepRecord("s1", name, StepStatus.COMPLETED, result={name: 1}))
    await store.save_step(StepRecord("other", "charge", StepStatus.COMPLETED))
    await store.delete_steps("s1", ["charge", "ship", "never-ran"])
    await store.delete_steps("s1", [])
    assert [s.name for s in await store.get_steps("s1")] == ["reserve"]
    assert [s.name for s in await store.get_steps("other")] == ["charge"]


async def test_a_cancelled_saga_is_terminal(store: SagaStore) -> None:
    await store.save_saga(saga_record("c", status=SagaStatus.CANCELLED, error="cancelled by ops"))
    await store.save_saga(saga_record("live", status=SagaStatus.RUNNING))
    stored = await store.get_saga("c")
    assert stored is not None
    assert (stored.status, stored.error) == (SagaStatus.CANCELLED, "cancelled by ops")
    assert [r.saga_id for r in await store.list_sagas(status=SagaStatus.CANCELLED)] == ["c"]
    assert [r.saga_id for r in await store.list_recoverable(utcnow())] == ["live"]


async def test_saga_history_is_kept_per_saga_oldest_first(store: SagaStore) -> None:
    at = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    first = await store.add_saga_history(
        SagaHistoryRecord("s1", "cancel_requested", actor="ann@ops", detail="wrong order", at=at)
    )
    second = await store.add_saga_history(SagaHistoryRecord("s1", "cancelled", actor="w1"))
    await store.add_saga_history(SagaHistoryRecord("s2", "resume_requested"))
    assert second > first
    history = await store.list_saga_history("s1")
    assert [(e.action, e.actor, e.detail) for e in history] == [
        ("cancel_requested", "ann@ops", "wrong order"),
        ("cancelled", "w1", None),
    ]
    assert [e.id for e in history] == [first, second]
    assert history[0].at == at
    assert history[1].at is not None
    assert [e.action for e in await store.list_saga_history("s1", limit=1)] == ["cancel_requested"]
    assert await store.list_saga_history("nobody") == []


async def test_one_open_request_per_saga_finished_once(store: SagaStore) -> None:
    at = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    retry = SagaControlRequest(
        "s1",
        SagaAction.RETRY,
        step="charge",
        actor="ann@ops",
        reason="fixed",
        attempt=2,
        requested_at=at,
    )
    assert await store.add_saga_request(retry)
    assert not await store.add_saga_request(SagaControlRequest("s1", SagaAction.CANCEL))
    assert await store.add_saga_request(SagaControlRequest("s2", SagaAction.CANCEL))
    requests = await store.list_saga_requests()
    assert [(r.saga_id, r.action) for r in requests] == [
        ("s1", SagaAction.RETRY),
        ("s2", SagaAction.CANCEL),
    ]
    assert requests[0] == retry
    assert requests[1].requested_at is not None
    assert [r.saga_id for r in await store.list_saga_requests(saga_id="s2")] == ["s2"]
    assert await store.list_saga_requests(saga_id="nobody") == []
    assert [r.saga_id for r in await store.list_saga_requests(limit=1)] == ["s1"]

    assert not await store.finish_saga_request("s1", SagaAction.CANCEL)  # not that request
    finished = await asyncio.gather(
        *(store.finish_saga_request("s1", SagaAction.RETRY) for _ in range(5))
    )
    assert sorted(finished) == [False] * 4 + [True]
    assert [r.saga_id for r in await store.list_saga_requests()] == ["s2"]
    assert await store.add_saga_request(SagaControlRequest("s1", SagaAction.RESUME))


# -- leases --------------------------------------------------------------------------------
async def test_a_lease_has_one_holder_until_its_holder_releases_it(store: SagaStore) -> None:
    assert await store.acquire_lease("relay", "a", 30.0)
    assert not await store.acquire_lease("relay", "b", 30.0)
    assert await store.acquire_lease("relay", "a", 30.0)  # its holder again: extended
    assert await store.acquire_lease("other", "b", 30.0)  # leases are independent by name
    # only the holder renews or releases it
    assert not await store.renew_lease("relay", "b", 30.0)
    assert await store.renew_lease("relay", "a", 30.0)
    assert not await store.release_lease("relay", "b")
    assert not await store.acquire_lease("relay", "b", 30.0)
    assert await store.release_lease("relay", "a")
    assert not await store.release_lease("relay", "a")  # once
    assert not await store.renew_lease("relay", "a", 30.0)  # released: lost
    assert await store.acquire_lease("relay", "b", 30.0)  # free: taken at once


async def test_an_expired_lease_is_taken_over_and_lost_to_its_old_holder(
    store: SagaStore,
) -> None:
    assert await store.acquire_lease("relay", "a", 0.2)
    assert not await store.acquire_lease("relay", "b", 30.0)  # still a's
    await eventually(lambda: store.acquire_lease("relay", "b", 30.0), what="a's lease expired")
    assert not await store.renew_lease("relay", "a", 30.0)
    assert not await store.release_lease("relay", "a")
    assert not await store.acquire_lease("relay", "a", 30.0)
    assert await store.renew_lease("relay", "b", 30.0)


# -- shared rate limits --------------------------------------------------------------------
async def test_a_new_rate_bucket_gives_its_burst_at_once_then_tells_the_wait(
    store: SagaStore,
) -> None:
    # 0.5 tokens a second: no token comes back while the test runs
    takes = await asyncio.gather(*(store.take_rate_token("t", 0.5, 3) for _ in range(10)))
    assert sorted(takes)[:3] == [0.0, 0.0, 0.0]  # of ten at once, the burst of three
    refused = [wait for wait in takes if wait != 0.0]
    assert len(refused) == 7
    assert all(0.0 < wait <= 2.0 + 1e-3 for wait in refused), refused  # one interval at most
    assert await store.take_rate_token("other", 0.5, 1) == 0.0  # buckets are independent


async def test_a_rate_bucket_refills_at_its_rate(store: SagaStore) -> None:
    assert await store.take_rate_token("fast", 50.0, 1) == 0.0
    await eventually(lambda: _taken(store.take_rate_token("fast", 50.0, 1)), what="the next token")


async def _taken(take: Awaitable[float]) -> bool:
    return await take == 0.0


async def test_an_expired_lease_is_not_renewed_even_if_nobody_took_it(store: SagaStore) -> None:
    assert await store.acquire_lease("relay", "a", 0.05)
    # a second lease of the same ttl, taken after the first, tells when the first expired
    assert await store.acquire_lease("hourglass", "a", 0.05)
    await eventually(
        lambda: store.acquire_lease("hourglass", "b", 30.0), what="the hourglass lease expired"
    )
    assert not await store.renew_lease("relay", "a", 30.0)
    assert await store.acquire_lease("relay", "a", 30.0)  # taken again, knowingly


# -- dead letters --------------------------------------------------------------------------
async def test_dead_letters_crud_with_bytes_payload(store: SagaStore) -> None:
    first = DeadLetterRecord(
        trigger_id="orders.on_order",
        saga_name="orders",
        payload=b"\x00\x01not json",
        error="ValidationError: id missing",
        reason="invalid",
        traceback="Traceback ...",
        attempts=1,
        saga_id="s1",
        source="kafka",
        meta={"partition": 0, "offset": 42},
    )
    second = dataclasses.replace(first, trigger_id="pay.on_pay", payload={"id": 7}, meta={})
    third = dataclasses.replace(first, payload=None, traceback=None, saga_id=None, source=None)
    id1 = await store.add_dead_letter(first)
    id2 = await store.add_dead_letter(second)
    id3 = await store.add_dead_letter(third)
    assert id1 < id2 < id3

    got = await store.get_dead_letter(id1)
    assert got is not None
    assert got.created_at is not None
    assert dataclasses.replace(got, id=None, created_at=None) == first
    assert got.id == id1
    assert [d.id for d in await store.list_dead_letters()] == [id1, id2, id3]
    assert [d.id for d in await store.list_dead_letters(limit=1)] == [id1]
    by_trigger = await store.list_dead_letters(trigger_id="orders.on_order")
    assert [(d.id, d.payload) for d in by_trigger] == [(id1, first.payload), (id3, None)]

    assert await store.delete_dead_letter(id1)
    assert not await store.delete_dead_letter(id1)
    assert await store.get_dead_letter(id1) is None
    assert [d.id for d in await store.list_dead_letters(trigger_id="orders.on_order")] == [id3]
    assert await store.get_dead_letter(10_000) is None


async def test_a_dead_letter_keeps_its_delivery_exactly(store: SagaStore) -> None:
    """The layout of ``sagaz.engine.dead_letters``: raw bytes, an envelope's body, datetimes
    with their offset, headers and a bytes key come back as they went in."""
    paris = timezone(timedelta(hours=1))
    record = DeadLetterRecord(
        trigger_id="orders.from_http",
        saga_name="orders",
        payload={
            "method": "POST",
            "headers": {"content-type": "application/json", "$sagaz:bytes": "not an envelope"},
            "body": b'{"order_id": "A-1", "amount": 4200}',
            "scheduled_at": datetime(2026, 3, 1, 13, 30, tzinfo=paris),
        },
        error="step 'charge' failed: RuntimeError: card declined",
        reason="retries_exhausted",
        attempts=1,
        saga_id="6d327cb4-2b45-5945-9d54-34a5c7f2b661",
        source="webhook",
        meta={
            "format": 2,
            "key": b"\x00\xffkey",
            "headers": {"x-trace": "abc"},
            "received_at": datetime(2026, 3, 1, 12, 30, 15, 123456, tzinfo=UTC),
            "partition": None,
            "offset": 2**40,
            "decoded": True,
            "body_field": "body",
            "payload_type": "sagaz.events:WebhookRequest",
            "payload_zones": {"scheduled_at": "Europe/Paris"},
            "saga_module": "__main__",
            "saga_file": "/srv/app/quickstart.py",
        },
    )
    got = await store.get_dead_letter(await store.add_dead_letter(record))
    assert got is not None
    assert dataclasses.replace(got, id=None, created_at=None) == record
    assert type(got.payload["body"]) is bytes and type(got.meta["key"]) is bytes
    assert got.payload["scheduled_at"].utcoffset() == timedelta(hours=1)
    raw = await store.add_dead_letter(dataclasses.replace(record, payload=b"\x00raw", meta={}))
    again = await store.get_dead_letter(raw)
    assert again is not None and again.payload == b"\x00raw"


# -- poll triggers -------------------------------------------------------------------------
async def test_trigger_schedule_upsert_keeps_last_poll_at(store: SagaStore) -> None:
    assert await store.get_trigger_schedule("poll") is None
    await store.touch_trigger_schedule("poll", utcnow())  # no row: nothing to touch
    assert await store.get_trigger_schedule("poll") is None

    await store.save_trigger_schedule(TriggerScheduleRecord("poll", "orders", 1000, False))
    saved = await store.get_trigger_schedule("poll")
    assert saved == TriggerScheduleRecord("poll", "orders", 1000, False, True, None)

    polled = datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
    await store.touch_trigger_schedule("poll", polled)
    # saving again (an engine starting) keeps `enabled`: only set_trigger_enabled changes it
    await store.save_trigger_schedule(
        TriggerScheduleRecord("poll", "orders-v2", 500, True, enabled=False)
    )
    assert await store.get_trigger_schedule("poll") == TriggerScheduleRecord(
        "poll", "orders-v2", 500, True, True, polled
    )
    newer = polled + timedelta(minutes=1)
    await store.save_trigger_schedule(TriggerScheduleRecord("poll", "o", 500, True, True, newer))
    stored = await store.get_trigger_schedule("poll")
    assert stored is not None
    assert stored.last_poll_at == newer


async def test_a_paused_trigger_stays_paused_when_its_row_is_saved_again(
    store: SagaStore,
) -> None:
    assert await store.list_trigger_schedules() == []
    assert await store.set_trigger_enabled("orders.on_order", False) is False  # no row: none made
    assert await store.list_trigger_schedules() == []

    await store.save_trigger_schedule(TriggerScheduleRecord("orders.on_order", "orders", 0, True))
    await store.save_trigger_schedule(
        TriggerScheduleRecord("audit.on_tick", "audit", 0, True, enabled=False)  # a new row
    )
    assert await store.set_trigger_enabled("orders.on_order", False) is True
    # every engine saves its triggers' rows when it starts: a restart must not resume them
    await store.save_trigger_schedule(TriggerScheduleRecord("orders.on_order", "orders", 0, True))
    assert await store.list_trigger_schedules() == [
        TriggerScheduleRecord("audit.on_tick", "audit", 0, True, False, None),
        TriggerScheduleRecord("orders.on_order", "orders", 0, True, False, None),
    ]

    assert await store.set_trigger_enabled("orders.on_order", True) is True
    assert await store.set_trigger_enabled("orders.on_order", True) is True  # idempotent
    resumed = await store.get_trigger_schedule("orders.on_order")
    assert resumed is not None and resumed.enabled is True


async def test_exclusive_trigger_execution_refuses_an_open_duplicate(store: SagaStore) -> None:
    started = datetime(2024, 1, 1, tzinfo=UTC)
    first = TriggerExecutionRecord("poll", "hash-a", "saga-1", started_at=started)
    assert await store.start_trigger_execution(first, exclusive=True)
    again = TriggerExecutionRecord("poll", "hash-a", "saga-2")
    assert not await store.start_trigger_execution(again, exclusive=True)
    other_hash = TriggerExecutionRecord("poll", "hash-b", "saga-3")
    assert await store.start_trigger_execution(other_hash, exclusive=True)
    other_trigger = TriggerExecutionRecord("poll-2", "hash-a", "saga-4")
    assert await store.start_trigger_execution(other_trigger, exclusive=True)
    concurrent = TriggerExecutionRecord("poll", "hash-a", "saga-5")
    assert await store.start_trigger_execution(concurrent, exclusive=False)

    await store.complete_trigger_execution("poll", "saga-1")
    assert not await store.start_trigger_execution(again, exclusive=True)  # saga-5 still open
    await store.complete_trigger_execution("poll", "saga-5")
    await store.complete_trigger_execution("poll", "never-started")
    assert await store.start_trigger_execution(again, exclusive=True)

    rows = await store.list_trigger_executions("poll")
    assert [(r.saga_id, r.completed_at is None) for r in rows] == [
        ("saga-1", False),
        ("saga-3", True),
        ("saga-5", False),
        ("saga-2", True),
    ]
    assert rows[0].started_at == started
    assert rows[0].context_hash == "hash-a"
    assert all(r.started_at is not None for r in rows)
    assert [r.saga_id for r in await store.list_trigger_executions("poll-2")] == ["saga-4"]
    assert await store.list_trigger_executions("unknown") == []


# -- cron ----------------------------------------------------------------------------------
async def test_cron_tick_is_claimed_once_and_last_tick_is_the_latest(store: SagaStore) -> None:
    assert await store.last_cron_tick("nightly") is None
    nine = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)
    ten = datetime(2024, 3, 1, 11, 0, tzinfo=timezone(timedelta(hours=1)))  # 10:00 UTC
    assert await store.claim_cron_tick("nightly", ten, "a")
    assert not await store.claim_cron_tick("nightly", ten, "b")
    assert not await store.claim_cron_tick("nightly", datetime(2024, 3, 1, 10, tzinfo=UTC), "b")
    assert await store.claim_cron_tick("nightly", nine, "b")  # catch-up of an older tick
    assert await store.claim_cron_tick("hourly", ten, "a")  # another trigger, same tick
    assert await store.last_cron_tick("nightly") == ten


# -- lifecycle and schema ------------------------------------------------------------------
async def test_start_and_stop_are_idempotent_and_data_survives_reopening(
    backend: Backend,
) -> None:
    store = backend.make()
    await store.start()
    await store.start()
    await store.create_saga(saga_record("kept"))
    await store.stop()
    await store.stop()
    if not store.durable:
        return  # a new MemorySagaStore starts empty: nothing to reopen
    async with backend.make() as reopened:
        assert await reopened.get_saga("kept") is not None


async def test_durable_store_refuses_work_before_start_and_after_stop(
    durable_backend: Backend,
) -> None:
    store = durable_backend.make()
    with pytest.raises(StoreError, match=r"await store\.start\(\)"):
        await store.get_saga("s1")
    async with store:
        await store.save_saga(saga_record())
    with pytest.raises(StoreError, match="not started"):
        await store.claim_inbox("t", "k", "s", "a", from_now())


async def test_schema_is_created_once_and_its_version_recorded(durable_backend: Backend) -> None:
    backend = durable_backend
    stores = await asyncio.gather(*(backend.open() for _ in range(4)))  # concurrent first start
    for store in stores:
        await store.start()  # again: harmless
    versions = {await store.schema_version() for store in stores}  # type: ignore[attr-defined]
    assert versions == {(await stores[0].schema_versions()).expected}
    await stores[0].save_saga(saga_record())
    later = await backend.open()  # starting on an existing schema keeps the data
    assert await later.get_saga("s1") is not None


async def test_schema_versions_before_and_after_the_first_start(backend: Backend) -> None:
    store = backend.make()
    before = await store.schema_versions()  # a stopped store answers too
    if not store.durable:
        assert before == SchemaVersions(current=0, expected=0)  # no schema to keep
        assert await store.upgrade_schema() == before
        return
    assert before.current == 0  # an empty database: the first start creates the schema
    assert before.expected > 0
    assert not before.outdated
    await backend.open()
    assert await store.schema_versions() == SchemaVersions(before.expected, before.expected)
    assert await store.upgrade_schema() == SchemaVersions(before.expected, before.expected)


async def test_an_outdated_schema_refuses_to_start_until_sagaz_db_upgrade(
    durable_backend: Backend,
) -> None:
    store = durable_backend.make()
    old = await make_outdated(store)
    expected = (await store.schema_versions()).expected
    assert await store.schema_versions() == SchemaVersions(current=old, expected=expected)
    assert (await store.schema_versions()).outdated

    with pytest.raises(SchemaOutdatedError) as refused:
        await store.start()
    assert (refused.value.found, refused.value.expected) == (old, expected)
    assert "run: sagaz db upgrade --store " in str(refused.value)
    with pytest.raises(StoreError, match="not started"):
        await store.get_saga("old")  # nothing half-started

    # the command in the message names this very store
    named = store_from_url(refused.value.store)
    assert type(named) is type(store)
    assert repr(named) == repr(store)
    upgrades = await asyncio.gather(named.upgrade_schema(), durable_backend.make().upgrade_schema())
    assert sorted(upgrades, key=lambda v: v.current) == [  # one upgrade ran, the other waited
        SchemaVersions(current=old, expected=expected),
        SchemaVersions(current=expected, expected=expected),
    ]
    assert await store.schema_versions() == SchemaVersions(expected, expected)
    await durable_backend.open()  # starts now
    started = await durable_backend.open()
    kept = await started.get_saga("old")
    assert kept is not None
    assert kept.status is SagaStatus.COMPLETED


async def test_a_version_2_schema_is_upgraded_with_leases_and_rate_limits_keeping_its_data(
    durable_backend: Backend,
) -> None:
    backend = durable_backend
    store = await backend.open()
    expected = (await store.schema_versions()).expected
    await store.save_saga(saga_record())
    await store.stop()
    await _downgrade_to(store, 2)
    with pytest.raises(SchemaOutdatedError):  # migrated only when asked: sagaz db upgrade
        await backend.make().start()
    assert await backend.make().upgrade_schema() == SchemaVersions(current=2, expected=expected)
    upgraded = await backend.open()
    assert await upgraded.schema_versions() == SchemaVersions(current=expected, expected=expected)
    assert await upgraded.get_saga("s1") is not None
    assert await upgraded.acquire_lease("relay", "a", 30.0)
    assert not await upgraded.acquire_lease("relay", "b", 30.0)
    assert await upgraded.take_rate_token("t", 0.5, 1) == 0.0
    assert await upgraded.take_rate_token("t", 0.5, 1) > 0.0


#: the SQL stores' migration that names trigger_executions rows by trigger id (renumbered if
#: another migration lands first)
TRIGGER_IDS_MIGRATION = 4


async def test_upgrading_names_trigger_executions_by_the_trigger_id_of_their_saga(
    sql_backend: Backend,
) -> None:
    """Before it, executions were named by the poll Trigger's ``name`` while
    ``trigger_schedules`` names a trigger by its id: rows whose saga is stored take its
    ``trigger_id``, so the two tables join again; others are left as they are."""
    store = await sql_backend.open()
    await store.save_saga(saga_record("s1", trigger_id="files.on_file"))
    await store.save_saga(
        saga_record("s2", trigger_id="files.on_file", status=SagaStatus.COMPLETED)
    )
    for saga_id, hash_ in (("s1", "h1"), ("s2", "h2"), ("purged", "h3")):
        await store.start_trigger_execution(
            TriggerExecutionRecord("file_watcher", hash_, saga_id), exclusive=True
        )
    await store.complete_trigger_execution("file_watcher", "s2")
    await store.stop()
    await _set_version(store, TRIGGER_IDS_MIGRATION - 1)  # the rows as that sagaz left them

    assert (await sql_backend.make().upgrade_schema()).current == TRIGGER_IDS_MIGRATION - 1
    upgraded = await sql_backend.open()
    renamed = await upgraded.list_trigger_executions("files.on_file")
    assert [(r.saga_id, r.context_hash, r.completed_at is None) for r in renamed] == [
        ("s1", "h1", True),
        ("s2", "h2", False),
    ]
    assert [r.saga_id for r in await upgraded.list_trigger_executions("file_watcher")] == [
        "purged"  # its saga is gone: nothing names its trigger id
    ]
    # the open exclusive row is found under the new name: it still dedups, and it closes
    again = TriggerExecutionRecord("files.on_file", "h1", "s3")
    assert not await upgraded.start_trigger_execution(again, exclusive=True)
    await upgraded.complete_trigger_execution("files.on_file", "s1")
    assert await upgraded.start_trigger_execution(again, exclusive=True)


async def _set_version(store: SagaStore, version: int) -> None:
    """Record ``version`` as the schema's latest, as if later migrations had not run (the
    columns they added dropped: see ``rewind_schema``)."""
    await rewind_schema(store, version)


#: the migration that adds saga control: SQL schema 6, Redis key layout 6 (renumbered if
#: another migration lands first)
SAGA_CONTROL_MIGRATION = {"sqlite": 6, "postgres": 6, "redis": 6}


async def test_a_schema_before_saga_control_is_upgraded_to_it_and_keeps_its_data(
    durable_backend: Backend,
) -> None:
    backend = durable_backend
    before = SAGA_CONTROL_MIGRATION[backend.name] - 1
    store = await backend.open()
    await store.save_saga(saga_record(status=SagaStatus.COMPENSATED, event={"id": 1}))
    await store.stop()
    await _downgrade_to(store, before)
    with pytest.raises(SchemaOutdatedError):
        await backend.make().start()
    assert (await backend.make().upgrade_schema()).current == before
    upgraded = await backend.open()
    assert await upgraded.get_saga("s1") is not None
    await upgraded.save_saga(saga_record("s2", status=SagaStatus.CANCELLED))
    stored = await upgraded.get_saga("s2")
    assert stored is not None
    assert stored.status is SagaStatus.CANCELLED
    assert await upgraded.add_saga_request(SagaControlRequest("s1", SagaAction.RESUME))
    await upgraded.add_saga_history(SagaHistoryRecord("s1", "resume_requested"))
    assert [e.action for e in await upgraded.list_saga_history("s1")] == ["resume_requested"]


async def _downgrade_to(store: SagaStore, version: int) -> None:
    """Make the storage look as a sagaz of schema ``version`` left it: no saga history or
    requests (before saga control), no rate limits (before 5), no leases (before 3)."""
    tables = ["saga_history", "saga_requests"]
    tables += (["rate_limits"] if version < 5 else []) + (["leases"] if version < 3 else [])
    await rewind_schema(store, version, drop=[("TABLE", table) for table in tables])


async def test_redis_layout_1_is_indexed_for_purging_on_upgrade(
    redis_backend: Backend, redis_url: str
) -> None:
    import redis.asyncio as redis

    store = await redis_backend.open()
    assert isinstance(store, RedisSagaStore)
    started = datetime(2024, 1, 1, tzinfo=UTC)
    for saga_id in ("done", "running"):
        record = TriggerExecutionRecord("poll", f"hash-{saga_id}", saga_id, started_at=started)
        await store.start_trigger_execution(record, exclusive=False)
    await store.complete_trigger_execution("poll", "done")
    ticks = [started + timedelta(hours=h) for h in range(3)]
    for tick in ticks:
        await store.claim_cron_tick("a", tick, "w1")
    await store.claim_cron_tick("b*[x]", started, "w1")  # glob characters in the key
    await store.claim_cron_tick("b*[x]", ticks[1], "w1")
    await store.stop()

    client = redis.Redis.from_url(redis_url)
    try:  # what a version-1 store left behind: no purge indexes
        p = store.prefix
        await client.delete(f"{p}:texec-completed", f"{p}:cron-triggers")
        await client.set(f"{p}:schema_version", 1)
    finally:
        await client.aclose()

    with pytest.raises(SchemaOutdatedError, match="sagaz db upgrade"):
        await redis_backend.open()  # a store migrates only when asked
    expected = (await redis_backend.make().schema_versions()).expected
    assert await redis_backend.make().upgrade_schema() == SchemaVersions(1, expected)
    upgraded = await redis_backend.open()
    assert await upgraded.schema_version() == expected  # type: ignore[attr-defined]
    assert await upgraded.purge_expired(utcnow() + timedelta(seconds=5)) == 4
    assert [r.saga_id for r in await upgraded.list_trigger_executions("poll")] == ["running"]
    assert await upgraded.last_cron_tick("a") == ticks[-1]
    assert await upgraded.last_cron_tick("b*[x]") == ticks[1]
    assert await upgraded.purge_expired(utcnow() + timedelta(seconds=5)) == 0


async def test_redis_layout_4_lists_outbox_rows_by_saga_after_upgrade(
    redis_backend: Backend, redis_url: str
) -> None:
    import redis.asyncio as redis

    store = await redis_backend.open()
    assert isinstance(store, RedisSagaStore)
    step = StepRecord("s1", "a", StepStatus.COMPLETED)
    await store.save_step(step, [OutboxMessage("s1", "orders", {"n": 1})])
    await store.save_saga(saga_record("s2"), [OutboxMessage("s2", "other", 2)])
    await store.save_step(step, [OutboxMessage("s1", "orders", {"n": 3})])
    await store.stop()

    client = redis.Redis.from_url(redis_url)
    try:  # what a version-4 store left behind: outbox rows, no index by saga
        p = store.prefix
        assert await client.delete(f"{p}:outbox-saga:s1", f"{p}:outbox-saga:s2") == 2
        await client.set(f"{p}:schema_version", 4)
    finally:
        await client.aclose()

    with pytest.raises(SchemaOutdatedError, match="sagaz db upgrade"):
        await redis_backend.open()
    expected = (await redis_backend.make().schema_versions()).expected
    assert await redis_backend.make().upgrade_schema() == SchemaVersions(4, expected)
    upgraded = await redis_backend.open()
    assert [m.payload for m in await upgraded.list_saga_outbox("s1")] == [{"n": 1}, {"n": 3}]
    assert [m.payload for m in await upgraded.list_saga_outbox("s2")] == [2]


async def test_redis_store_reloads_its_scripts_when_the_server_lost_them(
    redis_backend: Backend, redis_url: str
) -> None:
    import redis.asyncio as redis

    store = await redis_backend.open()
    await store.create_saga(saga_record("before"))
    admin = redis.Redis.from_url(redis_url)
    try:
        await admin.script_flush()  # as after a restart
    finally:
        await admin.aclose()
    results = await asyncio.gather(*(store.create_saga(saga_record(f"s{n}")) for n in range(20)))
    assert all(created for _, created in results)
    assert await store.claim_inbox("t", "k", "s0", "w1", utcnow() + timedelta(seconds=30))


async def test_concurrent_redis_calls_share_round_trips_and_keep_their_own_replies(
    redis_backend: Backend,
) -> None:
    store = await redis_backend.open()
    lease = utcnow() + timedelta(seconds=30)
    await store.claim_inbox("t", "taken", "s-taken", "w1", lease)
    await store.complete_inbox("t", "taken")
    claims = await asyncio.gather(
        *(store.claim_inbox("t", f"k{n}", f"s{n}", "w1", lease) for n in range(50)),
        store.claim_inbox("t", "taken", "s-taken", "w1", lease),
    )
    assert [c.outcome for c in claims[:50]] == [ClaimOutcome.CLAIMED] * 50
    assert [c.saga_id for c in claims[:50]] == [f"s{n}" for n in range(50)]
    assert claims[50].outcome is ClaimOutcome.DUPLICATE


async def test_one_failing_redis_call_fails_alone_in_its_round_trip(
    redis_backend: Backend, redis_url: str
) -> None:
    """Group commit: the calls concurrent sagas make share one pipeline; a script that fails
    (here: a key of the wrong type where a saga's hash goes) fails its own caller only."""
    import redis.asyncio as redis
    from redis.exceptions import ResponseError

    store = await redis_backend.open()
    assert isinstance(store, RedisSagaStore)
    admin = redis.Redis.from_url(redis_url)
    try:
        await admin.set(f"{store.prefix}:saga:broken", "not a hash")
    finally:
        await admin.aclose()
    groups = store._client.groups
    sent = groups.groups_sent
    results = await asyncio.gather(
        *(store.save_saga(saga_record(f"s{n}")) for n in range(10)),
        store.save_saga(saga_record("broken")),
        *(store.get_saga(f"nobody-{n}") for n in range(10)),
        return_exceptions=True,
    )
    assert groups.groups_sent - sent <= 2  # 21 calls, not 21 round trips
    assert results[:10] == [None] * 10
    assert isinstance(results[10], ResponseError) and "WRONGTYPE" in str(results[10])
    assert results[11:] == [None] * 10
    assert [r.saga_id for r in await store.list_sagas()] == [f"s{n}" for n in reversed(range(10))]


async def test_a_lost_redis_server_fails_every_call_of_the_round_trip(
    private_redis: Any,
) -> None:
    async with RedisSagaStore(private_redis.url, prefix="sagaz-test") as store:
        await store.create_saga(saga_record("s-1"))
        await private_redis.stop()
        lease = utcnow() + timedelta(seconds=30)
        results = await asyncio.gather(
            store.get_saga("s-1"),
            *(store.save_saga(saga_record(f"s{n}")) for n in range(5)),
            *(store.claim_inbox("t", f"k{n}", f"s{n}", "worker", lease) for n in range(5)),
            store.list_saga_outbox("s-1"),
            return_exceptions=True,
        )
        assert all(isinstance(r, StoreUnavailableError) for r in results), [
            (i, repr(r)[:300])
            for i, r in enumerate(results)
            if not isinstance(r, StoreUnavailableError)
        ]
        await private_redis.start()


# -- admission's claim of an event: inbox row and saga row in one operation ----------------
def _event_saga(saga_id: str = "s1", **changes: Any) -> SagaRecord:
    """The pending row admission writes with its claim: no context yet, the event kept."""
    base = saga_record(saga_id, context={}, event={"id": 7}, owner="a", lease_expires_at=from_now())
    return dataclasses.replace(base, trigger_id="t", **changes)


async def test_event_claim_of_a_new_key_creates_its_pending_saga(store: SagaStore) -> None:
    claim = await store.claim_event("t", "k1", _event_saga("s1"))
    assert (claim.outcome, claim.saga_id, claim.owner, claim.created) == (
        ClaimOutcome.CLAIMED,
        "s1",
        "a",
        True,
    )
    assert claim.saga is not None
    stored = await store.get_saga("s1")
    assert stored is not None
    for found in (claim.saga, stored):
        assert (found.saga_id, found.status, found.context, found.event, found.owner) == (
            "s1",
            SagaStatus.PENDING,
            {},
            {"id": 7},
            "a",
        )
        assert found.trigger_id == "t" and found.created_at is not None
    # the key is held like any claimed key: live elsewhere, recoverable once it expires
    busy = await store.claim_inbox("t", "k1", "s1", "b", from_now())
    assert (busy.outcome, busy.owner) == (ClaimOutcome.BUSY, "a")


async def test_event_claim_of_a_completed_or_held_key_writes_no_saga(store: SagaStore) -> None:
    await store.claim_inbox("t", "done", "s-done", "a", from_now())
    await store.complete_inbox("t", "done")
    await store.claim_inbox("t", "held", "s-held", "a", from_now())

    duplicate = await store.claim_event("t", "done", _event_saga("s-done", owner="b"))
    busy = await store.claim_event("t", "held", _event_saga("s-held", owner="b"))
    assert (duplicate.outcome, duplicate.saga, duplicate.created) == (
        ClaimOutcome.DUPLICATE,
        None,
        False,
    )
    assert (busy.outcome, busy.owner, busy.saga, busy.created) == (
        ClaimOutcome.BUSY,
        "a",
        None,
        False,
    )
    assert await store.get_saga("s-done") is None
    assert await store.get_saga("s-held") is None


async def test_event_claim_taking_a_key_over_returns_its_saga_as_stored(
    store: SagaStore,
) -> None:
    first = await store.claim_event("t", "k", _event_saga("s1", lease_expires_at=_earlier()))
    assert first.created
    running = saga_record("s1", status=SagaStatus.RUNNING, context={"n": 1}, trigger_id="t")
    await store.save_saga(dataclasses.replace(running, owner="a", lease_expires_at=_earlier()))

    taken = await store.claim_event("t", "k", _event_saga("s1", owner="b"))
    assert (taken.outcome, taken.owner, taken.created) == (ClaimOutcome.TAKEN_OVER, "b", False)
    assert taken.saga is not None
    assert (taken.saga.status, taken.saga.context) == (SagaStatus.RUNNING, {"n": 1})
    stored = await store.get_saga("s1")
    assert stored is not None and stored.context == {"n": 1}  # not overwritten


async def test_event_claim_of_a_released_key_finds_the_saga_of_its_earlier_run(
    store: SagaStore,
) -> None:
    """A replayed dead letter: its key was released, its saga ended compensated."""
    await store.claim_event("t", "k", _event_saga("s1"))
    await store.save_saga(saga_record("s1", status=SagaStatus.COMPENSATED, trigger_id="t"))
    await store.release_inbox("t", "k")
    again = await store.claim_event("t", "k", _event_saga("s1", owner="b"))
    assert (again.outcome, again.created) == (ClaimOutcome.CLAIMED, False)
    assert again.saga is not None and again.saga.status is SagaStatus.COMPENSATED


async def test_concurrent_event_claims_share_a_group_and_keep_their_own_answers(
    store: SagaStore,
) -> None:
    """Group commit: claims of new keys, a duplicate, a busy key and a key taken over (its
    saga exists) issued at once, among other writes, each get their own answer."""
    await store.claim_inbox("t", "done", "s-done", "x", from_now())
    await store.complete_inbox("t", "done")
    await store.claim_inbox("t", "held", "s-held", "x", from_now())
    await store.claim_event(
        "t", "lapsed", _event_saga("s-lapsed", owner="x", lease_expires_at=_earlier())
    )
    await store.save_saga(saga_record("s-lapsed", status=SagaStatus.RUNNING, context={"n": 2}))
    results = await asyncio.gather(
        *(store.claim_event("t", f"k{n}", _event_saga(f"s{n}")) for n in range(30)),
        store.claim_event("t", "done", _event_saga("s-done")),
        store.claim_event("t", "held", _event_saga("s-held")),
        store.claim_event("t", "lapsed", _event_saga("s-lapsed")),
        store.claim_inbox("t", "plain", "s-plain", "a", from_now()),
        store.create_saga(saga_record("s-created")),
        store.save_checkpoint(saga_record("s-checkpoint", status=SagaStatus.RUNNING)),
    )
    claims = results[:30]
    assert [(c.outcome, c.created) for c in claims] == [(ClaimOutcome.CLAIMED, True)] * 30
    assert [c.saga.saga_id for c in claims if c.saga] == [f"s{n}" for n in range(30)]
    duplicate, busy, lapsed = results[30:33]
    assert (duplicate.outcome, duplicate.saga) == (ClaimOutcome.DUPLICATE, None)
    assert (busy.outcome, busy.saga) == (ClaimOutcome.BUSY, None)
    assert (lapsed.outcome, lapsed.created) == (ClaimOutcome.TAKEN_OVER, False)
    assert lapsed.saga is not None and lapsed.saga.context == {"n": 2}
    assert results[33].outcome is ClaimOutcome.CLAIMED and results[34][1]
    for n in range(30):
        stored = await store.get_saga(f"s{n}")
        assert stored is not None and stored.status is SagaStatus.PENDING
    assert await store.get_saga("s-done") is None and await store.get_saga("s-held") is None


# -- contention ----------------------------------------------------------------------------
async def _contenders(backend: Backend) -> list[SagaStore]:
    stores = await backend.open_many(backend.instances)
    return [stores[i % len(stores)] for i in range(CONTENDERS)]


async def test_concurrent_inbox_claims_of_one_key_have_one_winner(backend: Backend) -> None:
    stores = await _contenders(backend)
    claims = await asyncio.gather(
        *(s.claim_inbox("t", "key", f"saga-{i}", f"w{i}", from_now()) for i, s in enumerate(stores))
    )
    winners = [c for c in claims if c.outcome is ClaimOutcome.CLAIMED]
    assert len(winners) == 1
    assert {c.outcome for c in claims} == {ClaimOutcome.CLAIMED, ClaimOutcome.BUSY}
    assert {c.saga_id for c in claims} == {winners[0].saga_id}


async def test_concurrent_event_claims_of_one_key_create_one_saga(backend: Backend) -> None:
    stores = await _contenders(backend)
    claims = await asyncio.gather(
        *(
            s.claim_event("t", "key", _event_saga("s-key", owner=f"w{i}"))
            for i, s in enumerate(stores)
        )
    )
    winners = [c for c in claims if c.outcome is ClaimOutcome.CLAIMED]
    assert len(winners) == 1 and winners[0].created
    assert {c.outcome for c in claims} == {ClaimOutcome.CLAIMED, ClaimOutcome.BUSY}
    assert all(c.saga is None and not c.created for c in claims if c is not winners[0])
    stored = await stores[0].get_saga("s-key")
    assert stored is not None and stored.owner == winners[0].owner


async def test_concurrent_cron_claims_of_one_tick_have_one_winner(backend: Backend) -> None:
    stores = await _contenders(backend)
    tick = datetime(2024, 6, 1, 0, 0, tzinfo=UTC)
    results = await asyncio.gather(
        *(s.claim_cron_tick("nightly", tick, f"w{i}") for i, s in enumerate(stores))
    )
    assert results.count(True) == 1
    assert await stores[0].last_cron_tick("nightly") == tick


async def test_concurrent_exclusive_executions_of_one_context_have_one_winner(
    backend: Backend,
) -> None:
    stores = await _contenders(backend)
    results = await asyncio.gather(
        *(
            s.start_trigger_execution(
                TriggerExecutionRecord("poll", "same-hash", f"saga-{i}"), exclusive=True
            )
            for i, s in enumerate(stores)
        )
    )
    assert results.count(True) == 1
    assert len(await stores[0].list_trigger_executions("poll")) == 1


async def test_concurrent_acquires_of_one_lease_have_one_winner(backend: Backend) -> None:
    stores = await _contenders(backend)
    results = await asyncio.gather(
        *(s.acquire_lease("relay", f"w{i}", 30.0) for i, s in enumerate(stores))
    )
    assert results.count(True) == 1
    winner = f"w{results.index(True)}"
    renewals = await asyncio.gather(
        *(s.renew_lease("relay", f"w{i}", 30.0) for i, s in enumerate(stores))
    )
    assert [f"w{i}" for i, renewed in enumerate(renewals) if renewed] == [winner]


async def test_concurrent_create_saga_creates_once(backend: Backend) -> None:
    stores = await _contenders(backend)
    results = await asyncio.gather(
        *(s.create_saga(saga_record("one", context={"by": i})) for i, s in enumerate(stores))
    )
    created = [record for record, was_created in results if was_created]
    assert len(created) == 1
    assert {record.context["by"] for record, _ in results} == {created[0].context["by"]}


# -- store URLs ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "kind", "detail"),
    [
        ("memory://", MemorySagaStore, None),
        ("sqlite:///sagaz.db", SQLiteSagaStore, "sagaz.db"),
        ("sqlite:////var/lib/sagaz/app.db", SQLiteSagaStore, "/var/lib/sagaz/app.db"),
        ("postgresql://u:p@db:5432/app?schema=billing", PostgresSagaStore, "billing"),
        ("postgres://u@db/app", PostgresSagaStore, "sagaz"),
        ("redis://localhost:6379/0?prefix=billing", RedisSagaStore, "billing"),
        ("rediss://localhost:6380/1", RedisSagaStore, "sagaz"),
    ],
)
def test_store_from_url_picks_the_store(url: str, kind: type, detail: str | None) -> None:
    store = store_from_url(url)
    assert type(store) is kind
    if isinstance(store, SQLiteSagaStore):
        assert store.path == detail
    elif isinstance(store, PostgresSagaStore):
        assert store.schema == detail
        assert "schema=" not in store.dsn
    elif isinstance(store, RedisSagaStore):
        assert store.prefix == detail
        assert "prefix=" not in store.url


@pytest.mark.parametrize("url", ["mysql://db/app", "sagaz.db", "sqlite://relative.db"])
def test_store_from_url_refuses_unknown_forms_and_lists_the_accepted_ones(url: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        store_from_url(url)
    message = str(info.value)
    assert "sqlite:///" in message
    if "sqlite" not in url:
        assert all(form in message for form in ("memory://", "postgresql://", "redis://"))


def test_store_from_url_hides_passwords_in_errors() -> None:
    with pytest.raises(ConfigurationError) as info:
        store_from_url("mysql://user:s3cret@db/app")
    assert "s3cret" not in str(info.value)


# -- errors a user can hit -----------------------------------------------------------------
async def test_sqlite_in_a_missing_directory_says_what_to_check(tmp_path: Path) -> None:
    store = SQLiteSagaStore(tmp_path / "no-such-dir" / "sagaz.db")
    with pytest.raises(StoreError, match="directory exists"):
        await store.start()


@pytest.mark.parametrize(
    "store",
    [
        PostgresSagaStore("postgresql://app:s3cret@127.0.0.1:1/app"),
        RedisSagaStore("redis://:s3cret@127.0.0.1:1/0"),
    ],
    ids=["postgres", "redis"],
)
async def test_unreachable_server_is_a_store_error_without_the_password(store: SagaStore) -> None:
    with pytest.raises(StoreUnavailableError, match="server is up") as info:
        await store.start()
    assert "s3cret" not in str(info.value)
    assert "127.0.0.1:1" in str(info.value)


@pytest.mark.parametrize(
    ("module", "store"),
    [
        ("asyncpg", PostgresSagaStore("postgresql://127.0.0.1/app")),
        ("redis.asyncio", RedisSagaStore("redis://127.0.0.1")),
    ],
    ids=["postgres", "redis"],
)
async def test_missing_driver_names_the_extra_to_install(
    monkeypatch: pytest.MonkeyPatch, module: str, store: SagaStore
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes the import fail
    with pytest.raises(MissingExtraError, match=r'pip install "sagaz\[(postgres|redis)\]"'):
        await store.start()


# -- a store that cannot be reached -----------------------------------------------------------
@pytest.fixture(params=backend_params("postgres", "redis"))
def restartable(request: pytest.FixtureRequest) -> tuple[SagaStore, Any]:
    """A store on a server of the test's own, and that server (a sync fixture: it may ask
    for the async one)."""
    kind: str = request.param
    server = request.getfixturevalue(f"private_{kind}")
    store: SagaStore = (
        PostgresSagaStore(server.url, schema="sagaz_test")
        if kind == "postgres"
        else RedisSagaStore(server.url, prefix="sagaz-test")
    )
    return store, server


async def test_a_lost_server_is_store_unavailable_and_the_store_works_once_it_is_back(
    restartable: tuple[SagaStore, Any],
) -> None:
    store, server = restartable
    async with store:
        await _lose_the_server_and_get_it_back(store, server)


async def _lose_the_server_and_get_it_back(store: SagaStore, server: Any) -> None:
    lease = utcnow() + timedelta(seconds=30)
    await store.create_saga(saga_record("s-1"))
    await server.stop()
    operations = [
        lambda: store.get_saga("s-1"),
        lambda: store.save_saga(saga_record("s-2")),
        lambda: store.claim_inbox("t", "k", "s-3", "worker", lease),
        lambda: store.renew_leases("worker", lease),
        lambda: store.acquire_lease("relay", "worker", 5.0),
    ]
    for operation in operations:
        with pytest.raises(StoreUnavailableError) as info:
            await operation()
        assert info.value.__cause__ is not None  # the driver's own error
    await server.start()

    async def answers() -> bool:
        try:
            return await store.get_saga("s-1") is not None  # the saga outlived the restart
        except StoreUnavailableError:
            return False  # a connection of the pool that died with the server

    await eventually(answers, what="the store answering again")
    claim = await store.claim_inbox("t", "k", "s-3", "worker", lease)
    assert claim.outcome is ClaimOutcome.CLAIMED


async def test_a_sqlite_file_locked_too_long_is_store_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "sagaz.db"
    async with SQLiteSagaStore(path, busy_timeout=0.05) as store:
        holder = sqlite3.connect(path, isolation_level=None)
        try:
            holder.execute("BEGIN IMMEDIATE")  # another process keeps the write lock
            with pytest.raises(StoreUnavailableError, match="busy_timeout"):
                await store.save_saga(saga_record("s-1"))
            holder.execute("ROLLBACK")
        finally:
            holder.close()
        await store.save_saga(saga_record("s-1"))
        assert await store.get_saga("s-1") is not None
