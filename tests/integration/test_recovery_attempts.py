"""A saga taken over too often is not run again (``max_recovery_attempts``): the count is the
store's, so the bound holds across workers and restarts, where the recovery loop's own count
of failures (``ResumeFailures``) is each process's and never sees a worker that dies. On
every store: memory, SQLite, PostgreSQL and Redis.

Workers "w1".."wN" took the saga over one after the other and died (each claim counted, each
lease lapsed); worker "b" (the engine of the test) claims it next.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from sagaz import Saga, SagaContext, TriggerConfig, action, trigger
from sagaz.abc import SagaStore
from sagaz.clock import utcnow
from sagaz.engine.engine import TriggerEngine
from sagaz.engine.identity import saga_id_for
from sagaz.engine.replay import replay
from sagaz.records import ClaimOutcome, SagaRecord
from sagaz.saga.result import SagaResult
from sagaz.storage import MemorySagaStore, PostgresSagaStore, RedisSagaStore, SQLiteSagaStore
from sagaz.testing import eventually
from sagaz.types import SagaStatus
from tests.engine_support import RecordingListener
from tests.integration.test_recovery_release import (
    CONFIG,
    SAGA,
    TRIGGER_ID,
    completed,
    define_saga,
    left_pending,
    left_running,
)
from tests.services import backend_params, delete_redis_keys, drop_postgres_schema, unique_name

BOUND = CONFIG.max_recovery_attempts


@pytest.fixture(params=backend_params("memory", "sqlite", "postgres", "redis"))
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SagaStore]:
    """A fresh store of each kind."""
    kind = request.param
    cleanup: Callable[[], Any] | None = None
    made: SagaStore
    if kind == "memory":
        made = MemorySagaStore()
    elif kind == "sqlite":
        made = SQLiteSagaStore(tmp_path / "sagaz.db")
    elif kind == "postgres":
        dsn, schema = request.getfixturevalue("postgres_dsn"), unique_name("attempts")
        made = PostgresSagaStore(dsn, schema=schema)
        cleanup = lambda: drop_postgres_schema(dsn, schema)  # noqa: E731
    else:
        url, prefix = request.getfixturevalue("redis_url"), unique_name("sagaz-attempts")
        made = RedisSagaStore(url, prefix=prefix)
        cleanup = lambda: delete_redis_keys(url, prefix)  # noqa: E731
    async with made:
        yield made
    if cleanup is not None:
        await cleanup()


async def died_taking_it_over(store: SagaStore, saga_id: str, workers: int) -> None:
    """``workers`` workers took ``saga_id`` over one after the other, and each died."""
    lapsed = utcnow() - timedelta(seconds=1)
    for n in range(1, workers + 1):
        assert await store.take_over_saga(saga_id, f"w{n}", lapsed) == n


async def test_a_started_saga_taken_over_at_the_bound_is_still_resumed(store: SagaStore) -> None:
    ran: list[str] = []
    define_saga(ran)
    saga_id = await left_running(store, "o-1")
    await died_taking_it_over(store, saga_id, BOUND - 1)
    async with TriggerEngine(CONFIG, store, start_sources=False) as engine:
        assert await engine.recover_once() == 1  # its claim is the BOUND-th
        await completed(store, saga_id)
    assert ran == ["o-1"]
    assert await store.list_dead_letters() == []


async def test_a_started_saga_taken_over_past_the_bound_is_dead_lettered_and_failed(
    store: SagaStore,
) -> None:
    ran: list[str] = []
    define_saga(ran)
    saga_id = await left_running(store, "o-1")
    await died_taking_it_over(store, saga_id, BOUND)
    listener = RecordingListener()
    async with TriggerEngine(CONFIG, store, start_sources=False, listeners=[listener]) as engine:
        assert await engine.recover_once() == 0  # old code: 1, run again (and again)
        [dead] = await store.list_dead_letters()
        assert (dead.reason, dead.saga_id, dead.attempts) == (
            "recovery_exhausted",
            saga_id,
            BOUND + 1,
        )
        assert "max_recovery_attempts=5" in dead.error
        saga = await store.get_saga(saga_id)
        assert saga is not None
        assert (saga.status, saga.context, saga.error) == (
            SagaStatus.FAILED,
            {"id": "o-1"},  # kept: `sagaz sagas resume` runs it again from its steps
            dead.error,
        )
        outcome = await engine.wait_for(saga_id, timeout=10)
        assert isinstance(outcome, SagaResult) and outcome.status is SagaStatus.FAILED
        assert await engine.recover_once() == 0  # ended: the loop stops
    assert ran == []


async def test_a_pending_saga_taken_over_past_the_bound_is_dead_lettered_then_replayed(
    store: SagaStore,
) -> None:
    ran: list[str] = []
    define_saga(ran)
    saga_id = await left_pending(store, "o-1", {"id": "o-1"})
    await died_taking_it_over(store, saga_id, BOUND)
    async with TriggerEngine(CONFIG, store, start_sources=False) as engine:
        assert await engine.recover_once() == 0  # old code: 1, its trigger method run again
        [dead] = await store.list_dead_letters()
        assert (dead.reason, dead.saga_id, dead.payload, dead.attempts) == (
            "recovery_exhausted",
            saga_id,
            {"id": "o-1"},
            BOUND + 1,
        )
        assert await store.get_saga(saga_id) is None  # its pending row dropped
        assert await engine.recover_once() == 0
    claim = await store.claim_inbox(TRIGGER_ID, "o-1", saga_id, "c", utcnow())
    assert claim.outcome is ClaimOutcome.CLAIMED  # its key released
    await store.release_inbox(TRIGGER_ID, "o-1")

    # fixed: `sagaz dlq replay` runs it, its count starting over with its new row
    outcome = await replay(store, dead, config=CONFIG, timeout=10)
    assert (outcome.status, outcome.saga_id) == ("completed", saga_id)
    assert ran == ["o-1"]


async def test_a_redelivery_that_takes_a_saga_over_past_the_bound_dead_letters_it(
    store: SagaStore,
) -> None:
    # admission's takeover of a key (a redelivered event whose worker died) counts too
    ran: list[str] = []

    class KeyedOrder(Saga):
        saga_name = SAGA

        @action("ship")
        async def ship(self, ctx: SagaContext) -> None:
            ran.append(ctx["id"])

        @trigger(source="memory", channel="orders", idempotency_key=lambda e: e["id"])
        def on_order(self, event: dict[str, Any]) -> dict[str, Any]:
            return {"id": event["id"]}

    saga_id = saga_id_for(TRIGGER_ID, "o-1")
    lapsed = utcnow() - timedelta(seconds=1)
    pending = SagaRecord(saga_id, SAGA, SagaStatus.PENDING, {}, 1, None, TRIGGER_ID, None, "a")
    pending.lease_expires_at = lapsed
    assert (await store.claim_event(TRIGGER_ID, "o-1", pending)).created  # "a" accepted it,
    started = SagaRecord(saga_id, SAGA, SagaStatus.RUNNING, {"id": "o-1"}, owner="a")
    started.trigger_id, started.lease_expires_at = TRIGGER_ID, lapsed
    await store.save_saga(started)  # started it, and died
    await died_taking_it_over(store, saga_id, BOUND)

    # no recovery loop (as for a broker's event, which it leaves to the redelivery)
    async with TriggerEngine(CONFIG, store, start_sources=False) as engine:
        assert await engine.fire("orders", {"id": "o-1"}) == [saga_id]
        outcome = await engine.wait_for(saga_id, timeout=10)
        assert isinstance(outcome, SagaResult) and outcome.status is SagaStatus.FAILED
        [dead] = await store.list_dead_letters()
        assert (dead.reason, dead.saga_id, dead.payload) == (
            "recovery_exhausted",
            saga_id,
            {"id": "o-1"},
        )
        # its inbox row completed with it: the next delivery is a duplicate, not a takeover
        assert await engine.fire("orders", {"id": "o-1"}) == []
    assert ran == []
    saga = await store.get_saga(saga_id)
    assert saga is not None and saga.status is SagaStatus.FAILED


async def recovery_attempts(store: SagaStore, saga_id: str) -> int:
    """The recovery attempts stored for ``saga_id``, given back (no owner): read by a claim,
    which counts none more there, then given back again."""
    taken = await store.take_over_saga(saga_id, "probe", utcnow() + timedelta(seconds=60))
    assert taken is not None
    assert await store.release_saga(saga_id, "probe")
    return taken


def define_held_saga(runs: list[str], held: set[str]) -> None:
    """The saga of worker "a"'s events: its step waits for ever while its id is ``held``
    (a long saga that a stop cuts short at ``shutdown_timeout``)."""

    class LongOrder(Saga):
        saga_name = SAGA

        @action("ship")
        async def ship(self, ctx: SagaContext) -> None:
            runs.append(ctx["id"])
            if ctx["id"] in held:
                await asyncio.Event().wait()

        @trigger(source="memory", channel="orders")
        def on_order(self, event: dict[str, Any]) -> dict[str, Any]:
            return {"id": event["id"]}


async def ran(runs: list[str], times: int) -> None:
    """Wait until the step ran ``times`` times (the last one waits now, if held)."""
    await eventually(lambda: len(runs) == times, within=10)


def deploy(worker: str, **options: Any) -> TriggerConfig:
    """The config of worker ``worker``, one a rolling deploy stops: one takeover allowed."""
    return TriggerConfig(
        worker_id=worker,
        shutdown_timeout=0.05,
        max_recovery_attempts=1,
        recovery_interval_seconds=0.05,
        **options,
    )


async def test_sagas_a_graceful_stop_cuts_short_are_resumed_uncounted_deploy_after_deploy(
    store: SagaStore,
) -> None:
    # a long saga lives through more rolling deploys than max_recovery_attempts: nothing
    # crashed, so it is resumed each time, never dead-lettered recovery_exhausted
    runs: list[str] = []
    held = {"o-1"}
    define_held_saga(runs, held)
    async with TriggerEngine(deploy("a"), store, start_sources=False) as engine:
        [saga_id] = await engine.fire("orders", {"id": "o-1"})
        await ran(runs, 1)
    # given back as the stop cut it short: no owner (old code: "a", its lease ended)
    saga = await store.get_saga(saga_id)
    assert saga is not None and (saga.status, saga.owner) == (SagaStatus.RUNNING, None)
    assert await recovery_attempts(store, saga_id) == 0  # old code: 1

    for worker in ("a2", "a3"):  # resumed, then cut short by the next deploy, twice
        async with TriggerEngine(deploy(worker), store, start_sources=False) as engine:
            assert await engine.recover_once() == 1
            await ran(runs, len(runs) + 1)
        assert await recovery_attempts(store, saga_id) == 0

    held.clear()
    async with TriggerEngine(deploy("b"), store, start_sources=False) as engine:
        assert await engine.recover_once() == 1  # old code: 0, dead-lettered
        await completed(store, saga_id)
    assert runs == ["o-1"] * 4
    assert await store.list_dead_letters() == []


async def test_events_accepted_and_never_started_are_given_back_by_a_graceful_stop(
    store: SagaStore,
) -> None:
    runs: list[str] = []
    held = {"o-1"}
    define_held_saga(runs, held)
    async with TriggerEngine(
        deploy("a", max_concurrent_sagas=1), store, start_sources=False
    ) as engine:
        [running] = await engine.fire("orders", {"id": "o-1"})
        await ran(runs, 1)
        [queued] = await engine.fire("orders", {"id": "o-2"})  # waits for the one worker
    for saga_id, status in ((running, SagaStatus.RUNNING), (queued, SagaStatus.PENDING)):
        saga = await store.get_saga(saga_id)
        assert saga is not None and (saga.status, saga.owner) == (status, None)
        assert await recovery_attempts(store, saga_id) == 0  # old code: 1
    if not store.durable:  # it keeps no pending event: no other process recovers from it
        return

    held.clear()
    async with TriggerEngine(deploy("b"), store, start_sources=False) as engine:
        assert await engine.recover_once() == 2
        await completed(store, running)
        await completed(store, queued)
    assert sorted(runs) == ["o-1", "o-1", "o-2"]
    assert await store.list_dead_letters() == []
