"""Cloacina's event-trigger example, in Python: three poll triggers with ``sagaz.Trigger``,
``Fire`` and ``Skip``, on a durable store (SQLite).

As the example describes them:

========================  =============  ==========  ======================================
trigger                   poll interval  concurrent  fires
========================  =============  ==========  ======================================
``file_watcher``          2 s            no          a file in the (simulated) inbox
``queue_monitor``         3 s            yes         when the queue depth exceeds 10
``service_health``        2 s            no          after 3 consecutive failed checks
========================  =============  ==========  ======================================

each starting its workflow (a saga): ``file_processing_workflow``,
``queue_processing_workflow``, ``service_recovery_workflow``. With ``allow_concurrent = False``
a ``Fire`` whose context hash matches a running execution is skipped until that one
completes. The store keeps ``trigger_schedules`` (trigger_name, workflow, poll_interval_ms,
allow_concurrent, enabled, last_poll_at) and ``trigger_executions`` (trigger_name,
context_hash, the saga id as pipeline_execution_id, started_at / completed_at). The runner's
configuration: ``enable_trigger_scheduling = true``, ``trigger_base_poll_interval = 1 s``,
``trigger_poll_timeout = 10 s``.

The engine runs on a ``FakeClock``: the poll intervals are fake seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from sagaz import Fire, Saga, SagaStatus, Skip, Trigger, TriggerConfig, action, trigger
from sagaz.engine.engine import TriggerEngine
from sagaz.storage.codec import to_text
from sagaz.storage.sqlite import SQLiteSagaStore
from sagaz.testing import FakeClock, continually, eventually
from tests.adr.support import Recorder, parked, sagas_named

START = datetime(2026, 1, 1, tzinfo=UTC)
WORKFLOWS = ("file_processing_workflow", "queue_processing_workflow", "service_recovery_workflow")
#: the trigger id of the file watcher's trigger method: its name in both tables
FILE_WATCHER = "file_processing_workflow.on_new_file"


def runner_config(**overrides: Any) -> TriggerConfig:
    """Cloacina's ``DefaultRunnerConfig`` of the example."""
    settings: dict[str, Any] = {
        "enable_trigger_scheduling": True,  # Enable trigger scheduler
        "trigger_base_poll_interval": 1.0,  # Base poll interval
        "trigger_poll_timeout": 10.0,  # Timeout per trigger poll
        **overrides,
    }
    return TriggerConfig(**settings)


