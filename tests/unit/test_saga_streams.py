"""Streaming actions: a bounded channel to the step that reads them, no hang when nobody reads,
timeouts, stream names checked at definition and at run time, resume."""

from __future__ import annotations

import asyncio
import logging
import tracemalloc
from collections.abc import AsyncIterator
from typing import Any

import pytest

from sagaz import Saga, SagaContext, SagaStatus, action
from sagaz.exceptions import SagaDefinitionError
from sagaz.storage.memory import MemorySagaStore
from sagaz.types import StepStatus

# a saga that hangs must fail its test, not stall the suite
GUARD = 10


async def test_the_adr_process_stream_as_last_step_completes_reading_in_order() -> None:
    seen: list[int] = []
    produced = 0
    high_water = 0

    class Pipeline(Saga):
        @action("input")
        async def extract(self, ctx: SagaContext) -> AsyncIterator[int]:
            nonlocal produced
            for i in range(500):
                produced += 1
                yield i

        @action("process_stream")
        async def process(self, ctx: SagaContext) -> AsyncIterator[int]:
            nonlocal high_water
            async for record in ctx.stream("input"):
                seen.append(record)
                high_water = max(high_water, produced - len(seen))
                yield record * 2  # nobody reads these: they are drained and counted

    result = await asyncio.wait_for(Pipeline().run({}, store=MemorySagaStore()), GUARD)
    assert result.status is SagaStatus.COMPLETED, result.error
    assert seen == list(range(500))
    assert high_water <= 101  # the channel holds at most 100 unread records


async def _run_unread_stream(records: int) -> tuple[int, SagaStatus]:
    """Run a saga whose last step yields ``records`` dicts nobody reads; its peak memory."""

    class Sink(Saga):
        @action("prepare")
        async def prepare(self, ctx: SagaContext) -> dict[str, int]:
            return {"count": records}

        @action("export")
        async def export(self, ctx: SagaContext) -> AsyncIterator[dict[str, Any]]:
            for i in range(ctx["count"]):
                yield {"i": i, "payload": "x" * 32}

    store = MemorySagaStore()
    tracemalloc.start()
    try:
        result = await asyncio.wait_for(Sink().run({}, store=store), GUARD)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, result.status


async def test_a_last_step_yielding_100k_unread_records_completes_in_bounded_memory(
    caplog: pytest.LogCaptureFixture,
) -> None:
    await _run_unread_stream(1_000)  # warm up: first-use allocations are not the stream's
    small, status = await _run_unread_stream(10_000)
    assert status is SagaStatus.COMPLETED
    with caplog.at_level(logging.INFO, logger="sagaz.saga.execution"):
        large, status = await _run_unread_stream(100_000)
    assert status is SagaStatus.COMPLETED
    # keeping the records would cost > 10 MB at 100k; the peak (~15 KB) does not grow with them
    assert large < small + 64 * 1024, (small, large)
    assert large < 512 * 1024, large
    drained = [r for r in caplog.records if getattr(r, "discarded", None) is not None]
    assert [(r.step, r.yielded, r.discarded) for r in drained] == [  # type: ignore[attr-defined]
        ("export", 100_000, 100_000)
    ]


async def test_records_left_unread_by_a_reader_are_drained_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Head(Saga):
        @action("numbers")
        async def numbers(self, ctx: SagaContext) -> AsyncIterator[int]:
            for i in range(1_000):
                yield i

        @action("first_three")
        async def first_three(self, ctx: SagaContext) -> dict[str, list[int]]:
            head: list[int] = []
            async for n in ctx.stream("numbers"):
                head.append(n)
                if len(head) == 3:
                    break
            return {"head": head}

    with caplog.at_level(logging.INFO, logger="sagaz.saga.execution"):
        result = await asyncio.wait_for(Head().run({}, store=MemorySagaStore()), GUARD)
    assert result.status is SagaStatus.COMPLETED, result.error
    assert result.context["head"] == [0, 1, 2]
    drained = [r for r in caplog.records if getattr(r, "discarded", None) is not None]
    assert [(r.step, r.yielded, r.discarded) for r in drained] == [  # type: ignore[attr-defined]
        ("numbers", 1_000, 997)
    ]
    assert "997 of its 1000 records" in drained[0].getMessage()


async def test_a_streaming_step_honours_timeout_seconds() -> None:
    yielded = 0

    class Endless(Saga):
        @action("numbers", timeout_seconds=0.05)
        async def numbers(self, ctx: SagaContext) -> AsyncIterator[int]:
            nonlocal yielded
            # never awaits: only the channel can give the timeout a chance to fire
            while yielded < 3_000_000:
                yielded += 1
                yield yielded

        @action("first")
        async def first(self, ctx: SagaContext) -> dict[str, int]:
            async for n in ctx.stream("numbers"):
                return {"first": n}
            return {}

    result = await asyncio.wait_for(Endless().run({}, store=MemorySagaStore()), GUARD)
    assert result.status is SagaStatus.COMPENSATED
    assert result.failed_step == "numbers"
    assert "timeout_seconds=0.05" in (result.error or "")
    assert yielded < 3_000_000


