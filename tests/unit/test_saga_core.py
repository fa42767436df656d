"""Saga core: order, DAG, compensation, retries, timeouts, streams, definition errors, resume."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sagaz import Saga, SagaContext, SagaListener, SagaStatus, action, compensate
from sagaz.exceptions import SagaDefinitionError
from sagaz.storage.memory import MemorySagaStore
from sagaz.types import StepStatus


class Recorder(SagaListener):
    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []

    async def on_step_success(self, saga_name: str, step_name: str, ctx: Any, result: Any) -> None:
        self.calls.append(("success", step_name))

    async def on_compensation_complete(self, saga_name: str, step_name: str, ctx: Any) -> None:
        self.calls.append(("compensated", step_name))

    async def on_saga_complete(self, saga_name: str, saga_id: str, ctx: Any) -> None:
        self.calls.append(("complete",))


async def test_steps_run_in_declaration_order_and_merge_results() -> None:
    order: list[str] = []

    class Order(Saga):
        @action("reserve")
        async def reserve(self, ctx: SagaContext) -> dict[str, Any]:
            order.append("reserve")
            return {"reservation": ctx["order_id"] * 10}

        @action("charge")
        async def charge(self, ctx: SagaContext) -> dict[str, Any]:
            order.append("charge")
            return {"charged": ctx["reservation"] + 1}

        @action("ship")
        async def ship(self, ctx: SagaContext) -> None:
            order.append("ship")

    recorder = Recorder()
    result = await Order().run({"order_id": 4}, store=MemorySagaStore(), listeners=[recorder])
    assert result.status is SagaStatus.COMPLETED
    assert order == ["reserve", "charge", "ship"]
    assert result.context == {"order_id": 4, "reservation": 40, "charged": 41}
    assert recorder.calls[-1] == ("complete",)


async def test_third_step_failure_compensates_two_then_one() -> None:
    undone: list[str] = []

    class Payment(Saga):
        @action("one")
        async def one(self, ctx: SagaContext) -> None: ...

        @action("two")
        async def two(self, ctx: SagaContext) -> None: ...

        @action("three")
        async def three(self, ctx: SagaContext) -> None:
            raise RuntimeError("card declined")

        @compensate("one")
        async def undo_one(self, ctx: SagaContext) -> None:
            undone.append("one")

        @compensate("two")
        async def undo_two(self, ctx: SagaContext) -> None:
            undone.append("two")

    result = await Payment().run({}, store=MemorySagaStore())
    assert result.status is SagaStatus.COMPENSATED
    assert undone == ["two", "one"]
    assert result.failed_step == "three"
    assert "card declined" in (result.error or "")


async def test_failing_compensation_is_retried_then_failed_with_both_errors() -> None:
    tries = 0

    class Broken(Saga):
        @action("one")
        async def one(self, ctx: SagaContext) -> None: ...

        @action("two")
        async def two(self, ctx: SagaContext) -> None:
            raise ValueError("step two broke")

        @compensate("one", max_retries=2, retry_backoff_seconds=0)
        async def undo_one(self, ctx: SagaContext) -> None:
            nonlocal tries
            tries += 1
            raise ConnectionError("refund service down")

    store = MemorySagaStore()
    result = await Broken().run({}, store=store)
    assert result.status is SagaStatus.FAILED
    assert tries == 3
    assert "step two broke" in (result.error or "")
    assert "refund service down" in (result.error or "")
    assert "refund service down" in result.compensation_errors["one"]
    steps = {s.name: s.status for s in await store.get_steps(result.saga_id)}
    assert steps == {"one": StepStatus.COMPENSATION_FAILED, "two": StepStatus.FAILED}


async def test_step_retries_then_succeeds() -> None:
    calls = 0

    class Flaky(Saga):
        @action("call", max_retries=2, retry_backoff_seconds=0)
        async def call(self, ctx: SagaContext) -> dict[str, int]:
            nonlocal calls
            calls += 1
            if calls < 3:
                raise ConnectionError("try again")
            return {"calls": calls}

    result = await Flaky().run({}, store=MemorySagaStore())
    assert result.status is SagaStatus.COMPLETED
    assert result.context["calls"] == 3


async def test_step_timeout_fails_the_step() -> None:
    class Slow(Saga):
        @action("slow", timeout_seconds=0.05)
        async def slow(self, ctx: SagaContext) -> None:
            await asyncio.Event().wait()

    result = await Slow().run({}, store=MemorySagaStore())
    assert result.status is SagaStatus.COMPENSATED
    assert "timeout_seconds=0.05" in (result.error or "")


async def test_dag_runs_independent_steps_concurrently() -> None:
    both_running = asyncio.Event()
    running = 0

    class Fan(Saga):
        @action("left", depends_on=[])
        async def left(self, ctx: SagaContext) -> dict[str, str]:
            nonlocal running
            running += 1
            if running == 2:
                both_running.set()
            await asyncio.wait_for(both_running.wait(), 2)
            return {"left": "ok"}

        @action("right", depends_on=[])
        async def right(self, ctx: SagaContext) -> dict[str, str]:
            nonlocal running
            running += 1
            if running == 2:
                both_running.set()
            await asyncio.wait_for(both_running.wait(), 2)
            return {"right": "ok"}

        @action("join", depends_on=["left", "right"])
        async def join(self, ctx: SagaContext) -> dict[str, str]:
            return {"joined": ctx["left"] + ctx["right"]}

    result = await Fan().run({}, store=MemorySagaStore())
    assert result.status is SagaStatus.COMPLETED, result.error
    assert result.context["joined"] == "okok"


async def test_streaming_action_feeds_downstream_with_bounded_memory() -> None:
    high_water = 0
    produced = 0

    class Stream(Saga):
        @action("numbers")
        async def numbers(self, ctx: SagaContext):  # type: ignore[no-untyped-def]
            nonlocal produced
            for i in range(1000):
                produced += 1
                yield i

        @action("total")
        async def total(self, ctx: SagaContext) -> dict[str, int]:
            nonlocal high_water
            seen = 0
            total = 0
            async for n in ctx.stream("numbers"):
                seen += 1
                high_water = max(high_water, produced - seen)
                total += n
            return {"total": total}

    result = await Stream().run({}, store=MemorySagaStore())
    assert result.status is SagaStatus.COMPLETED, result.error
    assert result.context["total"] == sum(range(1000))
    assert high_water <= 101  # the channel holds at most 100 unread records


async def test_failed_reader_releases_a_blocked_stream_producer() -> None:
    class Stream(Saga):
        @action("numbers")
        async def numbers(self, ctx: SagaContext):  # type: ignore[no-untyped-def]
            for i in range(10_000):
                yield i

        @action("reader")
        async def reader(self, ctx: SagaContext) -> None:
            async for n in ctx.stream("numbers"):
                if n == 5:
                    raise RuntimeError("bad record")

    result = await asyncio.wait_for(Stream().run({}, store=MemorySagaStore()), 5)
    assert result.status is SagaStatus.COMPENSATED
    assert "bad record" in (result.error or "")


async def test_cancelled_saga_resumes_without_rerunning_completed_steps() -> None:
    runs: dict[str, int] = {"a": 0, "b": 0, "c": 0}
    gate = asyncio.Event()
    entered_b = asyncio.Event()

    class Resumable(Saga):
        @action("a")
        async def a(self, ctx: SagaContext) -> dict[str, int]:
            runs["a"] += 1
            return {"a": 1}

        @action("b")
        async def b(self, ctx: SagaContext) -> dict[str, int]:
            runs["b"] += 1
            entered_b.set()
            await gate.wait()
            return {"b": 2}

        @action("c")
        async def c(self, ctx: SagaContext) -> dict[str, int]:
            runs["c"] += 1
            return {"c": ctx["a"] + ctx["b"]}

    store = MemorySagaStore()
    task = asyncio.create_task(Resumable().run({"start": True}, saga_id="s-1", store=store))
    await asyncio.wait_for(entered_b.wait(), 2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    record = await store.get_saga("s-1")
    assert record is not None and record.status is SagaStatus.RUNNING
    gate.set()
    result = await Resumable().run({}, saga_id="s-1", store=store)
    assert result.status is SagaStatus.COMPLETED
    assert runs == {"a": 1, "b": 2, "c": 1}
    assert result.context == {"start": True, "a": 1, "b": 2, "c": 3}


async def test_terminal_saga_id_returns_stored_result_without_running() -> None:
    calls = 0

    class Once(Saga):
        @action("only")
        async def only(self, ctx: SagaContext) -> dict[str, int]:
            nonlocal calls
            calls += 1
            return {"n": calls}

    store = MemorySagaStore()
    first = await Once().run({}, saga_id="x", store=store)
    second = await Once().run({}, saga_id="x", store=store)
    assert calls == 1
    assert second.context == first.context == {"n": 1}


async def test_non_dict_return_is_an_error_naming_class_and_step() -> None:
    class Bad(Saga):
        @action("oops")
        async def oops(self, ctx: SagaContext):  # type: ignore[no-untyped-def]
            return 42

    result = await Bad().run({}, store=MemorySagaStore())
    assert result.status is SagaStatus.COMPENSATED
    assert "Bad" in (result.error or "") and "'oops'" in (result.error or "")


def test_non_dict_return_annotation_is_rejected_at_class_definition() -> None:
    with pytest.raises(SagaDefinitionError, match=r"BadReturn.*'count'.*returns a dict"):

        class BadReturn(Saga):
            @action("count")
            async def count(self, ctx: SagaContext) -> int:
                return 1


def test_unknown_dependency_is_rejected() -> None:
    with pytest.raises(SagaDefinitionError, match=r"Deps.*'b'.*unknown step 'nope'"):

        class Deps(Saga):
            @action("a", depends_on=[])
            async def a(self, ctx: SagaContext) -> None: ...

            @action("b", depends_on=["nope"])
            async def b(self, ctx: SagaContext) -> None: ...


def test_cycle_is_rejected() -> None:
    with pytest.raises(SagaDefinitionError, match=r"Cyclic.*cycle: .*a.*b"):

        class Cyclic(Saga):
            @action("a", depends_on=["b"])
            async def a(self, ctx: SagaContext) -> None: ...

            @action("b", depends_on=["a"])
            async def b(self, ctx: SagaContext) -> None: ...


def test_duplicate_step_name_is_rejected() -> None:
    with pytest.raises(SagaDefinitionError, match=r"Dup.*duplicate step name 'a'"):

        class Dup(Saga):
            @action("a")
            async def first(self, ctx: SagaContext) -> None: ...

            @action("a")
            async def second(self, ctx: SagaContext) -> None: ...


def test_compensation_of_unknown_step_is_rejected() -> None:
    with pytest.raises(SagaDefinitionError, match=r"Orphan.*'ghost'"):

        class Orphan(Saga):
            @action("a")
            async def a(self, ctx: SagaContext) -> None: ...

            @compensate("ghost")
            async def undo(self, ctx: SagaContext) -> None: ...


def test_saga_name_defaults_to_kebab_case() -> None:
    class ModelRetrainingSaga(Saga):
        @action("a")
        async def a(self, ctx: SagaContext) -> None: ...

    assert ModelRetrainingSaga.saga_name == "model-retraining-saga"


async def test_outbox_messages_are_written_with_the_step_checkpoint() -> None:
    class Emitting(Saga):
        @action("one")
        async def one(self, ctx: SagaContext) -> dict[str, int]:
            ctx.emit("orders.reserved", {"id": 1})
            return {"done": 1}

        @action("two")
        async def two(self, ctx: SagaContext) -> None:
            ctx.emit("orders.charged", {"id": 1})
            raise RuntimeError("no")

    store = MemorySagaStore()
    await Emitting().run({}, store=store)
    messages = await store.fetch_outbox()
    assert [m.topic for m in messages] == ["orders.reserved"]  # a failed step publishes nothing


def test_a_run_without_an_id_gets_a_random_version_4_uuid() -> None:
    import uuid

    from sagaz.saga.execution import _random_saga_id

    ids = {_random_saga_id() for _ in range(2000)}
    assert len(ids) == 2000
    for text in ids:
        parsed = uuid.UUID(text)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
        assert str(parsed) == text  # canonical: lower-case, hyphens where uuid4() puts them
