"""Writes fenced by owner, on every store: once another worker took a saga over (its lease
had expired), the old owner's writes of that saga are refused (``LeaseLostError``) and
change nothing, and the engine whose run lost the saga stops it without acking.

The engine test is the chaos failure of ``tests/chaos/test_two_processes.py`` made
deterministic: worker ``a`` is in a step of a saga when its lease expires (it stopped
renewing it: a starved process), worker ``b`` gets the event again and completes the saga,
then ``a``'s step returns. Before fencing, ``a`` ran the rest of the saga again and wrote
it completed over ``b``'s row.
"""

from __future__ import annotations

import asyncio
import functools
from collections import Counter
from datetime import timedelta
from typing import Any, ClassVar

import pytest

from sagaz import Saga, SagaContext, SagaStatus, TriggerConfig, action, trigger
from sagaz.abc import Emit, SagaStore, Source
from sagaz.clock import utcnow
from sagaz.engine.engine import TriggerEngine
from sagaz.events import AdmissionOutcome, Delivery, EventMeta
from sagaz.exceptions import LeaseLostError
from sagaz.records import ClaimOutcome, OutboxMessage, StepRecord
from sagaz.testing import eventually
from sagaz.types import StepStatus
from tests.contract.store_backends import Backend, from_now, saga_record


async def _running_saga_of_a(store: SagaStore, *, lease: float) -> None:
    """Saga ``s1`` of key ``("t", "k")``: claimed by ``a`` with a lease of ``lease``
    seconds from now, started (running, its first step running)."""
    record = saga_record("s1", owner="a", lease_expires_at=from_now(lease), trigger_id="t")
    claim = await store.claim_event("t", "k", record)
    assert claim.outcome is ClaimOutcome.CLAIMED
    running = saga_record(
        "s1", status=SagaStatus.RUNNING, owner="a", lease_expires_at=from_now(lease)
    )
    await store.save_checkpoint(running, [StepRecord("s1", "reserve", StepStatus.RUNNING)])


async def test_a_checkpoint_of_a_saga_taken_over_writes_nothing(store: SagaStore) -> None:
    await _running_saga_of_a(store, lease=-1)  # a's lease has expired
    assert await store.claim_saga("s1", "b", from_now())  # b takes the saga over

    finish = saga_record("s1", status=SagaStatus.COMPLETED, owner="a", context={"done": 1})
    with pytest.raises(LeaseLostError) as lost:
        await store.save_checkpoint(
            finish,
            [StepRecord("s1", "reserve", StepStatus.COMPLETED, result={}, completed_seq=1)],
            [OutboxMessage("s1", "orders", {"by": "a"})],
            complete_inbox=("t", "k"),
        )
    assert (lost.value.saga_id, lost.value.owner) == ("s1", "a")
    with pytest.raises(LeaseLostError):
        await store.save_saga(finish, [OutboxMessage("s1", "orders", {"by": "a"})])

    stored = await store.get_saga("s1")
    assert stored is not None
    assert (stored.status, stored.owner, stored.context) == (
        SagaStatus.RUNNING,
        "b",
        {"order_id": 1},
    )
    [step] = await store.get_steps("s1")
    assert step.status is StepStatus.RUNNING  # not a's completion
    assert await store.fetch_outbox() == []
    # the inbox row is still open: the event is not settled by a's write
    claim = await store.claim_inbox("t", "k", "s1", "c", from_now())
    assert claim.outcome is ClaimOutcome.TAKEN_OVER


