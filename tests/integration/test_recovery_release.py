"""A saga the recovery loop claimed and could not resume is not left leased by its worker
(whose heartbeat would renew the lease until the process stops, while no one resumes it):
it is dead-lettered (a pending saga whose kept event no longer decodes, or one that failed
too often) or given back until a backoff passes; the other sagas of the page are resumed
all the same. On every store: memory, SQLite, PostgreSQL and Redis.

Worker "a" stopped and left the rows; worker "b" (an engine without sources, whose
recovery passes the test runs) finds them.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sagaz import Saga, SagaContext, TriggerConfig, action, trigger
from sagaz.abc import SagaStore
from sagaz.clock import utcnow
from sagaz.engine.dead_letters import replay_delivery
from sagaz.engine.engine import TriggerEngine
from sagaz.engine.identity import saga_id_for
from sagaz.engine.pending import pending_event
from sagaz.engine.replay import replay
from sagaz.engine.run_errors import RunErrors
from sagaz.events import Delivery, EventMeta
from sagaz.exceptions import StoreUnavailableError
from sagaz.records import ClaimOutcome, SagaRecord
from sagaz.saga.result import SagaResult
from sagaz.storage import MemorySagaStore, PostgresSagaStore, RedisSagaStore, SQLiteSagaStore
from sagaz.testing import eventually
from sagaz.types import SagaStatus
from tests.engine_support import RecordingListener
from tests.services import backend_params, delete_redis_keys, drop_postgres_schema, unique_name

SAGA = "recovered-order"
TRIGGER_ID = f"{SAGA}.on_order"
#: recovery passes are run by the test; a failed saga is recoverable again within a second
CONFIG = TriggerConfig(worker_id="b", recovery_interval_seconds=0.05)


@dataclasses.dataclass
class Order:
    """The event class the trigger method takes."""

    id: str
    total: int


@dataclasses.dataclass
class OldOrder:
    """The event class that was kept: ``Order`` has no ``amount`` since."""

    id: str
    amount: int


class Faults:
    """What a test store refuses, by saga id, with errors that are not an outage (as a
    value the store refuses would be): ``fail_admission``, admission's claim of the saga
    (after the recovery loop's), every time; ``fail_run``, the read of its steps as it
    resumes, once (``fail_runs``: every time). ``outage``: admission's claim finds the store
    gone, once."""

    def __init__(self) -> None:
        self.fail_admission: set[str] = set()
        self.fail_run: set[str] = set()
        self.fail_runs: set[str] = set()
        self.outage: set[str] = set()


class Refusing:
    """A store (mixed into one of the four) that refuses what its :class:`Faults` say."""

    faults: Faults
    get_saga: Callable[..., Any]

    async def claim_saga(self, saga_id: str, owner: str, lease_until: Any) -> bool:
        stored = await self.get_saga(saga_id)
        if stored is not None and stored.owner == owner:  # admission's, after the loop's
            if saga_id in self.faults.outage:
                self.faults.outage.discard(saga_id)
                raise StoreUnavailableError("the test store is away")
            if saga_id in self.faults.fail_admission:
                raise RuntimeError(f"refused: {saga_id}")
        return bool(await super().claim_saga(saga_id, owner, lease_until))  # type: ignore[misc]

    async def take_over_saga(self, saga_id: str, owner: str, lease_until: Any) -> int | None:
        stored = await self.get_saga(saga_id)
        if stored is not None and stored.owner == owner:  # admission's, after the loop's
            if saga_id in self.faults.outage:
                self.faults.outage.discard(saga_id)
                raise StoreUnavailableError("the test store is away")
            if saga_id in self.faults.fail_admission:
                raise RuntimeError(f"refused: {saga_id}")
        taken = await super().take_over_saga(saga_id, owner, lease_until)  # type: ignore[misc]
        return None if taken is None else int(taken)

    async def get_steps(self, saga_id: str) -> list[Any]:
        if saga_id in self.faults.fail_run or saga_id in self.faults.fail_runs:
            self.faults.fail_run.discard(saga_id)  # (read as a started saga resumes)
            raise RuntimeError(f"refused to read the steps of {saga_id}")
        return list(await super().get_steps(saga_id))  # type: ignore[misc]


@pytest.fixture(params=backend_params("memory", "sqlite", "postgres", "redis"))
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SagaStore]:
    """A fresh store of each kind that refuses what ``store.faults`` says."""
    kind = request.param
    cleanup: Callable[[], Any] | None = None
    made: SagaStore
    if kind == "memory":
        made = type("RefusingMemory", (Refusing, MemorySagaStore), {})()
    elif kind == "sqlite":
        made = type("RefusingSQLite", (Refusing, SQLiteSagaStore), {})(tmp_path / "sagaz.db")
    elif kind == "postgres":
        dsn, schema = request.getfixturevalue("postgres_dsn"), unique_name("recovery")
        made = type("RefusingPostgres", (Refusing, PostgresSagaStore), {})(dsn, schema=schema)
        cleanup = lambda: drop_postgres_schema(dsn, schema)  # noqa: E731
    else:
        url, prefix = request.getfixturevalue("redis_url"), unique_name("sagaz-recovery")
        made = type("RefusingRedis", (Refusing, RedisSagaStore), {})(url, prefix=prefix)
        cleanup = lambda: delete_redis_keys(url, prefix)  # noqa: E731
    made.faults = Faults()  # type: ignore[attr-defined]
    async with made:
        yield made
    if cleanup is not None:
        await cleanup()


def faults(store: SagaStore) -> Faults:
    found: Faults = store.faults  # type: ignore[attr-defined]
    return found


def define_saga(ran: list[str], *, typed: bool = False) -> None:
    """The saga of the rows worker "a" left; ``typed``: its trigger method takes an
    :class:`Order` (the module's, as bound when the engine starts)."""

    class Shipping(Saga, abstract=True):
        @action("ship")
        async def ship(self, ctx: SagaContext) -> None:
            ran.append(ctx["id"])

    if typed:

        class TypedOrder(Shipping):
            saga_name = SAGA

            @trigger(source="memory", channel="orders")
            def on_order(self, event: Order) -> dict[str, Any]:
                return {"id": event.id}

    else:

        class PlainOrder(Shipping):
            saga_name = SAGA

            @trigger(source="memory", channel="orders")
            def on_order(self, event: dict[str, Any]) -> dict[str, Any]:
                return {"id": event["id"]}


async def left_pending(store: SagaStore, key: str, payload: Any) -> str:
    """Worker "a" accepted ``payload`` (its inbox key ``key``, no ``idempotency_key``) and
    stopped before its trigger method returned: its lease expired."""
    meta = EventMeta(source="memory", trigger=TRIGGER_ID)
    delivery = Delivery(payload=payload, meta=meta, identity=key)
    saga_id = saga_id_for(TRIGGER_ID, key)
    event = pending_event(TRIGGER_ID, delivery)
    expired = utcnow() - timedelta(seconds=1)
    record = SagaRecord(
        saga_id, SAGA, SagaStatus.PENDING, {}, 1, None, TRIGGER_ID, event, "a", expired
    )
    assert (await store.claim_event(TRIGGER_ID, key, record)).created
    return saga_id


async def left_running(store: SagaStore, key: str) -> str:
    """Worker "a" started the saga of ``key`` and stopped: its lease expired."""
    saga_id = saga_id_for(TRIGGER_ID, key)
    expired = utcnow() - timedelta(seconds=1)
    record = SagaRecord(
        saga_id, SAGA, SagaStatus.RUNNING, {"id": key}, 1, None, TRIGGER_ID, None, "a", expired
    )
    await store.create_saga(record)
    return saga_id


async def status(store: SagaStore, saga_id: str) -> SagaStatus | None:
    saga = await store.get_saga(saga_id)
    return None if saga is None else saga.status


async def completed(store: SagaStore, saga_id: str) -> None:
    """Wait until ``saga_id`` completed (its terminal state in the store)."""

    async def done() -> bool:
        return await status(store, saga_id) is SagaStatus.COMPLETED

    await eventually(done, within=10)


async def given_back(store: SagaStore, saga_id: str, since: datetime) -> None:
    """``saga_id``'s row, given back by a pass that began at ``since``: held by no one, and
    recoverable only after a backoff (at least half the recovery interval)."""
    saga = await store.get_saga(saga_id)
    assert saga is not None
    assert saga.owner is None  # old code: "b", renewed by its heartbeat forever
    backoff = timedelta(seconds=CONFIG.recovery_interval_seconds / 2)
    assert saga.lease_expires_at is not None and saga.lease_expires_at >= since + backoff
    assert saga_id not in [r.saga_id for r in await store.list_recoverable(since + backoff)]


async def recoverable(store: SagaStore, saga_id: str) -> bool:
    return saga_id in [r.saga_id for r in await store.list_recoverable(utcnow())]


async def test_a_pending_event_that_no_longer_decodes_is_dead_lettered_then_replayed(
    store: SagaStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran: list[str] = []
    define_saga(ran, typed=True)
    kept = OldOrder("o-1", 3)
    saga_id = await left_pending(store, "o-1", kept)
    good = await left_pending(store, "o-2", Order("o-2", 5))
    # the kept event names the class it was: Order, which no longer fits it
    saga = await store.get_saga(saga_id)
    assert saga is not None and isinstance(saga.event, dict)
    saga.event["payload_type"] = f"{__name__}:Order"
    await store.save_saga(saga)

    listener = RecordingListener()
    async with TriggerEngine(CONFIG, store, start_sources=False, listeners=[listener]) as engine:
        assert await engine.recover_once() == 1  # o-2 is resumed all the same
        await completed(store, good)
        assert ran == ["o-2"]

        [dead] = await store.list_dead_letters()
        assert (dead.reason, dead.saga_id, dead.payload) == (
            "invalid",
            saga_id,
            {"id": "o-1", "amount": 3},
        )
        assert "no longer fits" in dead.error
        assert await store.get_saga(saga_id) is None  # old code: pending, leased by "b"
        assert listener.reasons == ["invalid"]
        assert await engine.recover_once() == 0  # gone for good
    # its inbox row was released: the event may come again
    claim = await store.claim_inbox(TRIGGER_ID, "o-1", saga_id, "c", utcnow())
    assert claim.outcome is ClaimOutcome.CLAIMED
    await store.release_inbox(TRIGGER_ID, "o-1")

    # the class fits the kept event again: `sagaz dlq replay` starts its saga
    fixed = dataclasses.make_dataclass("Order", [("id", str), ("amount", int)])
    fixed.__module__ = __name__
    assert replay_delivery(dead, known_types=[fixed]).payload == fixed("o-1", 3)
    monkeypatch.setattr(sys.modules[__name__], "Order", fixed)
    outcome = await replay(store, dead, config=CONFIG, timeout=10)
    assert (outcome.status, outcome.saga_id) == ("completed", saga_id)
    assert ran == ["o-2", "o-1"]
    assert await store.list_dead_letters() == []


async def test_a_saga_whose_resumption_fails_is_given_back_and_dead_lettered_at_last(
    store: SagaStore,
) -> None:
    ran: list[str] = []
    define_saga(ran)
    bad = await left_pending(store, "o-1", {"id": "o-1"})
    good = await left_pending(store, "o-2", {"id": "o-2"})
    faults(store).fail_admission.add(bad)

    listener = RecordingListener()
    async with TriggerEngine(CONFIG, store, start_sources=False, listeners=[listener]) as engine:
        since = utcnow()
        assert await engine.recover_once() == 1  # old code: RuntimeError, o-2 not resumed
        await completed(store, good)
        assert ran == ["o-2"]
        await given_back(store, bad, since)
        assert [str(e) for e in listener.errors] == [f"refused: {bad}"]

        for _ in range(4):  # five failures in all, each recoverable again after a backoff
            await eventually(lambda: recoverable(store, bad), within=10)
            since = utcnow()
            assert await engine.recover_once() == 0
            await given_back(store, bad, since)
        await eventually(lambda: recoverable(store, bad), within=10)
        assert await engine.recover_once() == 0  # then dead-lettered, with its event
        [dead] = await store.list_dead_letters()
        assert (dead.reason, dead.saga_id, dead.payload, dead.attempts) == (
            "store_error",
            bad,
            {"id": "o-1"},
            5,
        )
        assert dead.error == f"RuntimeError: refused: {bad}"
        assert await store.get_saga(bad) is None
        assert listener.reasons == ["invalid"]
        assert len(listener.errors) == 5
    claim = await store.claim_inbox(TRIGGER_ID, "o-1", bad, "c", utcnow())
    assert claim.outcome is ClaimOutcome.CLAIMED  # released


async def test_a_started_saga_whose_run_fails_is_run_again_here_and_completes(
    store: SagaStore,
) -> None:
    # its run fails once (the read of its steps): the delivery the loop made for it is held
    # and the saga run again after a backoff, as any run a store error ends
    # (sagaz.engine.run_errors); first code: leased by "b" for ever, never resumed
    ran: list[str] = []
    define_saga(ran)
    saga_id = await left_running(store, "o-1")
    faults(store).fail_run.add(saga_id)

    listener = RecordingListener()
    async with TriggerEngine(CONFIG, store, start_sources=False, listeners=[listener]) as engine:
        assert await engine.recover_once() == 1
        await completed(store, saga_id)
        assert ran == ["o-1"]
        assert [str(e) for e in listener.errors] == [f"refused to read the steps of {saga_id}"]
        assert await store.list_dead_letters() == []
        assert await engine.recover_once() == 0


async def test_a_started_saga_whose_run_keeps_failing_is_dead_lettered_and_ends_failed(
    store: SagaStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the runner's attempts (sagaz.engine.run_errors), then a dead letter and a terminal row;
    # first code: leased by "b" for ever; then: given back and tried on every 600 s at most
    monkeypatch.setattr(RunErrors, "initial", 0.02)
    monkeypatch.setattr(RunErrors, "maximum", 0.05)
    ran: list[str] = []
    define_saga(ran)
    saga_id = await left_running(store, "o-1")
    faults(store).fail_runs.add(saga_id)

    listener = RecordingListener()
    async with TriggerEngine(CONFIG, store, start_sources=False, listeners=[listener]) as engine:
        assert await engine.recover_once() == 1
        outcome = await engine.wait_for(saga_id, timeout=10)
        assert isinstance(outcome, SagaResult) and outcome.status is SagaStatus.FAILED
        assert outcome.error == f"RuntimeError: refused to read the steps of {saga_id}"
        [dead] = await store.list_dead_letters()
        assert (dead.reason, dead.saga_id, dead.attempts) == ("store_error", saga_id, 5)
        assert len(listener.errors) == RunErrors.attempts
        saga = await store.get_saga(saga_id)
        assert saga is not None and saga.status is SagaStatus.FAILED
        assert saga.context == {"id": "o-1"}  # as it was stored
        assert await engine.recover_once() == 0  # ended: nothing left to resume
        assert engine.state is not None  # its delivery acked: no count of failures kept
        assert engine.state.resume_failures.count(saga_id) == 0
    assert ran == []


async def test_a_started_saga_whose_saga_object_cannot_be_made_is_given_back(
    store: SagaStore,
) -> None:
    ran: list[str] = []
    define_saga(ran)
    saga_id = await left_running(store, "o-1")
    broken = False

    def factory(cls: type[Saga]) -> Saga:
        if broken:
            raise RuntimeError("the saga's dependencies are not there")
        return cls()

    async with TriggerEngine(CONFIG, store, start_sources=False, saga_factory=factory) as engine:
        broken = True  # after its check at start
        since = utcnow()
        assert await engine.recover_once() == 0  # old code: RuntimeError, leased by "b"
        await given_back(store, saga_id, since)
        broken = False
        await eventually(lambda: recoverable(store, saga_id), within=10)
        assert await engine.recover_once() == 1
        await completed(store, saga_id)
        assert ran == ["o-1"]


async def test_a_saga_claimed_as_the_store_went_away_is_given_back_once_it_is_back(
    store: SagaStore,
) -> None:
    ran: list[str] = []
    define_saga(ran)
    saga_id = await left_pending(store, "o-1", {"id": "o-1"})
    faults(store).outage.add(saga_id)

    async with TriggerEngine(CONFIG, store, start_sources=False) as engine:
        with pytest.raises(StoreUnavailableError):  # the loop waits for the store
            await engine.recover_once()
        assert await engine.recover_once() == 1  # old code: 0, leased by "b" forever
        await completed(store, saga_id)
        assert ran == ["o-1"]
