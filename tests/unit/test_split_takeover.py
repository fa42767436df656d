"""A key taken over from a worker that is alive after all (frozen past its lease, then
thawed): the takeover of its inbox row and the claim of its saga are two store calls, and the
old owner's heartbeat may renew the saga's lease between them. The new owner then holds the
key, the old one the saga; neither may wait for the other for ever.

The old owner waits on the key (here: its admission was cancelled after its claim was made,
so it claims the key again in a while, as a partition revoked at the thaw does); the new
owner waits on the saga. Before, both kept renewing what they held and the event's saga was
never run: the state of the frozen-worker chaos test's one unexplained stall, as far as its
report tells (pending rows owned by the frozen worker, never taken over).
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

import pytest

from sagaz import Saga, SagaContext, TriggerConfig, action, trigger
from sagaz.clock import utcnow
from sagaz.engine.engine import TriggerEngine
from sagaz.events import Delivery, EventMeta
from sagaz.records import EventClaim, SagaRecord
from sagaz.storage.memory import MemorySagaStore
from sagaz.testing import eventually

OLD, NEW = "old-owner", "new-owner"


class ThawBetweenTakeoverAndClaim(MemorySagaStore):
    """The old owner's first claim is made but never answered (its caller is cancelled);
    the new owner's first ``claim_saga`` comes right after the old owner's renewal."""

    def __init__(self) -> None:
        super().__init__()
        self.claimed = asyncio.Event()
        self.thawed = False

    async def claim_event(self, trigger_id: str, key: str, record: SagaRecord) -> EventClaim:
        made = await super().claim_event(trigger_id, key, record)
        if record.owner == OLD and not self.claimed.is_set():
            self.claimed.set()
            await asyncio.Event().wait()  # the answer never comes back
        return made

    async def claim_saga(self, saga_id: str, owner: str, lease_until: datetime) -> bool:
        if owner == NEW and not self.thawed:
            self.thawed = True  # the old owner's heartbeat lands first
            await self.renew_leases(OLD, utcnow() + timedelta(seconds=1))
        return await super().claim_saga(saga_id, owner, lease_until)


def define_saga(runs: list[int]) -> None:
    class Split(Saga):
        saga_name = "split"

        @trigger(source="memory", channel="split", idempotency_key=lambda e: e["n"])
        def on_event(self, event: dict[str, Any]) -> dict[str, Any]:
            return {"n": event["n"]}

        @action("record")
        async def record(self, ctx: SagaContext) -> None:
            runs.append(ctx["n"])


def delivery(acks: list[str], label: str) -> Delivery:
    async def ack() -> None:
        acks.append(label)

    return Delivery(
        payload={"n": 1},
        meta=EventMeta(source="memory"),
        identity="",
        ack=ack,
        wait_for_store=True,  # a broker message
    )


async def test_a_key_and_its_saga_held_by_two_live_workers_still_get_one_run() -> None:
    runs: list[int] = []
    acks: list[str] = []
    define_saga(runs)
    store = ThawBetweenTakeoverAndClaim()
    config: dict[str, Any] = {"lease_seconds": 1.0, "recovery_interval_seconds": 0.2}
    old = TriggerEngine(TriggerConfig(worker_id=OLD, **config), store)
    new = TriggerEngine(TriggerConfig(worker_id=NEW, **config), store)
    async with old, new:
        admitting = asyncio.ensure_future(
            old.admission.admit(old.triggers["split.on_event"], delivery(acks, OLD))
        )
        async with asyncio.timeout(10):
            await store.claimed.wait()  # the key and its pending row are the old owner's
        admitting.cancel()  # (its partition revoked): it claims the key again in a while
        with pytest.raises(asyncio.CancelledError):
            await admitting
        # frozen past its lease: its claims lapsed, and the event went to the new owner,
        # which takes the key over; the old owner's renewal lands before its saga claim
        await store.renew_leases(OLD, utcnow() - timedelta(seconds=1))
        await new.admission.admit(new.triggers["split.on_event"], delivery(acks, NEW))
        await eventually(lambda: sorted(acks) == [NEW, OLD], what="both deliveries acked")
    assert runs == [1]  # one run of the event's saga