async def test_the_new_owner_writes_and_the_old_one_stays_fenced_out(store: SagaStore) -> None:
    await _running_saga_of_a(store, lease=-1)
    assert await store.claim_saga("s1", "b", from_now())
    done = saga_record("s1", status=SagaStatus.COMPLETED, owner="b", context={"by": "b"})
    await store.save_checkpoint(
        done,
        [StepRecord("s1", "reserve", StepStatus.COMPLETED, result={}, completed_seq=1)],
        [OutboxMessage("s1", "orders", {"by": "b"})],
        complete_inbox=("t", "k"),
    )
    again = saga_record("s1", status=SagaStatus.COMPLETED, owner="a", context={"by": "a"})
    with pytest.raises(LeaseLostError):
        await store.save_checkpoint(again, complete_inbox=("t", "k"))
    stored = await store.get_saga("s1")
    assert stored is not None and (stored.owner, stored.context) == ("b", {"by": "b"})
    assert [m.payload for m in await store.fetch_outbox()] == [{"by": "b"}]
    claim = await store.claim_inbox("t", "k", "s1", "c", from_now())
    assert claim.outcome is ClaimOutcome.DUPLICATE


async def test_an_owner_whose_lease_expired_writes_while_no_one_took_over(
    store: SagaStore,
) -> None:
    await _running_saga_of_a(store, lease=-1)
    done = saga_record("s1", status=SagaStatus.COMPLETED, owner="a")
    await store.save_checkpoint(done, complete_inbox=("t", "k"))
    stored = await store.get_saga("s1")
    assert stored is not None and (stored.status, stored.owner) == (SagaStatus.COMPLETED, "a")
    # a write without an owner (a library run, an operator's tool) is not fenced
    await store.save_saga(saga_record("s1", status=SagaStatus.FAILED))
    stored = await store.get_saga("s1")
    assert stored is not None and stored.status is SagaStatus.FAILED


async def test_a_new_attempt_by_another_worker_supersedes_the_old_one(store: SagaStore) -> None:
    """A retry or a replayed dead letter runs the saga again as its next attempt, wherever
    it runs: that write is not fenced, and the old attempt's owner is fenced out by it."""
    await _running_saga_of_a(store, lease=60)  # a's lease is live
    await store.save_saga(saga_record("s1", status=SagaStatus.COMPENSATED, owner="a"))
    again = saga_record("s1", status=SagaStatus.RUNNING, owner="b", attempt=2)
    await store.save_checkpoint(again, [StepRecord("s1", "reserve", StepStatus.RUNNING)])
    stored = await store.get_saga("s1")
    assert stored is not None and (stored.owner, stored.attempt) == ("b", 2)
    with pytest.raises(LeaseLostError):  # a's retry, late: attempt 2 is b's
        await store.save_saga(saga_record("s1", status=SagaStatus.RUNNING, owner="a", attempt=2))


async def test_fenced_and_unfenced_checkpoints_of_one_group_keep_their_own_answers(
    backend: Backend,
) -> None:
    """Concurrent checkpoints share a group commit (one statement, one script round trip):
    the fenced ones fail alone, the others are written."""
    [store] = await backend.open_many(1)
    ids = [f"s{n}" for n in range(8)]
    for saga_id in ids:
        record = saga_record(saga_id, owner="a", lease_expires_at=from_now(-1))
        await store.create_saga(record)
    for saga_id in ids[::2]:
        assert await store.claim_saga(saga_id, "b", from_now())

    async def finish(saga_id: str) -> str:
        done = saga_record(saga_id, status=SagaStatus.COMPLETED, owner="a")
        step = StepRecord(saga_id, "reserve", StepStatus.COMPLETED, result={}, completed_seq=1)
        try:
            await store.save_checkpoint(done, [step], [OutboxMessage(saga_id, "t", {})])
        except LeaseLostError:
            return "lost"
        return "written"

    answers = await asyncio.gather(*(finish(saga_id) for saga_id in ids))
    assert answers == ["lost", "written"] * 4
    for n, saga_id in enumerate(ids):
        stored = await store.get_saga(saga_id)
        assert stored is not None
        written = n % 2 == 1
        assert stored.status is (SagaStatus.COMPLETED if written else SagaStatus.PENDING)
        assert len(await store.get_steps(saga_id)) == (1 if written else 0)
    assert sorted(m.saga_id for m in await store.fetch_outbox()) == ids[1::2]


