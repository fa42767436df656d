"""``OutboxSagaListener``: its messages are written with the saga's terminal state, in the
saga's store, never into the step table; a failed write leaves no completed saga."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from sagaz import OutboxSagaListener, Saga, SagaContext, SagaStatus, action, compensate
from sagaz.exceptions import ConfigurationError, StoreError
from sagaz.records import OutboxMessage, SagaRecord, StepRecord
from sagaz.storage.memory import MemorySagaStore
from sagaz.storage.sqlite import SQLiteSagaStore
from sagaz.types import StepStatus


class OutboxDown(MemorySagaStore):
    """A memory store whose outbox table refuses writes while ``down``."""

    def __init__(self) -> None:
        super().__init__()
        self.down = True

    def _refuse(self, outbox: Sequence[OutboxMessage]) -> None:
        if outbox and self.down:
            raise StoreError("outbox table unavailable")

    async def save_step(self, step: StepRecord, outbox: Sequence[OutboxMessage] = ()) -> None:
        self._refuse(outbox)
        await super().save_step(step, outbox)

    async def save_saga(self, record: SagaRecord, outbox: Sequence[OutboxMessage] = ()) -> None:
        self._refuse(outbox)
        await super().save_saga(record, outbox)

    async def save_checkpoint(
        self,
        saga: SagaRecord | None = None,
        steps: Sequence[StepRecord] = (),
        outbox: Sequence[OutboxMessage] = (),
        *,
        complete_inbox: tuple[str, str] | None = None,
    ) -> None:
        self._refuse(outbox)
        await super().save_checkpoint(saga, steps, outbox, complete_inbox=complete_inbox)


def _order_saga(runs: list[str]) -> type[Saga]:
    class Order(Saga, abstract=True):
        saga_name = "order"

        @action("reserve")
        async def reserve(self, ctx: SagaContext) -> dict[str, int]:
            runs.append("reserve")
            return {"reserved": 1}

        @compensate("reserve")
        async def release(self, ctx: SagaContext) -> None:
            runs.append("release")

        @action("charge")
        async def charge(self, ctx: SagaContext) -> None:
            runs.append("charge")
            if ctx.get("decline"):
                raise RuntimeError("card declined")

    return Order


async def test_a_failed_outbox_write_leaves_no_completed_saga_and_a_resume_completes_it() -> None:
    runs: list[str] = []
    store = OutboxDown()
    saga = _order_saga(runs)()
    with pytest.raises(StoreError, match="outbox table unavailable"):
        await saga.run({}, saga_id="o-1", store=store, listeners=[OutboxSagaListener(store)])
    stored = await store.get_saga("o-1")
    assert stored is not None
    assert stored.status is SagaStatus.RUNNING  # not completed: resumable
    assert await store.fetch_outbox() == []

    store.down = False
    result = await saga.run({}, saga_id="o-1", store=store, listeners=[OutboxSagaListener(store)])
    assert result.status is SagaStatus.COMPLETED
    # "reserve" is not run again; the last step's completion is written with the terminal
    # state (one store operation), so the failed write left "charge" to run again
    assert runs == ["reserve", "charge", "charge"]
    assert {s.name: s.status for s in await store.get_steps("o-1")} == {
        "reserve": StepStatus.COMPLETED,
        "charge": StepStatus.COMPLETED,
    }
    assert [(m.topic, m.payload) for m in await store.fetch_outbox()] == [
        ("saga.completed", {"saga_name": "order", "saga_id": "o-1"})
    ]


async def test_a_failed_outbox_write_leaves_no_compensated_saga() -> None:
    store = OutboxDown()
    saga = _order_saga([])()
    with pytest.raises(StoreError, match="outbox table unavailable"):
        await saga.run(
            {"decline": True}, saga_id="o-2", store=store, listeners=[OutboxSagaListener()]
        )
    stored = await store.get_saga("o-2")
    assert stored is not None
    assert stored.status is SagaStatus.COMPENSATING

    store.down = False
    result = await saga.run(
        {"decline": True}, saga_id="o-2", store=store, listeners=[OutboxSagaListener()]
    )
    assert result.status is SagaStatus.COMPENSATED
    messages = await store.fetch_outbox()
    assert [m.topic for m in messages] == ["saga.failed"]
    assert "card declined" in messages[0].payload["error"]


async def test_an_outbox_listener_on_another_store_is_refused_before_any_step_runs(
    tmp_path: Path,
) -> None:
    runs: list[str] = []
    never_started = SQLiteSagaStore(tmp_path / "outbox.db")
    store = MemorySagaStore()
    saga = _order_saga(runs)()
    with pytest.raises(ConfigurationError) as caught:
        await saga.run({}, store=store, listeners=[OutboxSagaListener(never_started)])
    assert runs == []
    assert await store.list_sagas() == []
    message = str(caught.value)
    assert "'order'" in message
    assert "SQLiteSagaStore" in message
    assert "MemorySagaStore" in message


@pytest.mark.parametrize("listener_store", ["same", "none"])
async def test_lifecycle_messages_go_to_the_outbox_and_never_into_the_steps(
    listener_store: str,
) -> None:
    store = MemorySagaStore()
    listener = OutboxSagaListener(store if listener_store == "same" else None)

    class Emitting(Saga):
        saga_name = "emitting"

        @action("one")
        async def one(self, ctx: SagaContext) -> None:
            ctx.emit("orders.reserved", {"id": 1})

    result = await Emitting().run({}, saga_id="e-1", store=store, listeners=[listener])
    assert result.status is SagaStatus.COMPLETED
    assert [s.name for s in await store.get_steps("e-1")] == ["one"]
    topics: list[Any] = [m.topic for m in await store.fetch_outbox()]
    assert topics == ["orders.reserved", "saga.completed"]
