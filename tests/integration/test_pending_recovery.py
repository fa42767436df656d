"""A worker stops after it accepted an event (its inbox claim and its saga's pending row are
one store operation) but before its trigger method returned: the pending row holds no
context, only the delivery. Another worker on the same durable store runs the trigger method
again from that delivery, and what it returns decides: a saga, a filtered event, or a dead
letter, each settled once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sagaz import Saga, SagaContext, SagaStatus, TriggerConfig, action, trigger
from sagaz.abc import SagaStore
from sagaz.clock import utcnow
from sagaz.engine.engine import TriggerEngine
from sagaz.records import ClaimOutcome
from sagaz.storage.postgres import PostgresSagaStore
from sagaz.storage.redis import RedisSagaStore
from sagaz.storage.sqlite import SQLiteSagaStore
from sagaz.testing import eventually
from tests.services import backend_params, delete_redis_keys, drop_postgres_schema, unique_name

TRIGGER_ID = "pending-order.on_order"


@pytest.fixture(params=backend_params("sqlite", "postgres", "redis"))
async def store_factory(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Callable[[], SagaStore]]:
    """A durable store; each call opens another store object on it (another process)."""
    if request.param == "sqlite":
        path = tmp_path / "sagaz.db"
        yield lambda: SQLiteSagaStore(str(path))
    elif request.param == "postgres":
        dsn = request.getfixturevalue("postgres_dsn")
        schema = unique_name("pending").replace("-", "_")
        yield lambda: PostgresSagaStore(dsn, schema=schema, max_size=2)
        await drop_postgres_schema(dsn, schema)
    else:
        url = request.getfixturevalue("redis_url")
        prefix = unique_name("sagaz-pending")
        yield lambda: RedisSagaStore(url, prefix=prefix)
        await delete_redis_keys(url, prefix)


class Behaviour:
    """What the trigger method does, per worker (set by each test)."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.entered = asyncio.Event()
        self.block = True  # the first worker's call never returns: it is stopped in it
        self.outcome = "start"  # then: "start" a saga, "skip" it, or "reject" it
        self.ran: list[dict[str, Any]] = []


def pending_saga(behaviour: Behaviour) -> type[Saga]:
    class PendingOrder(Saga):
        saga_name = "pending-order"

        @trigger(source="memory", channel="orders", idempotency_key=lambda e: e["id"])
        async def on_order(self, event: dict[str, Any]) -> dict[str, Any] | None:
            behaviour.calls.append(event["id"])
            if behaviour.block:
                behaviour.entered.set()
                await asyncio.Event().wait()  # stopped here
            if behaviour.outcome == "skip":
                return None
            if behaviour.outcome == "reject":
                raise ValueError("no longer accepted")
            return {"order": event["id"], "total": event["total"] * 2}

        @action("charge")
        async def charge(self, ctx: SagaContext) -> None:
            behaviour.ran.append(dict(ctx.to_dict()))

    return PendingOrder


def config(worker: str) -> TriggerConfig:
    return TriggerConfig(worker_id=worker, lease_seconds=1.0, recovery_interval_seconds=0.1)


async def accept_and_stop(store_factory: Callable[[], SagaStore], behaviour: Behaviour) -> str:
    """Worker "a" accepts the event and is stopped inside the trigger method; returns the
    saga id, whose row is pending without a context."""
    async with store_factory() as store:
        engine = TriggerEngine(config("a"), store)
        await engine.start()
        fire = asyncio.create_task(engine.fire("orders", {"id": "o-1", "total": 21}))
        await asyncio.wait_for(behaviour.entered.wait(), 10)
        fire.cancel()  # the process dies inside the trigger method
        with pytest.raises(asyncio.CancelledError):
            await fire
        await engine.stop()
        [pending] = await store.list_sagas()
        assert (pending.status, pending.context, pending.owner) == (SagaStatus.PENDING, {}, "a")
        return pending.saga_id


async def test_a_pending_saga_without_context_is_started_from_its_kept_event(
    store_factory: Callable[[], SagaStore],
) -> None:
    behaviour = Behaviour()
    pending_saga(behaviour)
    saga_id = await accept_and_stop(store_factory, behaviour)

    behaviour.block = False
    async with store_factory() as store, TriggerEngine(config("b"), store) as engine:

        async def completed() -> bool:
            saga = await store.get_saga(saga_id)
            return saga is not None and saga.status is SagaStatus.COMPLETED

        await eventually(completed, within=15)
        saga = await store.get_saga(saga_id)
        assert saga is not None
        assert saga.context == {"order": "o-1", "total": 42}
        assert saga.event is None  # kept only until the saga started (no persist_events)
        assert behaviour.calls == ["o-1", "o-1"]  # the trigger method ran again, once
        assert behaviour.ran == [{"order": "o-1", "total": 42}]
        # its inbox row completed with it: the same event again is a duplicate
        assert await engine.fire("orders", {"id": "o-1", "total": 21}) == []
        claim = await store.claim_inbox(TRIGGER_ID, "o-1", saga_id, "c", saga.updated_at)
        assert claim.outcome is ClaimOutcome.DUPLICATE


async def test_a_pending_event_the_trigger_method_now_skips_is_filtered(
    store_factory: Callable[[], SagaStore],
) -> None:
    behaviour = Behaviour()
    pending_saga(behaviour)
    saga_id = await accept_and_stop(store_factory, behaviour)

    behaviour.block, behaviour.outcome = False, "skip"
    async with store_factory() as store, TriggerEngine(config("b"), store) as engine:
        await eventually(lambda: engine.metrics.reasons["filtered"] == 1, within=15)
        assert await store.get_saga(saga_id) is None  # no saga: the event is skipped
        claim = await store.claim_inbox(TRIGGER_ID, "o-1", saga_id, "c", _soon())
        assert claim.outcome is ClaimOutcome.DUPLICATE  # and settled
        assert await engine.recover_once() == 0  # nothing runs it again
        assert behaviour.calls == ["o-1", "o-1"] and behaviour.ran == []


async def test_a_pending_event_the_trigger_method_now_rejects_is_dead_lettered(
    store_factory: Callable[[], SagaStore],
) -> None:
    behaviour = Behaviour()
    pending_saga(behaviour)
    saga_id = await accept_and_stop(store_factory, behaviour)

    behaviour.block, behaviour.outcome = False, "reject"
    async with store_factory() as store, TriggerEngine(config("b"), store):
        dead = await eventually(lambda: store.list_dead_letters(), within=15)
        assert [(d.reason, d.saga_id, d.payload) for d in dead] == [
            ("invalid", saga_id, {"id": "o-1", "total": 21})
        ]
        assert "no longer accepted" in dead[0].error

        async def dropped() -> bool:  # after its dead letter: a crash between keeps the event
            return await store.get_saga(saga_id) is None

        await eventually(dropped, within=15)
        assert behaviour.ran == []


def _soon() -> datetime:
    return utcnow() + timedelta(seconds=30)