def test_reading_an_unknown_stream_is_rejected_when_the_class_is_defined() -> None:
    with pytest.raises(SagaDefinitionError) as caught:

        class Etl(Saga):
            saga_name = "etl"

            @action("extract")
            async def extract(self, ctx: SagaContext) -> AsyncIterator[int]:
                yield 1

            @action("load")
            async def load(self, ctx: SagaContext) -> None:
                async for _ in ctx.stream("extrac"):
                    pass

    message = str(caught.value)
    assert "'etl'" in message
    assert "'load'" in message
    assert "ctx.stream('extrac')" in message
    assert "['extract']" in message


def test_reading_a_stream_without_depending_on_it_is_rejected_when_defined() -> None:
    with pytest.raises(SagaDefinitionError, match=r"depends_on=\['extract'\]"):

        class Etl(Saga):
            @action("extract", depends_on=[])
            async def extract(self, ctx: SagaContext) -> AsyncIterator[int]:
                yield 1

            @action("audit", depends_on=[])
            async def audit(self, ctx: SagaContext) -> None:
                pass

            @action("load", depends_on=["audit"])
            async def load(self, ctx: SagaContext) -> None:
                async for _ in ctx.stream("extract"):
                    pass


async def test_a_stream_name_known_only_at_run_time_fails_the_step_naming_the_streams() -> None:
    class Etl(Saga):
        saga_name = "etl"

        @action("extract")
        async def extract(self, ctx: SagaContext) -> AsyncIterator[int]:
            yield 1

        @action("load")
        async def load(self, ctx: SagaContext) -> None:
            async for _ in ctx.stream(ctx["source"]):
                pass

    result = await asyncio.wait_for(Etl().run({"source": "nope"}, store=MemorySagaStore()), GUARD)
    assert result.status is SagaStatus.COMPENSATED
    assert result.failed_step == "load"
    assert "saga 'etl'" in (result.error or "")
    assert "ctx.stream('nope')" in (result.error or "")
    assert "['extract']" in (result.error or "")


async def test_a_sink_stream_that_completed_is_not_produced_again_on_resume() -> None:
    runs = {"sink": 0, "gate": 0}
    gate = asyncio.Event()
    store = MemorySagaStore()

    class Fan(Saga):
        @action("sink", depends_on=[])
        async def sink(self, ctx: SagaContext) -> AsyncIterator[int]:
            runs["sink"] += 1
            for i in range(500):
                yield i

        @action("gate", depends_on=[])
        async def wait(self, ctx: SagaContext) -> None:
            runs["gate"] += 1
            await gate.wait()

    task = asyncio.create_task(Fan().run({}, saga_id="fan-1", store=store))

    async def sink_completed() -> None:
        while True:
            steps = {s.name: s.status for s in await store.get_steps("fan-1")}
            if steps.get("sink") is StepStatus.COMPLETED:
                return
            await asyncio.sleep(0.01)

    await asyncio.wait_for(sink_completed(), GUARD)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    gate.set()
    result = await asyncio.wait_for(Fan().run({}, saga_id="fan-1", store=store), GUARD)
    assert result.status is SagaStatus.COMPLETED, result.error
    assert runs == {"sink": 1, "gate": 2}


async def test_reading_at_run_time_a_stream_the_step_does_not_depend_on_fails_the_step() -> None:
    class Etl(Saga):
        saga_name = "etl"

        @action("extract", depends_on=[])
        async def extract(self, ctx: SagaContext) -> AsyncIterator[int]:
            for i in range(10):
                yield i

        @action("audit", depends_on=[])
        async def audit(self, ctx: SagaContext) -> None:
            pass

        @action("load", depends_on=["audit"])
        async def load(self, ctx: SagaContext) -> None:
            async for _ in ctx.stream(ctx["source"]):
                pass

    result = await asyncio.wait_for(
        Etl().run({"source": "extract"}, store=MemorySagaStore()), GUARD
    )
    assert result.status is SagaStatus.COMPENSATED
    assert result.failed_step == "load"
    assert "does not depend on 'extract'" in (result.error or "")
    assert "depends_on=['extract']" in (result.error or "")


async def test_a_triggered_saga_ending_with_an_unread_stream_completes_in_the_engine() -> None:
    import sagaz
    from sagaz import trigger

    class Export(Saga):
        @trigger(source="memory", channel="exports")
        def on_export(self, event: dict[str, int]) -> dict[str, int]:
            return {"rows": event["rows"]}

        @action("export")
        async def export(self, ctx: SagaContext) -> AsyncIterator[int]:
            for i in range(ctx["rows"]):
                yield i

    store = MemorySagaStore()
    await sagaz.start_triggers(store=store)
    try:
        [saga_id] = await sagaz.fire_event("exports", {"rows": 500})

        async def completed() -> None:
            while True:
                saga = await store.get_saga(saga_id)
                if saga is not None and saga.status is SagaStatus.COMPLETED:
                    return
                await asyncio.sleep(0.01)

        await asyncio.wait_for(completed(), GUARD)
    finally:
        await sagaz.stop_triggers()