# -- the engine: two workers on one store ---------------------------------------------------
class SharedBroker(Source):
    """A redeliverable push source whose one message the test hands to each engine in turn
    (a broker that redelivers it to another consumer); it records acks and nacks by worker."""

    kind: ClassVar[str] = "shared-broker"
    redeliverable: ClassVar[bool] = True

    def __init__(self) -> None:
        self.emits: list[Emit] = []  # one per engine, in the order they started
        self.acked: Counter[str] = Counter()
        self.nacked: Counter[str] = Counter()

    async def run(self, emit: Emit) -> None:
        self.emits.append(emit)
        await asyncio.Event().wait()

    def delivery(self, worker: str) -> Delivery:
        return Delivery(
            payload={"order": 7},
            decoded=True,
            identity="m-7",  # the same message: the same key, the same saga
            meta=EventMeta(source=self.kind),
            ack=functools.partial(self._ack, worker),
            nack=functools.partial(self._nack, worker),
        )

    async def _ack(self, worker: str) -> None:
        self.acked[worker] += 1

    async def _nack(self, worker: str, requeue: bool) -> None:
        self.nacked[worker] += 1


def _define_saga(broker: SharedBroker, gate: asyncio.Event, runs: Counter[str]) -> None:
    class Fenced(Saga):
        saga_name = "fenced"

        @trigger(source="custom", trigger=broker)
        def on_order(self, event: dict[str, Any]) -> dict[str, Any]:
            return {"order": event["order"]}

        @action("reserve")
        async def reserve(self, ctx: SagaContext) -> None:
            runs["reserve"] += 1
            if runs["reserve"] == 1:  # the first worker's run waits here (a starved process)
                await gate.wait()

        @action("charge")
        async def charge(self, ctx: SagaContext) -> None:
            runs["charge"] += 1


def _no_renewals(store: SagaStore) -> None:
    """Stop ``store``'s lease renewals from reaching it, as for a process too starved to
    send them in time."""

    async def renew_leases(owner: str, lease_until: Any) -> int:
        return 0

    store.renew_leases = renew_leases  # type: ignore[method-assign]


async def test_a_worker_that_lost_its_lease_in_a_step_does_not_complete_the_saga_again(
    backend: Backend,
) -> None:
    broker, gate, runs = SharedBroker(), asyncio.Event(), Counter[str]()
    _define_saga(broker, gate, runs)
    store_a, store_b = await backend.open(), await backend.open()
    _no_renewals(store_a)
    config_a = TriggerConfig(worker_id="a", lease_seconds=0.5)
    config_b = TriggerConfig(worker_id="b", lease_seconds=30)
    async with TriggerEngine(config_a, store_a) as engine_a:
        await eventually(lambda: len(broker.emits) == 1, what="a consuming")
        admitted = await broker.emits[0](broker.delivery("a"))
        assert admitted.outcome is AdmissionOutcome.ACCEPTED
        saga_id = admitted.saga_id
        assert saga_id is not None
        await eventually(lambda: runs["reserve"] == 1, what="a in its first step")
        started = await store_b.get_saga(saga_id)
        assert started is not None and started.lease_expires_at is not None
        expired = started.lease_expires_at + timedelta(seconds=0.05)
        await eventually(lambda: utcnow() > expired, what="a's lease expired", within=10)

        async with TriggerEngine(config_b, store_b) as engine_b:
            await eventually(lambda: len(broker.emits) == 2, what="b consuming")
            # the broker gives the message to b (a rebalance): b takes the key over
            again = await broker.emits[1](broker.delivery("b"))
            assert (again.outcome, again.saga_id) == (AdmissionOutcome.ACCEPTED, saga_id)
            await eventually(lambda: broker.acked["b"] == 1, what="b's run settled")
            gate.set()  # a's step returns, after b completed the saga
            await eventually(
                lambda: broker.acked["a"] + broker.nacked["a"] == 1, what="a's run ended"
            )
            assert engine_b.metrics.completed["fenced.on_order"] == 1
        assert engine_a.metrics.completed["fenced.on_order"] == 0
        assert engine_a.metrics.lease_lost["fenced.on_order"] == 1
    # a's run stops without settling its delivery; the delivery is held, as a busy key's,
    # until b completed the saga (already so here): then acked as a duplicate, so a's
    # broker position goes on past it (a nack would hold a Kafka partition's commits)
    assert (broker.acked["a"], broker.nacked["a"]) == (1, 0)
    assert engine_a.metrics.reasons["duplicate"] == 1
    # reserve ran in both (at least once: a was in it), charge only in b's run
    assert runs == Counter({"reserve": 2, "charge": 1})
    saga = await store_b.get_saga(saga_id)
    assert saga is not None
    assert (saga.status, saga.owner) == (SagaStatus.COMPLETED, "b")


