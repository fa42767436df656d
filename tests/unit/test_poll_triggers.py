"""Custom poll triggers with Cloacina semantics: errors, timeouts, overlap dedup, audit rows."""

from __future__ import annotations

import asyncio
from typing import Any

from sagaz import Fire, Saga, Skip, Trigger, TriggerConfig, action, trigger
from sagaz.engine.engine import TriggerEngine
from sagaz.engine.identity import canonical_hash
from sagaz.storage.memory import MemorySagaStore
from sagaz.testing import eventually
from tests.engine_support import RecordingListener

FAST = TriggerConfig(trigger_base_poll_interval=0.01, trigger_poll_timeout=0.1)


class Scripted(Trigger):
    """Raises, hangs, skips, then fires forever."""

    name = "scripted"
    poll_interval = 0.01
    allow_concurrent = True

    def __init__(self) -> None:
        self.polls = 0

    async def poll(self) -> Fire | Any:
        self.polls += 1
        if self.polls == 1:
            raise ConnectionError("health endpoint unreachable")
        if self.polls == 2:
            await asyncio.Event().wait()  # hangs past trigger_poll_timeout
        if self.polls == 3:
            return Skip
        return Fire({"poll": self.polls})


async def test_a_poll_that_raises_or_hangs_does_not_stop_later_polls() -> None:
    scripted = Scripted()
    fired: list[int] = []

    class Health(Saga):
        @trigger(source="custom", trigger=scripted)
        def on_fire(self, ctx: dict[str, Any]) -> dict[str, Any]:
            return dict(ctx)

        @action("recover")
        async def recover(self, ctx: Any) -> None:
            fired.append(ctx["poll"])

    listener = RecordingListener()
    store = MemorySagaStore()
    async with TriggerEngine(FAST, store, listeners=[listener]):
        await eventually(lambda: len(fired) >= 3, within=5)
    assert isinstance(listener.errors[0], ConnectionError)
    assert isinstance(listener.errors[1], TimeoutError)
    assert "trigger_poll_timeout" in str(listener.errors[1])
    assert min(fired) == 4  # polls 1-3 fired nothing, 4+ fired
    schedule = await store.get_trigger_schedule("scripted")
    assert schedule is not None
    assert schedule.last_poll_at is not None
    assert schedule.allow_concurrent is True
    assert schedule.saga_name == "health"


class FileWatcher(Trigger):
    """Fires the same file names every poll, like Cloacina's file watcher."""

    name = "file_watcher"
    poll_interval = 0.01
    allow_concurrent = False

    def __init__(self) -> None:
        self.files = ["a.csv", "b.csv"]
        self.turn = 0

    async def poll(self) -> Fire | Any:
        self.turn += 1
        return Fire({"filename": self.files[self.turn % 2]})


async def test_allow_concurrent_false_fires_once_per_distinct_context_while_it_runs() -> None:
    watcher = FileWatcher()
    gate = asyncio.Event()
    started: list[str] = []

    class Files(Saga):
        @trigger(source="custom", trigger=watcher)
        def on_file(self, ctx: dict[str, Any]) -> dict[str, Any]:
            return dict(ctx)

        @action("process")
        async def process(self, ctx: Any) -> None:
            started.append(ctx["filename"])
            await gate.wait()

    listener = RecordingListener()
    store = MemorySagaStore()
    async with TriggerEngine(FAST, store, listeners=[listener]):
        await eventually(lambda: watcher.turn >= 20, within=5)
        assert sorted(started) == ["a.csv", "b.csv"]  # 20 polls, one run per file
        assert listener.reasons.count("overlap_skipped") >= 15
        gate.set()
        # once a run completed, its dedup row is closed and the file may fire again
        await eventually(lambda: len(started) >= 4, within=5)
    executions = await store.list_trigger_executions("file_watcher")
    hashes = {e.context_hash for e in executions}
    assert hashes == {canonical_hash({"filename": "a.csv"}), canonical_hash({"filename": "b.csv"})}
    finished = [e for e in executions if e.completed_at is not None]
    assert len(finished) >= 2


async def test_allow_concurrent_true_runs_overlapping_executions() -> None:
    class Depth(Trigger):
        name = "queue_monitor"
        poll_interval = 0.01
        allow_concurrent = True

        async def poll(self) -> Fire:
            return Fire({"depth": 11})

    gate = asyncio.Event()
    running = 0
    high = 0

    class Drain(Saga):
        @trigger(source="custom", trigger=Depth())
        def on_depth(self, ctx: dict[str, Any]) -> dict[str, Any]:
            return dict(ctx)

        @action("drain")
        async def drain(self, ctx: Any) -> None:
            nonlocal running, high
            running += 1
            high = max(high, running)
            await gate.wait()
            running -= 1

    async with TriggerEngine(FAST, MemorySagaStore()):
        await eventually(lambda: high >= 3, within=5)
        gate.set()
