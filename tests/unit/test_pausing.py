"""Pausing triggers by id: stored in the store, followed by every engine on it within
``trigger_state_interval_seconds`` (on the engine clock), kept across restarts."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, ClassVar

import pytest
from prometheus_client.parser import text_string_to_metric_families

import sagaz
from sagaz import Fire, Saga, Skip, Trigger, TriggerConfig, action, trigger
from sagaz.abc import Emit, Source
from sagaz.engine.engine import TriggerEngine
from sagaz.engine.pausing import set_trigger_enabled
from sagaz.engine.prometheus import render
from sagaz.events import Delivery, EventMeta
from sagaz.exceptions import TriggerNotFoundError
from sagaz.records import TriggerScheduleRecord
from sagaz.storage.memory import MemorySagaStore
from sagaz.testing import FakeClock, continually, eventually
from tests.engine_support import RecordingListener

WATCH = TriggerConfig(trigger_state_interval_seconds=5.0)


class Counting(Trigger):
    """Fires every second; counts its polls."""

    poll_interval = 1.0

    def __init__(self) -> None:
        self.polls = 0

    async def poll(self) -> Any:
        self.polls += 1
        return Skip


class Pushing(Source):
    """A push source that keeps ``Source.pause()``'s default: it emits what the test queues."""

    kind: ClassVar[str] = "pushing"

    def __init__(self) -> None:
        self.queued: asyncio.Queue[int] = asyncio.Queue()
        self.emitted: list[int] = []
        self.taken: list[int] = []  # handed to emit and admitted

    async def run(self, emit: Emit) -> None:
        while True:
            n = await self.queued.get()
            self.emitted.append(n)
            meta = EventMeta(source="pushing")
            await emit(Delivery({"n": n}, meta, identity=str(n), decoded=True))
            self.taken.append(n)


async def parked(clock: FakeClock, count: int) -> None:
    await eventually(lambda: clock.sleepers >= count, what=f"{count} sleepers on the clock")


async def test_a_pause_in_the_store_is_followed_within_the_watch_interval() -> None:
    poller = Counting()

    class Health(Saga):
        @trigger(source="custom", trigger=poller)
        def on_poll(self, ctx: dict[str, Any]) -> dict[str, Any]:
            return ctx

    clock, store = FakeClock(), MemorySagaStore()
    async with TriggerEngine(WATCH, store, clock=clock) as engine:
        await parked(clock, 2)  # the poll source and the trigger-state watcher
        assert await store.get_trigger_schedule("health.on_poll") == TriggerScheduleRecord(
            "health.on_poll", "health", 1000, True
        )
        await set_trigger_enabled(store, "health.on_poll", False)  # as `sagaz triggers pause`
        await clock.advance(4.5)
        assert engine.paused_triggers() == {}  # not read yet
        polls = poller.polls
        assert polls >= 4
        await clock.advance(1.0)  # the watcher reads the store at 5 s
        assert engine.paused_triggers() == {"health.on_poll": {"operator"}}
        polls = poller.polls
        await clock.advance(20.0)
        assert poller.polls == polls  # not polled while paused

        await set_trigger_enabled(store, "health.on_poll", True)
        await clock.advance(5.0)
        assert engine.paused_triggers() == {}
        await clock.advance(3.0)
        assert poller.polls >= polls + 2


async def test_a_source_that_cannot_pause_itself_is_held_in_emit() -> None:
    pushing = Pushing()
    runs: list[int] = []

    class Pushed(Saga):
        @trigger(source="custom", trigger=pushing)
        def on_event(self, event: dict[str, Any]) -> dict[str, Any]:
            return dict(event)

        @action("run")
        async def run(self, ctx: Any) -> None:
            runs.append(ctx["n"])

    async with TriggerEngine(WATCH, MemorySagaStore()) as engine:
        pushing.queued.put_nowait(1)
        await eventually(lambda: runs == [1])
        await engine.pause_trigger("pushed.on_event")
        pushing.queued.put_nowait(2)
        await eventually(lambda: pushing.emitted == [1, 2])
        await continually(lambda: pushing.taken == [1] and runs == [1], during=0.3)
        await engine.resume_trigger("pushed.on_event")
        await eventually(lambda: runs == [1, 2])