def context_hash(context: dict[str, Any]) -> str:
    """The canonical hash DESIGN §2 names: SHA-256 of the JSON with sorted keys."""
    text = json.dumps(context, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


# -- the simulated world ---------------------------------------------------------------------
@dataclass
class World:
    """What the three triggers watch, and the gates that hold their workflows."""

    inbox: Path
    done: Path
    queue: list[str] = field(default_factory=list)
    health: list[bool] = field(default_factory=list)  # the next checks' answers (then healthy)
    polls: dict[str, list[float]] = field(default_factory=dict)  # fake times of each poll
    gates: dict[str, asyncio.Event] = field(default_factory=dict)
    runs: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def gate(self, workflow: str) -> asyncio.Event:
        return self.gates.setdefault(workflow, asyncio.Event())

    def runs_of(self, workflow: str) -> list[dict[str, Any]]:
        return [ctx for name, ctx in self.runs if name == workflow]


class FileWatcherTrigger(Trigger):
    """Fires for the oldest file waiting in the inbox (it stays there until processed)."""

    name = "file_watcher"
    poll_interval = 2.0
    allow_concurrent = False  # prevents duplicate processing of the same file

    def __init__(self, world: World, clock: FakeClock) -> None:
        self.world, self.clock = world, clock

    async def poll(self) -> Any:
        self.world.polls.setdefault(self.name, []).append(self.clock.monotonic())
        waiting = sorted(p.name for p in self.world.inbox.glob("*.csv"))
        if waiting:
            return Fire({"filename": waiting[0]})
        return Skip


class QueueDepthTrigger(Trigger):
    """Fires when the queue holds more than ``threshold`` messages."""

    name = "queue_monitor"
    poll_interval = 3.0
    allow_concurrent = True  # allows parallel queue draining
    threshold = 10

    def __init__(self, world: World, clock: FakeClock) -> None:
        self.world, self.clock = world, clock

    async def poll(self) -> Any:
        self.world.polls.setdefault(self.name, []).append(self.clock.monotonic())
        depth = len(self.world.queue)
        if depth > self.threshold:
            return Fire({"queue_depth": depth})
        return Skip


class HealthCheckTrigger(Trigger):
    """Fires a recovery after ``failure_threshold`` consecutive failed checks."""

    name = "service_health"
    poll_interval = 2.0
    allow_concurrent = False  # prevents concurrent recovery attempts
    failure_threshold = 3

    def __init__(self, world: World, clock: FakeClock) -> None:
        self.world, self.clock = world, clock
        self.failures = 0

    async def poll(self) -> Any:
        self.world.polls.setdefault(self.name, []).append(self.clock.monotonic())
        healthy = self.world.health.pop(0) if self.world.health else True
        if healthy:
            self.failures = 0
            return Skip
        self.failures += 1
        if self.failures >= self.failure_threshold:
            return Fire({"service": "payments-api"})
        return Skip


def define_workflows(world: World, clock: FakeClock) -> None:
    """The three workflows (sagas), each started by its poll trigger."""

    class FileProcessingWorkflow(Saga):
        saga_name = "file_processing_workflow"

        @trigger(source="custom", trigger=FileWatcherTrigger(world, clock))
        def on_new_file(self, context: dict[str, Any]) -> dict[str, Any]:
            return dict(context)

        @action("validate")
        async def validate(self, ctx: Any) -> dict[str, Any]:
            world.runs.append((self.saga_name, dict(ctx)))
            await world.gate(self.saga_name).wait()
            lines = (world.inbox / ctx["filename"]).read_text().splitlines()
            return {"records": len(lines) - 1}

        @action("archive")
        async def archive(self, ctx: Any) -> None:
            (world.inbox / ctx["filename"]).rename(world.done / ctx["filename"])

    class QueueProcessingWorkflow(Saga):
        saga_name = "queue_processing_workflow"

        @trigger(source="custom", trigger=QueueDepthTrigger(world, clock))
        def on_depth(self, context: dict[str, Any]) -> dict[str, Any]:
            return dict(context)

        @action("drain")
        async def drain(self, ctx: Any) -> None:
            world.runs.append((self.saga_name, dict(ctx)))
            await world.gate(self.saga_name).wait()

    class ServiceRecoveryWorkflow(Saga):
        saga_name = "service_recovery_workflow"

        @trigger(source="custom", trigger=HealthCheckTrigger(world, clock))
        def on_unhealthy(self, context: dict[str, Any]) -> dict[str, Any]:
            return dict(context)

        @action("restart")
        async def restart(self, ctx: Any) -> None:
            world.runs.append((self.saga_name, dict(ctx)))
            await world.gate(self.saga_name).wait()


@dataclass
class Runner:
    world: World
    clock: FakeClock
    store: SQLiteSagaStore
    engine: TriggerEngine
    recorder: Recorder
    path: Path
    idle: int = 0  # tasks sleeping on the clock between two polls (the sources and more)

    async def tick(self, seconds: float = 1.0) -> None:
        """Move fake time on, one second at a time, letting each second's polls finish."""
        for _ in range(round(seconds)):
            await self.clock.advance(1.0)
            await eventually(self._quiet, what="the polls of this second")

    def _quiet(self) -> bool:
        # every poll source sleeps again: each poll of this second is done, and what it
        # fired admitted (queued, or skipped and reported)
        return self.clock.sleepers >= self.idle

    async def runs(self, workflow: str, expected: list[dict[str, Any]]) -> None:
        """Wait until ``workflow`` ran exactly with ``expected`` (a started saga reaches its
        first step a moment after the poll that fired it)."""
        await eventually(
            lambda: self.world.runs_of(workflow) == expected, what=f"{workflow} runs {expected}"
        )

    def table(self, sql: str) -> list[tuple[Any, ...]]:
        """Rows of the SQLite file, read like an operator would."""
        return read(self.path, sql)


def read(path: Path, sql: str) -> list[tuple[Any, ...]]:
    """Rows of the SQLite file ``path``, read like an operator would."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute(sql).fetchall()


@pytest.fixture
async def runner(tmp_path: Path) -> AsyncIterator[Runner]:
    (tmp_path / "inbox").mkdir()
    (tmp_path / "done").mkdir()
    world = World(tmp_path / "inbox", tmp_path / "done")
    clock = FakeClock(START)
    define_workflows(world, clock)
    path = tmp_path / "sagaz.db"
    recorder = Recorder()
    async with SQLiteSagaStore(path) as store:
        engine = TriggerEngine(runner_config(), store, clock=clock, listeners=[recorder])
        async with engine:
            running = Runner(world, clock, store, engine, recorder, path)
            running.idle = await parked(clock, len(engine.sources))
            yield running
            for gate in world.gates.values():
                gate.set()
            await engine.dispatcher.wait_idle()


# -- the tests -------------------------------------------------------------------------------
async def test_the_three_triggers_are_in_trigger_schedules(runner: Runner) -> None:
    """The row of each trigger, found by its workflow (``saga_name``): its interval in
    milliseconds, whether it runs concurrently, enabled, not polled yet."""
    rows = runner.table(
        "SELECT saga_name, poll_interval_ms, allow_concurrent, enabled, last_poll_at "
        "FROM trigger_schedules"
    )
    assert sorted(rows) == [
        ("file_processing_workflow", 2000, 0, 1, None),
        ("queue_processing_workflow", 3000, 1, 1, None),
        ("service_recovery_workflow", 2000, 0, 1, None),
    ]


async def test_both_tables_name_each_trigger_by_one_identifier(runner: Runner) -> None:
    """Cloacina: ``trigger_name`` is the trigger's unique identifier in ``trigger_schedules``
    and "which trigger fired" in ``trigger_executions``: one name, so the audit trail joins its
    schedule. In sagaz that identifier is the trigger id (``"{saga_name}.{method}"``, what
    ``sagaz triggers pause`` takes, in dead letters, metrics and the dashboard); the
    ``Trigger``'s ``name`` (``file_watcher``) names it in logs and ``EventMeta.topic``."""
    (runner.world.inbox / "data_file_1.csv").write_text("id\n1\n")
    runner.world.gate("file_processing_workflow").set()
    await runner.tick(2)
    await runner.runs("file_processing_workflow", [{"filename": "data_file_1.csv"}])
    await runner.engine.dispatcher.wait_idle()
    assert sorted(runner.table("SELECT trigger_name FROM trigger_schedules")) == [
        (FILE_WATCHER,),
        ("queue_processing_workflow.on_depth",),
        ("service_recovery_workflow.on_unhealthy",),
    ]
    assert runner.table("SELECT trigger_name FROM trigger_executions") == [(FILE_WATCHER,)]
    joined = runner.table(
        "SELECT s.saga_name, e.saga_id FROM trigger_executions AS e "
        "JOIN trigger_schedules AS s ON s.trigger_name = e.trigger_name"
    )
    [saga] = await sagas_named(runner.store, "file_processing_workflow")
    assert joined == [("file_processing_workflow", saga.saga_id)]
    assert saga.trigger_id == FILE_WATCHER  # the saga names its trigger the same way


async def test_each_trigger_is_polled_at_its_interval(runner: Runner) -> None:
    await runner.tick(12)
    assert runner.world.polls == {
        "file_watcher": [2.0, 4.0, 6.0, 8.0, 10.0, 12.0],
        "queue_monitor": [3.0, 6.0, 9.0, 12.0],
        "service_health": [2.0, 4.0, 6.0, 8.0, 10.0, 12.0],
    }
    last_polls = dict(runner.table("SELECT saga_name, last_poll_at FROM trigger_schedules"))
    assert set(last_polls) == set(WORKFLOWS)
    for workflow in WORKFLOWS:  # each polled at 12 s, the fake clock's time
        assert last_polls[workflow] == to_text(runner.clock.now())
    assert runner.world.runs == []  # nothing to do: every poll skipped


async def test_the_file_watcher_processes_each_file_once_even_while_it_is_still_there(
    runner: Runner,
) -> None:
    world = runner.world
    (world.inbox / "data_file_1.csv").write_text("id\n" + "\n".join(map(str, range(100))))
    (world.inbox / "data_file_2.csv").write_text("id\n1\n2\n")
    await runner.tick(2)
    await runner.runs("file_processing_workflow", [{"filename": "data_file_1.csv"}])
    await runner.tick(6)  # three more polls find the same file, its run still going
    assert runner.recorder.reasons == ["overlap_skipped"] * 3
    assert world.runs_of("file_processing_workflow") == [{"filename": "data_file_1.csv"}]

    world.gate("file_processing_workflow").set()
    await eventually(
        lambda: (world.done / "data_file_1.csv").exists(), what="data_file_1 processed"
    )
    await runner.tick(2)
    await eventually(lambda: (world.done / "data_file_2.csv").exists(), what="file 2 processed")
    await runner.tick(4)  # an empty inbox: nothing more
    assert world.runs_of("file_processing_workflow") == [
        {"filename": "data_file_1.csv"},
        {"filename": "data_file_2.csv"},
    ]
    await runner.engine.dispatcher.wait_idle()

    sagas = {
        s.context["filename"]: s
        for s in await sagas_named(runner.store, "file_processing_workflow")
    }
    assert sagas["data_file_1.csv"].context["records"] == 100
    assert {s.status for s in sagas.values()} == {SagaStatus.COMPLETED}
    executions = await runner.store.list_trigger_executions(FILE_WATCHER)
    assert [(e.context_hash, e.saga_id) for e in executions] == [
        (context_hash({"filename": name}), sagas[name].saga_id)
        for name in ("data_file_1.csv", "data_file_2.csv")
    ]
    for execution in executions:  # the audit trail: when each run started and completed
        assert execution.started_at is not None and execution.completed_at is not None
        assert execution.started_at <= execution.completed_at
    assert runner.table(
        "SELECT trigger_name, context_hash, saga_id, started_at IS NOT NULL, "
        "completed_at IS NOT NULL FROM trigger_executions ORDER BY id"
    ) == [(FILE_WATCHER, e.context_hash, e.saga_id, 1, 1) for e in executions]


async def test_the_queue_monitor_fires_above_ten_and_runs_drains_in_parallel(
    runner: Runner,
) -> None:
    world = runner.world
    world.queue[:] = [f"m{n}" for n in range(10)]
    await runner.tick(6)  # two polls at depth 10: not above the threshold
    assert world.runs_of("queue_processing_workflow") == []
    world.queue.append("m10")
    await runner.tick(3)
    await runner.runs("queue_processing_workflow", [{"queue_depth": 11}])
    await runner.tick(3)  # the first drain still runs: a second one starts beside it
    await runner.runs("queue_processing_workflow", [{"queue_depth": 11}] * 2)
    assert runner.engine.dispatcher.in_flight == 2
    assert "overlap_skipped" not in runner.recorder.reasons
    world.gate("queue_processing_workflow").set()
    await runner.engine.dispatcher.wait_idle()
    executions = await runner.store.list_trigger_executions("queue_processing_workflow.on_depth")
    assert [e.context_hash for e in executions] == [context_hash({"queue_depth": 11})] * 2
    assert all(e.completed_at is not None for e in executions)


async def test_the_health_check_recovers_after_three_consecutive_failures(
    runner: Runner,
) -> None:
    world = runner.world
    # fail, fail, ok (the count starts over), then fail, fail, fail: the third fires
    world.health[:] = [False, False, True, False, False, False, False, False]
    await runner.tick(10)  # polls 1-5
    assert world.runs_of("service_recovery_workflow") == []
    await runner.tick(2)  # poll 6: the third consecutive failure
    await runner.runs("service_recovery_workflow", [{"service": "payments-api"}])
    await runner.tick(4)  # polls 7-8 still fail: no concurrent recovery
    assert runner.recorder.reasons == ["overlap_skipped"] * 2
    assert world.runs_of("service_recovery_workflow") == [{"service": "payments-api"}]
    world.gate("service_recovery_workflow").set()
    await runner.engine.dispatcher.wait_idle()
    await runner.tick(4)  # healthy again: nothing fires
    await continually(lambda: len(world.runs) == 1, during=0.1, what="one recovery only")
    recovery = "service_recovery_workflow.on_unhealthy"
    [execution] = await runner.store.list_trigger_executions(recovery)
    assert execution.context_hash == context_hash({"service": "payments-api"})
    assert execution.completed_at is not None


async def test_two_runners_on_one_database_never_process_a_file_twice(tmp_path: Path) -> None:
    """The dedup row is in the database: a second runner (another process) on the same
    ``trigger_executions`` skips a file the first is processing."""
    (tmp_path / "inbox").mkdir()
    (tmp_path / "done").mkdir()
    world = World(tmp_path / "inbox", tmp_path / "done")
    (world.inbox / "shared.csv").write_text("id\n1\n")
    path = tmp_path / "sagaz.db"
    clocks = [FakeClock(START), FakeClock(START)]
    recorders = [Recorder(), Recorder()]
    engines = []
    for clock, recorder in zip(clocks, recorders, strict=True):
        define_workflows(world, clock)  # each process defines its classes
        from sagaz.triggers import registry

        watcher = [registry.get("file_processing_workflow.on_new_file")]
        engines.append(
            TriggerEngine(
                runner_config(),
                SQLiteSagaStore(path),
                clock=clock,
                listeners=[recorder],
                triggers=watcher,
            )
        )
    async with engines[0], engines[1]:
        for clock in clocks:
            await parked(clock)
        await clocks[0].advance(2)
        await eventually(lambda: len(world.runs) == 1, what="the first runner's run")
        await clocks[1].advance(2)
        await eventually(lambda: recorders[1].reasons == ["overlap_skipped"], what="a skip")
        assert world.runs == [("file_processing_workflow", {"filename": "shared.csv"})]
        world.gate("file_processing_workflow").set()
        await eventually(lambda: (world.done / "shared.csv").exists(), what="processed once")
        for engine in engines:
            await engine.dispatcher.wait_idle()


async def test_enable_trigger_scheduling_false_polls_no_trigger(tmp_path: Path) -> None:
    (tmp_path / "inbox").mkdir()
    (tmp_path / "done").mkdir()
    world = World(tmp_path / "inbox", tmp_path / "done")
    (world.inbox / "waiting.csv").write_text("id\n1\n")
    world.queue[:] = [f"m{n}" for n in range(20)]
    for workflow in WORKFLOWS:  # nothing holds a workflow that would run anyway
        world.gate(workflow).set()
    clock = FakeClock(START)
    define_workflows(world, clock)
    async with (
        SQLiteSagaStore(tmp_path / "sagaz.db") as store,
        TriggerEngine(runner_config(enable_trigger_scheduling=False), store, clock=clock),
        time_flies(clock),  # 50 fake seconds: 25 polls of an enabled file watcher
    ):
        await continually(lambda: world.polls == {}, during=0.5, what="no poll at all")
    assert world.runs == []


async def test_a_disabled_trigger_stays_disabled_across_a_restart(tmp_path: Path) -> None:
    """``trigger_schedules`` "persists trigger configuration for recovery across restarts",
    ``enabled`` included: a trigger an operator disabled in the table is not polled by the
    runner that starts next."""
    (tmp_path / "inbox").mkdir()
    (tmp_path / "done").mkdir()
    world = World(tmp_path / "inbox", tmp_path / "done")
    for workflow in WORKFLOWS:
        world.gate(workflow).set()
    path = tmp_path / "sagaz.db"
    clock = FakeClock(START)
    define_workflows(world, clock)
    async with SQLiteSagaStore(path) as store, TriggerEngine(runner_config(), store, clock=clock):
        await parked(clock, 3)  # the three schedules saved, the sources waiting
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:  # an operator disables it
        conn.execute(
            "UPDATE trigger_schedules SET enabled = 0 WHERE saga_name = 'file_processing_workflow'"
        )

    (world.inbox / "waiting.csv").write_text("id\n1\n")
    clock = FakeClock(START)
    define_workflows(world, clock)  # the next process
    async with (
        SQLiteSagaStore(path) as store,
        TriggerEngine(runner_config(), store, clock=clock),
        time_flies(clock),
    ):
        await eventually(lambda: len(world.polls.get("queue_monitor", [])) >= 5, what="polls")
    assert "file_watcher" not in world.polls
    assert world.runs == []
    enabled = dict(read(path, "SELECT saga_name, enabled FROM trigger_schedules"))
    assert enabled["file_processing_workflow"] == 0


@contextlib.asynccontextmanager
async def time_flies(clock: FakeClock) -> AsyncIterator[None]:
    """A fake second every 10 ms of real time, while the block runs."""

    async def fly() -> None:
        while True:
            await clock.advance(1)
            await asyncio.sleep(0.01)  # pacing, not waiting: the store answers meanwhile

    flying = asyncio.create_task(fly())
    try:
        yield
    finally:
        flying.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flying


async def test_a_poll_that_fails_is_logged_and_polling_continues(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Best practice 4: "Errors in ``poll()`` are logged and polling continues on the next
    interval". The first check fails with an error, the second fires ``Fire(None)`` (a
    workflow without context, as Cloacina's ``TriggerResult::Fire(None)``)."""
    recovered: list[dict[str, Any]] = []

    class FlakyCheck(Trigger):
        name = "flaky_check"
        poll_interval = 2.0
        allow_concurrent = False

        def __init__(self) -> None:
            self.polls = 0

        async def poll(self) -> Any:
            self.polls += 1
            if self.polls == 1:
                raise ConnectionError("health endpoint unreachable")
            return Fire(None) if self.polls == 2 else Skip

    check = FlakyCheck()

    class Recovery(Saga):
        saga_name = "service_recovery_workflow"

        @trigger(source="custom", trigger=check)
        def on_unhealthy(self, context: dict[str, Any]) -> dict[str, Any]:
            return dict(context)

        @action("restart")
        async def restart(self, ctx: Any) -> None:
            recovered.append(dict(ctx))

    clock = FakeClock(START)
    recorder = Recorder()
    async with (
        SQLiteSagaStore(tmp_path / "sagaz.db") as store,
        TriggerEngine(runner_config(), store, clock=clock, listeners=[recorder]) as engine,
    ):
        idle = await parked(clock)
        await clock.advance(2)
        await eventually(
            lambda: recorder.errors and clock.sleepers >= idle,
            what="the failed poll reported, the source waiting for the next one",
        )
        await clock.advance(2)
        await eventually(lambda: recovered == [{}], what="the next poll fired")
        await engine.dispatcher.wait_idle()
    [error] = recorder.errors
    assert isinstance(error, ConnectionError)
    assert any(
        r.levelno == logging.ERROR and "health endpoint unreachable" in r.getMessage()
        for r in caplog.records
    )
    assert check.polls == 2
