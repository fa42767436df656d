"""The heartbeat keeps a live worker's leases from lapsing while its renewals are slow (a
store whose writes queue behind others', a loaded machine): another worker never takes over
a saga that a live worker is running."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import datetime
from typing import Any

from sagaz import Saga, SagaContext, TriggerConfig, action, trigger
from sagaz.engine.engine import TriggerEngine
from sagaz.storage.memory import MemorySagaStore
from sagaz.testing import eventually

LEASE = 6.0
#: longer than a third of the lease, well under half of it: the old schedule (a third of a
#: lease after the end of the last renewal) let the lease lapse for 0.8 s at each renewal;
#: started a third of a lease after the last one started, a renewal lands 1.2 s before it ends
RENEWAL_TAKES = 2.4


class SlowRenewals(MemorySagaStore):
    """Its lease renewals land ``RENEWAL_TAKES`` seconds after they are asked for; it
    counts those that landed, per owner."""

    def __init__(self) -> None:
        super().__init__()
        self.renewed: Counter[str] = Counter()

    async def renew_leases(self, owner: str, lease_until: datetime) -> int:
        await asyncio.sleep(RENEWAL_TAKES)
        touched = await super().renew_leases(owner, lease_until)
        self.renewed[owner] += 1
        return touched


def long_saga(runs: list[str], release: asyncio.Event) -> None:
    class Long(Saga):
        saga_name = "long"

        @trigger(source="memory", channel="long")
        def on_event(self, event: dict[str, Any]) -> dict[str, Any]:
            return dict(event)

        @action("work")
        async def work(self, ctx: SagaContext) -> None:
            runs.append(ctx.saga_id)
            await release.wait()  # no checkpoint meanwhile: only the heartbeat renews it


async def test_a_saga_of_a_live_worker_whose_renewals_are_slow_is_not_taken_over() -> None:
    runs: list[str] = []
    release = asyncio.Event()
    long_saga(runs, release)
    store = SlowRenewals()
    config: dict[str, Any] = {"lease_seconds": LEASE, "recovery_interval_seconds": 0.05}
    first = TriggerEngine(TriggerConfig(worker_id="first", **config), store)
    second = TriggerEngine(TriggerConfig(worker_id="second", **config), store)
    async with first, second:  # the second's recovery loop takes over any lease that lapses
        (saga_id,) = await first.fire("long", {"n": 1})
        await eventually(lambda: runs == [saga_id], what="the step under way")
        start = store.renewed["first"]
        await eventually(
            lambda: store.renewed["first"] >= start + 3, within=60, what="three renewals"
        )
        release.set()
        result = await first.wait_for(saga_id)
    assert result.status.value == "completed"
    assert runs == [saga_id]  # the step ran once: the saga was never taken over
    assert first.metrics.lease_lost["long.on_event"] == 0