async def test_a_paused_memory_trigger_skips_fire_event_and_says_so() -> None:
    runs: list[int] = []

    class Orders(Saga):
        @trigger(source="memory", channel="orders")
        def on_order(self, event: dict[str, Any]) -> dict[str, Any]:
            return dict(event)

        @action("ship")
        async def ship(self, ctx: Any) -> None:
            runs.append(ctx["n"])

    listener = RecordingListener()
    async with TriggerEngine(WATCH, MemorySagaStore(), listeners=[listener]) as engine:
        await engine.pause_trigger("orders.on_order")
        assert await engine.fire("orders", {"n": 1}) == []
        assert listener.filtered == [({"n": 1}, "paused")]
        assert engine.metrics.reasons["paused"] == 1
        text, _ = render(engine)
        await engine.resume_trigger("orders.on_order")
        [saga_id] = await engine.fire("orders", {"n": 2})
        await engine.wait_for(saga_id, timeout=5)
    assert runs == [2]
    gauges = {
        (s.name, s.labels.get("trigger")): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }
    assert gauges[("sagaz_trigger_paused", "orders.on_order")] == 1


async def test_a_restart_keeps_a_paused_trigger_paused() -> None:
    store = MemorySagaStore()
    first = Counting()

    class Health(Saga):
        @trigger(source="custom", trigger=first)
        def on_poll(self, ctx: dict[str, Any]) -> dict[str, Any]:
            return ctx

    config = TriggerConfig(trigger_base_poll_interval=0.01)
    first.poll_interval = 0.01
    async with TriggerEngine(config, store) as engine:
        await eventually(lambda: first.polls >= 1)
        await engine.pause_trigger("health.on_poll")
    polls = first.polls
    async with TriggerEngine(config, store) as engine:  # paused before its source runs
        assert engine.paused_triggers() == {"health.on_poll": {"operator"}}
        await continually(lambda: first.polls == polls, during=0.2, what="no poll")
        schedule = await store.get_trigger_schedule("health.on_poll")
        assert schedule is not None and schedule.enabled is False
        await engine.resume_trigger("health.on_poll")
        await eventually(lambda: first.polls > polls)


async def test_enable_trigger_scheduling_false_polls_no_poll_trigger() -> None:
    poller = Counting()
    poller.poll_interval = 0.01
    runs: list[int] = []

    class Mixed(Saga):
        @trigger(source="custom", trigger=poller)
        def on_poll(self, ctx: dict[str, Any]) -> dict[str, Any]:
            return ctx

        @trigger(source="memory", channel="mixed")
        def on_event(self, event: dict[str, Any]) -> dict[str, Any]:
            return dict(event)

        @action("run")
        async def run(self, ctx: Any) -> None:
            runs.append(ctx["n"])

    config = TriggerConfig(enable_trigger_scheduling=False, trigger_base_poll_interval=0.01)
    async with TriggerEngine(config, MemorySagaStore()) as engine:
        assert engine.paused_triggers() == {"mixed.on_poll": {"trigger_scheduling_disabled"}}
        [saga_id] = await engine.fire("mixed", {"n": 1})  # the other triggers run
        await engine.wait_for(saga_id, timeout=5)
        await engine.resume_trigger("mixed.on_poll")  # scheduling stays disabled
        await continually(lambda: poller.polls == 0, during=0.2, what="no poll")
    assert runs == [1]


async def test_pausing_an_unknown_trigger_names_the_known_ones() -> None:
    class Orders(Saga):
        @trigger(source="memory", channel="orders")
        def on_order(self, event: dict[str, Any]) -> dict[str, Any]:
            return dict(event)

    store = MemorySagaStore()
    async with TriggerEngine(WATCH, store) as engine:
        with pytest.raises(TriggerNotFoundError) as caught:
            await engine.pause_trigger("orders.on_ordre")
    assert "no trigger 'orders.on_ordre' in the store (known: orders.on_order)" in str(caught.value)
    with pytest.raises(LookupError, match="known: none yet"):
        await set_trigger_enabled(MemorySagaStore(), "orders.on_order", False)


async def test_sagaz_pause_trigger_works_with_and_without_a_running_engine() -> None:
    runs: list[int] = []

    class Orders(Saga):
        @trigger(source="memory", channel="orders")
        def on_order(self, event: dict[str, Any]) -> dict[str, Any]:
            return dict(event)

        @action("ship")
        async def ship(self, ctx: Any) -> None:
            runs.append(ctx["n"])

    store = MemorySagaStore()
    engine = await sagaz.start_triggers(WATCH, store)
    try:
        await sagaz.pause_trigger("orders.on_order")  # the running engine: at once
        assert await sagaz.fire_event("orders", {"n": 1}) == []
        await sagaz.resume_trigger("orders.on_order")
        [saga_id] = await sagaz.fire_event("orders", {"n": 2})
        await engine.wait_for(saga_id, timeout=5)
    finally:
        await sagaz.stop_triggers()
    await sagaz.pause_trigger("orders.on_order", store=store)  # no engine: in the store
    schedule = await store.get_trigger_schedule("orders.on_order")
    assert schedule is not None and schedule.enabled is False
    assert runs == [2]


