"""Saga control without services: which steps a resume or retry runs again (sequence and
DAG), a cancellation stopping a DAG between steps, and the checks of the Python API."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import sagaz
from sagaz import Saga, SagaContext, SagaStatus, action, compensate
from sagaz.engine.steering import steps_to_rerun
from sagaz.exceptions import SagaCancelledError, SagaControlError
from sagaz.records import SagaAction, SagaRecord, StepRecord
from sagaz.saga.cancellation import Cancellation, SagaCancellations
from sagaz.saga.execution import SagaExecution
from sagaz.storage.memory import MemorySagaStore
from sagaz.types import StepStatus


class Line(Saga, abstract=True):
    saga_name = "unit-line"

    @action("a")
    async def a(self, ctx: SagaContext) -> None: ...

    @action("b")
    async def b(self, ctx: SagaContext) -> None: ...

    @action("c")
    async def c(self, ctx: SagaContext) -> None: ...


class Diamond(Saga, abstract=True):
    """a → (b, c) → d, and e on its own."""

    saga_name = "unit-diamond"

    @action("a", depends_on=[])
    async def a(self, ctx: SagaContext) -> None: ...

    @action("b", depends_on=["a"])
    async def b(self, ctx: SagaContext) -> None: ...

    @action("c", depends_on=["a"])
    async def c(self, ctx: SagaContext) -> None: ...

    @action("d", depends_on=["b", "c"])
    async def d(self, ctx: SagaContext) -> None: ...

    @action("e", depends_on=[])
    async def e(self, ctx: SagaContext) -> None: ...


def recorded(**statuses: StepStatus) -> list[StepRecord]:
    return [StepRecord("s", name, status) for name, status in statuses.items()]


DONE = StepStatus.COMPLETED


def test_resume_runs_again_every_step_not_completed() -> None:
    steps = recorded(a=DONE, b=StepStatus.FAILED)
    assert steps_to_rerun("s", Line.definition(), steps, None) == ["b", "c"]
    undone = recorded(a=StepStatus.COMPENSATED, b=StepStatus.FAILED)
    assert steps_to_rerun("s", Line.definition(), undone, None) == ["a", "b", "c"]


def test_retry_runs_the_step_and_what_comes_after_it() -> None:
    steps = recorded(a=DONE, b=DONE, c=DONE)
    assert steps_to_rerun("s", Line.definition(), steps, "b") == ["b", "c"]
    assert steps_to_rerun("s", Line.definition(), steps, "a") == ["a", "b", "c"]
    assert steps_to_rerun("s", Line.definition(), steps, "c") == ["c"]


def test_retry_in_a_dag_runs_the_step_and_its_dependents_only() -> None:
    steps = recorded(a=DONE, b=DONE, c=DONE, d=DONE, e=DONE)
    assert steps_to_rerun("s", Diamond.definition(), steps, "b") == ["b", "d"]
    assert steps_to_rerun("s", Diamond.definition(), steps, "a") == ["a", "b", "c", "d"]
    failed_e = recorded(a=DONE, b=DONE, c=DONE, d=DONE, e=StepStatus.COMPENSATED)
    assert steps_to_rerun("s", Diamond.definition(), failed_e, "c") == ["c", "d", "e"]


def test_retry_refuses_an_unknown_step_or_an_undone_one_before_it() -> None:
    steps = recorded(a=StepStatus.COMPENSATED, b=DONE, c=DONE)
    with pytest.raises(SagaControlError, match=r"no step 'x' \(its steps: a, b, c\)"):
        steps_to_rerun("s", Line.definition(), steps, "x")
    with pytest.raises(SagaControlError, match="step 'a', before 'c', is compensated"):
        steps_to_rerun("s", Line.definition(), steps, "c")
    dag = recorded(a=DONE, b=StepStatus.COMPENSATED, c=DONE, d=DONE, e=DONE)
    assert steps_to_rerun("s", Diamond.definition(), dag, "c") == ["b", "c", "d"]
    with pytest.raises(SagaControlError, match="step 'b', before 'd', is compensated"):
        steps_to_rerun("s", Diamond.definition(), dag, "d")


def test_a_cancellation_known_before_the_run_starts_it_cancelled() -> None:
    cancellations = SagaCancellations()
    assert not cancellations.cancel("s1", "ann@ops", "wrong order")
    assert cancellations.requested("s1")
    token = cancellations.track("s1")
    assert cancellations.cancelled("s1")
    with pytest.raises(SagaCancelledError, match="cancelled by ann@ops: wrong order"):
        token.check("reserve")
    cancellations.untrack("s1")
    cancellations.keep_only(set())
    assert not cancellations.requested("s1")
    assert not cancellations.track("s1").requested


def test_a_cancel_wakes_a_retry_waiting_for_its_backoff() -> None:
    cancellations = SagaCancellations()
    woken: list[str] = []
    cancellations.retry_waits("s1", lambda: woken.append("s1"))
    assert cancellations.cancel("s1", "ann@ops")  # about to run here
    assert woken == ["s1"]
    assert cancellations.track("s1").requested  # the retry starts cancelled
    cancellations.untrack("s1")
    assert not cancellations.cancel("s1")  # woken once: not waiting any more
    assert woken == ["s1"]
    # a cancel known before the retry waits wakes it at once; a finished wait forgets it
    cancellations.retry_waits("s1", lambda: woken.append("again"))
    assert woken == ["s1", "again"]
    cancellations.retry_waits("s2", lambda: woken.append("s2"))
    cancellations.retry_started("s2")
    assert not cancellations.cancel("s2")
    assert woken == ["s1", "again"]


async def test_a_cancelled_dag_starts_no_step_and_compensates_what_finished() -> None:
    ran: list[str] = []
    undone: list[str] = []
    gate = asyncio.Event()
    entered = asyncio.Event()

    class Fan(Saga, abstract=True):
        saga_name = "unit-fan"

        @action("a", depends_on=[])
        async def a(self, ctx: SagaContext) -> None:
            ran.append("a")

        @action("slow", depends_on=["a"])
        async def slow(self, ctx: SagaContext) -> None:
            ran.append("slow")
            entered.set()
            await gate.wait()

        @action("after", depends_on=["slow"])
        async def after(self, ctx: SagaContext) -> None:
            ran.append("after")

        @compensate("a")
        async def undo_a(self, ctx: SagaContext) -> None:
            undone.append("a")

        @compensate("slow")
        async def undo_slow(self, ctx: SagaContext) -> None:
            undone.append("slow")

    store = MemorySagaStore()
    token = Cancellation()
    execution = SagaExecution(Fan(), store=store, cancellation=token)
    run = asyncio.create_task(execution.run({}, "fan-1"))
    await asyncio.wait_for(entered.wait(), 5)
    token.request("ops", "stop")
    gate.set()  # the running step finishes; the one after it does not start
    result = await run
    assert result.status is SagaStatus.CANCELLED
    assert result.error == "cancelled by ops: stop (before step 'after')"
    assert result.failed_step is None
    assert ran == ["a", "slow"]
    assert undone == ["slow", "a"]
    record = await store.get_saga("fan-1")
    assert record is not None
    assert record.status is SagaStatus.CANCELLED


async def test_the_api_refuses_what_does_not_fit_with_the_fix() -> None:
    store = MemorySagaStore()
    await store.save_saga(SagaRecord("direct", "x", SagaStatus.RUNNING, {}))
    await store.save_saga(SagaRecord("done", "x", SagaStatus.COMPLETED, {}, trigger_id="x.t"))
    await store.save_saga(SagaRecord("live", "x", SagaStatus.RUNNING, {}, trigger_id="x.t"))
    with pytest.raises(SagaControlError, match="no saga nobody in the store"):
        await sagaz.cancel_saga("nobody", store=store)
    with pytest.raises(SagaControlError, match="run directly"):
        await sagaz.cancel_saga("direct", store=store)
    with pytest.raises(SagaControlError, match="has ended completed: nothing to cancel"):
        await sagaz.cancel_saga("done", store=store)
    with pytest.raises(SagaControlError, match="retry ID --from-step"):
        await sagaz.resume_saga("done", store=store)
    with pytest.raises(SagaControlError, match="is running: retry a saga once it has ended"):
        await sagaz.retry_saga("live", "a", store=store)

    request = await sagaz.cancel_saga("live", reason="why not", actor="ann@ops", store=store)
    assert (request.action, request.actor, request.attempt) == (SagaAction.CANCEL, "ann@ops", 1)
    with pytest.raises(SagaControlError, match="a cancel request by ann@ops is still open"):
        await sagaz.cancel_saga("live", store=store)
    history: list[Any] = await sagaz.saga_history("live", store=store)
    assert [(e.action, e.actor, e.detail) for e in history] == [
        ("cancel_requested", "ann@ops", "why not")
    ]
