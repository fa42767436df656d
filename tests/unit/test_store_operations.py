"""How many store operations the engine makes per saga (docs/operations/stores.md): a one-step
saga makes three (inbox claim with its pending row, start checkpoint, finish checkpoint), each
further step two more; the engine makes no other write for a completed saga."""

from __future__ import annotations

import asyncio
import functools
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from sagaz import Saga, SagaContext, SagaStatus, TriggerConfig, action, trigger
from sagaz.abc import SagaStore
from sagaz.engine.engine import TriggerEngine
from sagaz.storage.memory import MemorySagaStore


class CountingStore(MemorySagaStore):
    """A memory store that counts the calls of every contract operation."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()


def _counting(name: str, method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(method)
    async def operation(self: CountingStore, *args: Any, **kwargs: Any) -> Any:
        self.calls[name] += 1
        return await method(self, *args, **kwargs)

    return operation


_OPERATIONS = SagaStore.__abstractmethods__ | {"save_checkpoint", "claim_event"}
for _name in _OPERATIONS:
    setattr(CountingStore, _name, _counting(_name, getattr(MemorySagaStore, _name)))

_WRITES = {
    "claim_event",
    "claim_inbox",
    "create_saga",
    "save_checkpoint",
    "save_saga",
    "save_step",
    "complete_inbox",
    "release_inbox",
    "delete_saga",
    "reset_steps",
    "claim_saga",
}


@pytest.mark.parametrize(("steps", "per_saga"), [(1, 3), (3, 7)])
async def test_a_completed_saga_costs_one_plus_two_per_step_operations(
    steps: int, per_saga: int
) -> None:
    class OneStep(Saga):
        saga_name = "counted-1"

        @trigger(source="memory", channel="counted-1")
        def on_event(self, event: dict[str, Any]) -> dict[str, Any]:
            return dict(event)

        @action("only")
        async def only(self, ctx: SagaContext) -> None:
            return None

    class ThreeSteps(Saga):
        saga_name = "counted-3"

        @trigger(source="memory", channel="counted-3")
        def on_event(self, event: dict[str, Any]) -> dict[str, Any]:
            return dict(event)

        @action("first")
        async def first(self, ctx: SagaContext) -> dict[str, int]:
            return {"first": 1}

        @action("second")
        async def second(self, ctx: SagaContext) -> None:
            ctx["second"] = 2

        @action("third")
        async def third(self, ctx: SagaContext) -> None:
            return None

    events = 20
    store = CountingStore()
    async with TriggerEngine(TriggerConfig(), store) as engine:
        saga_ids = await asyncio.gather(
            *(engine.fire(f"counted-{steps}", {"n": n}) for n in range(events))
        )
        results = await asyncio.gather(*(engine.wait_for(i, timeout=10) for [i] in saga_ids))
        assert all(r is not None and r.status is SagaStatus.COMPLETED for r in results)
        writes = {name: count for name, count in store.calls.items() if name in _WRITES}
    # a later step's running checkpoint, alone, is a plain save_step: one operation too
    checkpoints = writes.pop("save_checkpoint", 0) + writes.pop("save_step", 0)
    # the inbox claim and the pending row: one operation (``claim_event``), as on every store
    assert writes == {"claim_event": events}
    assert checkpoints == events * (per_saga - 1)
    if steps == 3:  # what the checkpoints left: every step completed, the context whole
        [saga] = await store.list_sagas(limit=1)
        assert saga.context["first"] == 1 and saga.context["second"] == 2
        assert {s.status.value for s in await store.get_steps(saga.saga_id)} == {"completed"}
