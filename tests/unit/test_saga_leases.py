"""A saga row written in the middle of a run carries a fresh lease, not the run's first."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from sagaz import Saga, SagaContext, SagaStatus, action
from sagaz.saga.execution import SagaExecution
from sagaz.storage.memory import MemorySagaStore


class _TwoSteps(Saga):
    saga_name = "lease-two-steps"
    second_may_run: asyncio.Event

    @action("first")
    async def first(self, ctx: SagaContext) -> dict[str, Any]:
        return {"first": True}

    @action("second", depends_on=["first"])
    async def second(self, ctx: SagaContext) -> None:
        await self.second_may_run.wait()


async def test_a_step_checkpoint_writes_the_lease_of_now() -> None:
    store = MemorySagaStore()
    saga = _TwoSteps()
    saga.second_may_run = asyncio.Event()
    first_lease = datetime.now(UTC) + timedelta(seconds=1)
    later_lease = first_lease + timedelta(minutes=5)  # what the engine's clock says by then
    handed: list[datetime] = []

    def lease() -> datetime:  # the engine's lease_until: the first at the start, then later
        handed.append(later_lease if handed else first_lease)
        return handed[-1]

    execution = SagaExecution(
        saga, store, None, None, "t", None, "worker-1", lease, None, None, None
    )
    run = asyncio.create_task(execution.run({}, "s-1"))
    for _ in range(100):  # until the first step's completion is stored
        await asyncio.sleep(0)
        stored = await store.get_saga("s-1")
        if stored is not None and stored.context.get("first"):
            break
    assert stored is not None and stored.context.get("first")
    assert stored.status is SagaStatus.RUNNING
    assert stored.lease_expires_at == later_lease  # the run's first lease would have expired
    saga.second_may_run.set()
    assert (await run).status is SagaStatus.COMPLETED
