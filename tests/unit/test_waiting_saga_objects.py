"""What a saga keeps for the garbage collector while it waits for its store: no closure
cells. A closure in the admission's or the runner's coroutine makes a cell per captured
variable at every call, which lives as long as that coroutine waits; with many sagas
waiting for a durable store, they bring on young collections (issue 13)."""

from __future__ import annotations

import asyncio
import gc
import types
from typing import Any

from sagaz import Saga, SagaContext, TriggerConfig, action, trigger
from sagaz.engine.engine import TriggerEngine
from sagaz.engine.joint_deliveries import JointDeliveries
from sagaz.events import Delivery, EventMeta
from sagaz.records import EventClaim
from sagaz.storage.memory import MemorySagaStore

SAGAS = 20


class GatedClaims(MemorySagaStore):
    """The memory store whose ``claim_event`` waits for ``gate`` once it is closed."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.gate.set()
        self.waiting = 0

    async def claim_event(self, trigger_id: str, key: str, record: Any) -> EventClaim:
        if not self.gate.is_set():
            self.waiting += 1
            await self.gate.wait()
        return await super().claim_event(trigger_id, key, record)


def cells() -> int:
    return sum(1 for o in gc.get_objects() if type(o) is types.CellType)


async def test_sagas_waiting_in_a_step_or_for_their_claim_hold_no_closure_cells() -> None:
    step_gate = asyncio.Event()

    class Waiting(Saga):
        saga_name = "waiting_objects"

        @trigger(source="memory", channel="waiting_objects", idempotency_key=lambda e: e["n"])
        def on_event(self, event: dict[str, Any]) -> dict[str, Any]:
            return {"n": event["n"]}

        @action("wait")
        async def wait(self, ctx: SagaContext) -> None:
            await step_gate.wait()

    store = GatedClaims()
    config = TriggerConfig(max_concurrent_sagas=SAGAS + 1)
    async with TriggerEngine(config, store) as engine:
        await engine.fire("waiting_objects", {"n": -1})  # first calls made, then counted
        while engine.dispatcher.in_flight < 1:
            await asyncio.sleep(0.001)
        gc.collect()
        before = cells()
        for n in range(SAGAS):  # SAGAS sagas waiting in their step (the runner's coroutine)
            await engine.fire("waiting_objects", {"n": n})
        while engine.dispatcher.in_flight < SAGAS + 1:
            await asyncio.sleep(0.001)
        store.gate.clear()  # SAGAS more waiting for their claim (the admission's coroutine)
        fired = [
            asyncio.create_task(engine.fire("waiting_objects", {"n": SAGAS + n}))
            for n in range(SAGAS)
        ]
        while store.waiting < SAGAS:
            await asyncio.sleep(0.001)
        gc.collect()
        held = cells() - before
        store.gate.set()  # (before the assertion: a failing test must not wait for shutdown)
        step_gate.set()
        await asyncio.gather(*fired)
        # 2 * SAGAS waiting sagas: before, 4 cells each in the runner, 8 in the admission
        assert held < SAGAS, f"{held} closure cells held by {2 * SAGAS} waiting sagas"


def test_the_durable_stores_checkpoints_make_no_cell_kept_while_they_wait() -> None:
    # a closure, or a comprehension that reads a local, makes that local a cell of every
    # call (Python 3.11), kept while the call waits for its group commit
    from sagaz.storage.postgres.sagas import PostgresSagas
    from sagaz.storage.sqlite.sagas import SQLiteSagas

    assert PostgresSagas.save_checkpoint.__code__.co_cellvars == ()
    assert SQLiteSagas.save_checkpoint.__code__.co_cellvars == ()
    assert SQLiteSagas.save_step.__code__.co_cellvars == ()


def nacked_delivery(log: list[tuple[str, bool]], name: str) -> Delivery:
    async def nack(requeue: bool) -> None:
        log.append((name, requeue))

    return Delivery(payload={}, meta=EventMeta(source="memory"), identity="", nack=nack)


async def test_a_joint_nack_passes_requeue_on_to_every_delivery_and_makes_no_cell() -> None:
    log: list[tuple[str, bool]] = []
    first = nacked_delivery(log, "first")
    joint = JointDeliveries(first, {}, "saga")
    joint.join(nacked_delivery(log, "second"))
    joint.join(nacked_delivery(log, "third"))
    await joint.nack(True)
    assert log == [("first", True), ("second", True), ("third", True)]
    # settling is once per event: no cell made for ``requeue`` at each call
    assert JointDeliveries.__call__.__code__.co_cellvars == ()
