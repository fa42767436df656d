"""Custom poll triggers with Cloacina semantics: errors, timeouts, overlap dedup, audit rows."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from sagaz import Fire, Saga, Skip, Trigger, TriggerConfig, action, trigger
from sagaz.engine.engine import TriggerEngine
from sagaz.engine.identity import canonical_hash
from sagaz.exceptions import TriggerDefinitionError
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
    # the row is the trigger's (by trigger id, as every trigger's row: its paused state)
    schedule = await store.get_trigger_schedule("health.on_fire")
    assert schedule is not None
    assert schedule.poll_interval_ms == 10
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
    # named by the trigger id (as its trigger_schedules row), not by the Trigger's name
    assert await store.list_trigger_executions("file_watcher") == []
    executions = await store.list_trigger_executions("files.on_file")
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


# -- mistakes fail at class definition, not at every poll ----------------------------------
def test_a_sync_poll_fails_when_the_class_is_defined_with_the_fix() -> None:
    with pytest.raises(TriggerDefinitionError) as caught:

        class Blocking(Trigger):
            def poll(self) -> Any:  # type: ignore[override]
                return Skip

    message = str(caught.value)
    assert "Blocking" in message
    assert "async def poll(self)" in message
    assert "asyncio.to_thread" in message


def test_the_cloacina_trait_style_is_rejected_with_the_attribute_to_write() -> None:
    with pytest.raises(TriggerDefinitionError) as caught:

        class Trait(Trigger):
            def name(self) -> str:  # type: ignore[override]
                return "file_watcher"

            def poll_interval(self) -> timedelta:  # type: ignore[override]
                return timedelta(seconds=2)

            def allow_concurrent(self) -> bool:  # type: ignore[override]
                return False

            async def poll(self) -> Any:
                return Skip

    message = str(caught.value)
    assert "Trait" in message
    assert "poll_interval is a method" in message
    assert "`poll_interval = 3.0` (seconds) or `poll_interval = timedelta(seconds=3)`" in message
    assert "`allow_concurrent = False`" in message
    assert '`name = "queue_monitor"`' in message


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("3s", "must be a number of seconds or a timedelta, not str"),
        (0, "must be more than 0 seconds"),
        (-1.5, "must be more than 0 seconds"),
        (timedelta(0), "must be more than 0 seconds"),
        (True, "not bool"),
    ],
)
def test_a_bad_poll_interval_fails_when_the_class_is_defined(value: Any, expected: str) -> None:
    with pytest.raises(TriggerDefinitionError, match="Interval") as caught:
        type("Interval", (Trigger,), {"poll_interval": value, "poll": Depth.poll})
    assert expected in str(caught.value)


def test_a_value_set_on_the_instance_is_checked_where_the_saga_is_defined() -> None:
    class Configured(Trigger):
        def __init__(self, every: Any) -> None:
            self.poll_interval = every

        async def poll(self) -> Any:
            return Skip

    with pytest.raises(TriggerDefinitionError) as caught:

        class Late(Saga):
            @trigger(source="custom", trigger=Configured("2 seconds"))
            def on_fire(self, ctx: dict[str, Any]) -> dict[str, Any]:
                return ctx

    message = str(caught.value)
    assert "Late.on_fire" in message
    assert "poll_interval='2 seconds' must be a number of seconds or a timedelta" in message


def test_a_property_is_an_attribute_and_is_checked_on_the_instance() -> None:
    class Tunable(Trigger):
        def __init__(self, every: Any) -> None:
            self._every = every

        @property
        def poll_interval(self) -> Any:  # type: ignore[override]
            return self._every

        async def poll(self) -> Any:
            return Skip

    class Tuned(Saga):
        @trigger(source="custom", trigger=Tunable(timedelta(seconds=2)))
        def on_fire(self, ctx: dict[str, Any]) -> dict[str, Any]:
            return ctx

    with pytest.raises(TriggerDefinitionError, match="poll_interval=-1 must be more than 0"):

        class Mistuned(Saga):
            @trigger(source="custom", trigger=Tunable(-1))
            def on_fire(self, ctx: dict[str, Any]) -> dict[str, Any]:
                return ctx


def test_fire_takes_a_dict_or_nothing() -> None:
    assert Fire().context == {} and Fire(None).context == {}
    with pytest.raises(TypeError, match=r"Fire\(context\) takes a dict"):
        Fire("file.csv")  # type: ignore[arg-type]


class Depth(Trigger):
    """Polled every ``timedelta`` (either a number of seconds or a timedelta is accepted)."""

    poll_interval = timedelta(milliseconds=10)

    async def poll(self) -> Any:
        return Fire({"depth": 11})


async def test_poll_interval_may_be_a_timedelta() -> None:
    fired: list[int] = []

    class Monitor(Saga):
        @trigger(source="custom", trigger=Depth())
        def on_depth(self, ctx: dict[str, Any]) -> dict[str, Any]:
            return dict(ctx)

        @action("drain")
        async def drain(self, ctx: Any) -> None:
            fired.append(ctx["depth"])

    store = MemorySagaStore()
    async with TriggerEngine(FAST, store) as engine:
        await eventually(lambda: len(fired) >= 2, within=5)
        source = engine.sources["monitor.on_depth"]
        assert source.describe()["poll_interval"] == 0.01


async def test_a_poll_returning_neither_fire_nor_skip_is_reported_and_polling_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Forgetful(Trigger):
        """Forgets to return (None), then returns a bool, then fires."""

        name = "forgetful"
        poll_interval = 0.01

        def __init__(self) -> None:
            self.polls = 0

        async def poll(self) -> Any:
            self.polls += 1
            return {1: None, 2: True}.get(self.polls, Fire({"poll": self.polls}))

    fired: list[int] = []

    class Report(Saga):
        @trigger(source="custom", trigger=Forgetful())
        def on_fire(self, ctx: dict[str, Any]) -> dict[str, Any]:
            return dict(ctx)

        @action("run")
        async def run(self, ctx: Any) -> None:
            fired.append(ctx["poll"])

    listener = RecordingListener()
    async with TriggerEngine(FAST, MemorySagaStore(), listeners=[listener]) as engine:
        await eventually(lambda: len(fired) >= 1, within=5)
        assert engine.metrics.source_errors["report.on_fire"] == 2
    assert [type(e) for e in listener.errors[:2]] == [TypeError, TypeError]
    assert "returned None; it must return Fire(context) or Skip" in str(listener.errors[0])
    assert "returned True" in str(listener.errors[1])
    assert min(fired) == 3
    assert any("returned None" in r.getMessage() for r in caplog.records)
