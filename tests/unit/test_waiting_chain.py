"""How deep a saga waits for its store: every wake-up of a store call resumes each coroutine
between the worker's task and the store's, and each of them is a frame the collector
traverses while the saga waits (issue 13, benchmarks/README.md "wake-chain")."""

from __future__ import annotations

import asyncio
import types
from typing import Any

from sagaz import Saga, SagaContext, TriggerConfig, action, trigger
from sagaz.engine.engine import TriggerEngine
from sagaz.storage.memory import MemorySagaStore


class GatedCheckpoints(MemorySagaStore):
    """The memory store whose ``save_checkpoint`` waits for ``gate``; it keeps the tasks
    waiting there."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.waiting: list[asyncio.Task[Any]] = []

    async def save_checkpoint(self, *args: Any, **kwargs: Any) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.waiting.append(task)
        await self.gate.wait()
        await super().save_checkpoint(*args, **kwargs)


def chain(task: asyncio.Task[Any]) -> list[str]:
    """The names of the coroutines ``task`` waits in, outermost first."""
    names = []
    coro: Any = task.get_coro()
    while isinstance(coro, types.CoroutineType):
        names.append(coro.cr_code.co_name)
        coro = coro.cr_await
    return names


async def _wait_for(store: GatedCheckpoints, count: int) -> list[str]:
    while len(store.waiting) < count:
        await asyncio.sleep(0.001)
    return chain(store.waiting[count - 1])


async def test_a_saga_waits_for_its_checkpoints_few_coroutines_deep() -> None:
    class OneStep(Saga):
        saga_name = "waiting_chain"

        @trigger(source="memory", channel="waiting_chain")
        def on_event(self, event: dict[str, Any]) -> dict[str, Any]:
            return event

        @action("step")
        async def step(self, ctx: SagaContext) -> None:
            return None

    store = GatedCheckpoints()
    async with TriggerEngine(TriggerConfig(), store) as engine:
        await engine.fire("waiting_chain", {})
        running = await _wait_for(store, 1)  # the step's running checkpoint
        gate, store.gate = store.gate, asyncio.Event()
        gate.set()
        completed = await _wait_for(store, 2)  # the completed state
        store.gate.set()
        while not engine.metrics.completed:
            await asyncio.sleep(0.001)
    # the worker's task, then the runner, the saga's run and, for the running checkpoint,
    # the step, then the store (waiting on its gate); before, the runner's execution, the
    # forward pass, the step's wrapper and the finish were coroutines of their own too:
    # 9 and 7 deep
    assert running[0] == "_work" and running[-2:] == ["save_checkpoint", "wait"], running
    assert len(running) <= 6, running
    assert completed[0] == "_work" and completed[-2:] == ["save_checkpoint", "wait"], completed
    assert len(completed) <= 5, completed  # (7 before)
