"""A run that ends in an unexpected error while the engine stops is unfinished work of a
graceful stop: its saga is given back with the runs the stop cancelled, so the worker that
claims it next counts no recovery attempt (a deploy is no crash)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from sagaz import Saga, SagaContext, SagaStatus, TriggerConfig, action, trigger
from sagaz.engine.engine import TriggerEngine
from sagaz.engine.runner import SagaRunner
from sagaz.engine.work_item import WorkItem
from sagaz.storage.memory import MemorySagaStore
from tests.engine_support import RecordingListener

CHANNEL = "dispatcher_stop"


async def test_a_run_that_errs_while_the_engine_stops_is_given_back_uncounted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Interrupted(Saga):
        saga_name = "errs_at_stop"

        @trigger(source="memory", channel=CHANNEL)
        def on_event(self, event: dict[str, Any]) -> dict[str, Any]:
            return {"n": event["n"]}

        @action("work")
        async def work(self, ctx: SagaContext) -> None:
            return None

    started = asyncio.Event()
    stopping = asyncio.Event()

    async def run(self: SagaRunner, item: WorkItem) -> None:
        # a run that an error outside the saga ends (a bug, a resource the stop closed),
        # raised once the stop has begun and before the saga began
        started.set()
        await stopping.wait()
        raise RuntimeError("a resource closed under the run")

    monkeypatch.setattr(SagaRunner, "run", run)
    store = MemorySagaStore()
    listener = RecordingListener()
    engine = TriggerEngine(
        TriggerConfig(worker_id="w", shutdown_timeout=10), store, listeners=[listener]
    )
    await engine.start()
    [saga_id] = await engine.fire(CHANNEL, {"n": 1})
    await asyncio.wait_for(started.wait(), 5)
    stop = asyncio.create_task(engine.stop())
    await asyncio.sleep(0.05)  # the stop waits for the running saga
    assert not stop.done()
    stopping.set()
    await asyncio.wait_for(stop, 10)
    assert [str(e) for e in listener.errors] == ["a resource closed under the run"]
    saga = await store.get_saga(saga_id)
    assert saga is not None and saga.status is SagaStatus.PENDING
    assert saga.owner is None  # given back: the next claim is no takeover
    assert await store.take_over_saga(saga_id, "w2", datetime.now(UTC) + timedelta(minutes=1)) == 0