async def test_a_saga_its_old_owner_completed_during_a_takeover_is_settled_not_run_again(
    backend: Backend,
) -> None:
    """Worker ``b`` takes a pending event over; before its claim of the saga is through,
    the old owner ``a`` (only late, not dead) completes the saga. ``b``'s run starts from
    the row as stored then: completed, so it settles the event and runs no step."""
    broker, gate, runs = SharedBroker(), asyncio.Event(), Counter[str]()

    class LateOwner(Saga):
        saga_name = "late-owner"

        @trigger(source="custom", trigger=broker)
        async def on_order(self, event: dict[str, Any]) -> dict[str, Any]:
            runs["method"] += 1
            if runs["method"] == 1:  # a's admission waits here, its pending row stored
                await gate.wait()
            return {"order": event["order"]}

        @action("charge")
        async def charge(self, ctx: SagaContext) -> None:
            runs["charge"] += 1

    store_a, store_b = await backend.open(), await backend.open()
    _no_renewals(store_a)
    claiming, claim_gate = asyncio.Event(), asyncio.Event()
    take_over_saga = store_b.take_over_saga  # admission's claim of the saga of a key taken over

    async def slow_take_over_saga(saga_id: str, owner: str, lease_until: Any) -> int | None:
        claiming.set()
        await claim_gate.wait()
        return await take_over_saga(saga_id, owner, lease_until)

    store_b.take_over_saga = slow_take_over_saga  # type: ignore[method-assign]
    config_a = TriggerConfig(worker_id="a", lease_seconds=0.5)
    config_b = TriggerConfig(worker_id="b", lease_seconds=30)
    async with TriggerEngine(config_a, store_a):
        await eventually(lambda: len(broker.emits) == 1, what="a consuming")
        admit_a = asyncio.create_task(broker.emits[0](broker.delivery("a")))
        await eventually(lambda: runs["method"] == 1, what="a in the trigger method")
        [pending] = await store_b.list_sagas()
        await _expired(pending.lease_expires_at)
        async with TriggerEngine(config_b, store_b):
            await eventually(lambda: len(broker.emits) == 2, what="b consuming")
            admit_b = asyncio.create_task(broker.emits[1](broker.delivery("b")))
            await asyncio.wait_for(claiming.wait(), 10)  # b took the key over
            gate.set()  # a goes on, and completes the saga
            await eventually(lambda: broker.acked["a"] == 1, what="a's run settled")
            assert (await admit_a).outcome is AdmissionOutcome.ACCEPTED
            completed = await store_b.get_saga(pending.saga_id)
            assert completed is not None and completed.status is SagaStatus.COMPLETED
            await _expired(completed.lease_expires_at)  # b's claim of the saga goes through
            claim_gate.set()
            assert (await admit_b).outcome is AdmissionOutcome.ACCEPTED
            await eventually(
                lambda: broker.acked["b"] + broker.nacked["b"] == 1, what="b's run ended"
            )
    assert broker.acked["b"] == 1  # settled: the saga is done
    assert runs == Counter({"method": 2, "charge": 1})  # charge ran once, in a's run
    saga = await store_b.get_saga(pending.saga_id)
    assert saga is not None and saga.status is SagaStatus.COMPLETED


async def _expired(lease: Any) -> None:
    """Wait until the lease deadline ``lease`` is past."""
    assert lease is not None
    deadline = lease + timedelta(seconds=0.05)
    await eventually(lambda: utcnow() > deadline, what="the lease expired", within=10)
