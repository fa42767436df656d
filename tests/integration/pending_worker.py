"""The saga of :mod:`tests.integration.test_pending_recovery`, and the worker process that
dies in its trigger method: ``python -m tests.integration.pending_worker STORE_URL`` starts
an engine (worker ``"a"``) on the store, fires the event, prints ``entered`` once the trigger
method runs, and blocks there until the test SIGKILLs it."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from sagaz import Saga, SagaContext, TriggerConfig, action, trigger
from sagaz.engine.engine import TriggerEngine
from sagaz.storage.url import store_from_url

__all__ = ["ENTERED", "TRIGGER_ID", "Behaviour", "config", "pending_saga"]

TRIGGER_ID = "pending-order.on_order"
ENTERED = "entered"


class Behaviour:
    """What the trigger method does, per worker (set by each test)."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.entered = asyncio.Event()
        self.block = True  # the dying worker's call never returns: it is killed in it
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
                await asyncio.Event().wait()  # killed here
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


async def _accept_and_block(store_url: str) -> None:
    behaviour = Behaviour()
    pending_saga(behaviour)
    async with store_from_url(store_url) as store, TriggerEngine(config("a"), store) as engine:
        fire = asyncio.create_task(engine.fire("orders", {"id": "o-1", "total": 21}))
        await behaviour.entered.wait()
        print(ENTERED, flush=True)
        await fire  # never returns: the process is killed first


if __name__ == "__main__":
    asyncio.run(_accept_and_block(sys.argv[1]))