class SlowList(MemorySagaStore):
    """Answers ``list_trigger_schedules`` with what it read before ``release`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.hold = False
        self.reading = asyncio.Event()
        self.release = asyncio.Event()

    async def list_trigger_schedules(self) -> list[TriggerScheduleRecord]:
        rows = await super().list_trigger_schedules()
        if self.hold:
            self.reading.set()
            await self.release.wait()
        return rows


async def test_a_read_begun_before_a_local_pause_does_not_undo_it() -> None:
    class Orders(Saga):
        @trigger(source="memory", channel="orders")
        def on_order(self, event: dict[str, Any]) -> dict[str, Any]:
            return dict(event)

    clock, store = FakeClock(), SlowList()
    async with TriggerEngine(WATCH, store, clock=clock) as engine:
        await parked(clock, 1)
        store.hold = True
        advancing = asyncio.create_task(clock.advance(5.0))
        await store.reading.wait()  # the watcher read "running"
        await engine.pause_trigger("orders.on_order")
        store.release.set()
        await advancing
        await clock.settle()
        assert engine.paused_triggers() == {"orders.on_order": {"operator"}}


class FlakyPause(Pushing):
    """Its first ``pause()`` fails (a broker call that did not go through)."""

    def __init__(self) -> None:
        super().__init__()
        self.pauses = 0

    async def pause(self) -> None:
        self.pauses += 1
        if self.pauses == 1:
            raise ConnectionError("broker unreachable")


async def test_a_failed_source_pause_is_reported_and_tried_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    flaky = FlakyPause()

    class Pushed(Saga):
        @trigger(source="custom", trigger=flaky)
        def on_event(self, event: dict[str, Any]) -> dict[str, Any]:
            return dict(event)

    listener = RecordingListener()
    clock, store = FakeClock(), MemorySagaStore()
    caplog.set_level(logging.INFO, logger="sagaz.engine.pausing")
    async with TriggerEngine(WATCH, store, clock=clock, listeners=[listener]) as engine:
        await parked(clock, 1)
        await set_trigger_enabled(store, "pushed.on_event", False)
        await clock.advance(5.0)
        assert [str(e) for e in listener.errors] == ["broker unreachable"]
        assert engine.triggers["pushed.on_event"].source_paused is False
        await clock.advance(5.0)
        assert flaky.pauses == 2
        assert engine.triggers["pushed.on_event"].source_paused is True
    assert any("paused (operator)" in r.getMessage() for r in caplog.records)


class Unreachable(MemorySagaStore):
    down = False

    async def list_trigger_schedules(self) -> list[TriggerScheduleRecord]:
        if self.down:
            raise ConnectionError("store unreachable")
        return await super().list_trigger_schedules()


async def test_a_store_that_cannot_be_read_leaves_the_states_as_they_are(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Orders(Saga):
        @trigger(source="memory", channel="orders")
        def on_order(self, event: dict[str, Any]) -> dict[str, Any]:
            return dict(event)

    clock, store = FakeClock(), Unreachable()
    caplog.set_level(logging.INFO, logger="sagaz.engine.pausing")
    async with TriggerEngine(WATCH, store, clock=clock) as engine:
        await parked(clock, 1)
        await engine.pause_trigger("orders.on_order")
        store.down = True
        for _ in range(3):
            await clock.advance(5.0)
        assert engine.paused_triggers() == {"orders.on_order": {"operator"}}
        store.down = False
        await clock.advance(5.0)
    warnings = [r for r in caplog.records if "cannot read the triggers' paused state" in r.message]
    assert len(warnings) == 1  # once per outage
    assert any("readable again" in r.getMessage() for r in caplog.records)


async def test_engine_pause_trigger_stops_polling_at_once() -> None:
    """No need to wait for the watcher: the engine that pauses applies it itself."""

    class Once(Trigger):
        poll_interval = 1.0

        def __init__(self) -> None:
            self.polls = 0

        async def poll(self) -> Any:
            self.polls += 1
            return Fire({"n": self.polls})

    once = Once()
    runs: list[int] = []

    class Fired(Saga):
        @trigger(source="custom", trigger=once)
        def on_fire(self, ctx: dict[str, Any]) -> dict[str, Any]:
            return dict(ctx)

        @action("run")
        async def run(self, ctx: Any) -> None:
            runs.append(ctx["n"])

    clock = FakeClock()
    async with TriggerEngine(WATCH, MemorySagaStore(), clock=clock) as engine:
        await parked(clock, 2)
        await clock.advance(1.0)
        await eventually(lambda: runs == [1])
        await engine.pause_trigger("fired.on_fire")
        await clock.advance(10.0)
        assert once.polls == 1 and runs == [1]
