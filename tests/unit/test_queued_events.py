"""What a queued event holds: its pending row stays in the store, and the saga starts from it
as it was written (no read back, its created_at and persisted event as they should be)."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest

from sagaz import Saga, SagaContext, SagaStatus, TriggerConfig, action, trigger
from sagaz.abc import SagaStore
from sagaz.engine.engine import TriggerEngine
from sagaz.engine.work_item import WorkItem
from sagaz.records import SagaRecord


def held_saga(gate: asyncio.Event) -> type[Saga]:
    class Held(Saga):
        saga_name = "held"

        @trigger(source="memory", channel="held", idempotency_key=lambda e: e["n"])
        def on_event(self, event: dict[str, Any]) -> dict[str, Any]:
            return {"n": event["n"]}

        @action("wait")
        async def wait(self, ctx: SagaContext) -> None:
            await gate.wait()

    return Held


@pytest.fixture
def store(local_store: SagaStore) -> SagaStore:
    """The memory store, then an SQLite file (``local_store``)."""
    return local_store


async def test_a_queued_event_holds_no_saga_row_and_its_saga_starts_from_the_one_stored(
    store: SagaStore,
) -> None:
    gate = asyncio.Event()
    held_saga(gate)
    config = TriggerConfig(max_concurrent_sagas=1, persist_events=True)
    async with TriggerEngine(config, store) as engine:
        ids = [saga_id for n in range(3) for saga_id in await engine.fire("held", {"n": n})]
        while engine.dispatcher.in_flight < 1:
            await asyncio.sleep(0.001)
        ours = set(map(id, engine.triggers.values()))  # (not another test's leftovers)
        queued = [
            o
            for o in gc.get_objects()
            if isinstance(o, WorkItem) and id(o.trigger) in ours and o.seq > 0
        ]
        held = [r for item in queued for r in gc.get_referents(item)]
        pending = {item.saga_id: await store.get_saga(item.saga_id) for item in queued}
        gate.set()  # (before any assertion: a failing test must not wait for its shutdown)
        assert all(p is not None and p.status is SagaStatus.PENDING for p in pending.values())
        # the collector walks whatever a queued event holds: not its saga row
        assert len(queued) == 2 and not any(isinstance(r, SagaRecord) for r in held)
        for saga_id in ids:
            assert (await engine.wait_for(saga_id, timeout=5)).status is SagaStatus.COMPLETED
    for saga_id, before in pending.items():
        after = await store.get_saga(saga_id)
        assert after is not None and before is not None
        assert after.status is SagaStatus.COMPLETED
        assert after.created_at == before.created_at
        assert after.event == {"n": int(after.context["n"])}  # persist_events: the event
        assert after.attempt == 1
