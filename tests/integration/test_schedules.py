"""Schedules at run time on real stores: ``sagaz.backfill_trigger`` and ``sagaz.run_trigger``
(what ``sagaz triggers backfill|run`` call).

A backfill fires each tick of the window as the cron source would have (same identity, same
saga id), so it and the cron source never run a tick twice, whichever comes first; a run now
is an event of its own and starts one saga per call.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import textwrap
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import sagaz
from sagaz import (
    CronTick,
    EventMeta,
    Fire,
    Saga,
    SagaContext,
    SagaStatus,
    Skip,
    Trigger,
    TriggerConfig,
    action,
    trigger,
)
from sagaz.abc import SagaStore
from sagaz.engine.engine import TriggerEngine
from sagaz.engine.pausing import set_trigger_enabled
from sagaz.storage.postgres import PostgresSagaStore
from sagaz.storage.redis import RedisSagaStore
from sagaz.storage.sqlite import SQLiteSagaStore
from sagaz.storage.url import store_from_url
from sagaz.testing import FakeClock, eventually
from tests.engine_support import RecordingListener
from tests.integration.test_cron_engine import completed_per_tick, settled
from tests.services import backend_params, delete_redis_keys, drop_postgres_schema, unique_name

#: in the past of the real clock: a backfill may not reach into the future
START = datetime(2026, 1, 1, tzinfo=UTC)
HOUR = 3600


@pytest.fixture(params=backend_params("sqlite", "postgres", "redis"))
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SagaStore]:
    """A started durable store on a fresh location."""
    kind: str = request.param
    made: SagaStore
    if kind == "sqlite":
        made = SQLiteSagaStore(tmp_path / "sagaz.db")
    elif kind == "postgres":
        dsn: str = request.getfixturevalue("postgres_dsn")
        schema = unique_name("sagaz_schedules").replace("-", "_")
        made = PostgresSagaStore(dsn, schema=schema, max_size=4)
    else:
        url: str = request.getfixturevalue("redis_url")
        prefix = unique_name("sagaz-schedules")
        made = RedisSagaStore(url, prefix=prefix)
    await made.start()
    try:
        yield made
    finally:
        await made.stop()
        if kind == "postgres":
            await drop_postgres_schema(dsn, schema)
        elif kind == "redis":
            await delete_redis_keys(url, prefix)


def define_hourly(name: str, runs: list[tuple[str, str]]) -> str:
    """An hourly cron saga; ``runs`` records (tick, how it was fired) of every run of its
    step. Returns the trigger id."""

    class Hourly(Saga):
        saga_name = name

        @trigger(source="cron", schedule="0 * * * *")
        def on_tick(self, tick: CronTick, meta: EventMeta) -> dict[str, Any]:
            return {
                "tick": tick.scheduled_at.astimezone(UTC).isoformat(),
                "fired_by": meta.headers.get("sagaz-schedule", "cron"),
            }

        @action("build")
        async def build(self, ctx: SagaContext) -> dict[str, Any]:
            runs.append((ctx["tick"], ctx["fired_by"]))
            return {"built": True}

    return f"{name}.on_tick"


def hours(*offsets: int) -> list[str]:
    return [(START + timedelta(hours=h)).isoformat() for h in offsets]


async def test_a_backfill_of_36_hourly_ticks_starts_36_sagas_and_repeating_it_none(
    store: SagaStore,
) -> None:
    runs: list[tuple[str, str]] = []
    name = unique_name("hourly")
    trigger_id = define_hourly(name, runs)

    first = await sagaz.backfill_trigger(
        trigger_id, START + timedelta(hours=1), START + timedelta(hours=36), store=store
    )
    assert len(first.started) == 36 and not first.skipped
    assert [run.tick for run in first.runs] == [
        START + timedelta(hours=h) for h in range(1, 37)
    ]  # oldest first
    assert {run.status for run in first.runs} == {"completed"} and first.ok
    assert sorted(runs) == [(tick, "backfill") for tick in hours(*range(1, 37))]

    again = await sagaz.backfill_trigger(
        trigger_id, START + timedelta(hours=1), START + timedelta(hours=36), store=store
    )
    assert not again.started
    assert [run.outcome for run in again.runs] == ["duplicate"] * 36
    assert [run.saga_id for run in again.runs] == [run.saga_id for run in first.runs]
    assert len(runs) == 36  # nothing ran again
    per_tick = await completed_per_tick(store, name)
    assert sorted(per_tick) == hours(*range(1, 37)) and set(per_tick.values()) == {1}


@pytest.fixture(params=backend_params("sqlite", "postgres"))
async def sql_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SagaStore]:
    """A started SQLite or PostgreSQL store on a fresh location."""
    if request.param == "sqlite":
        made: SagaStore = SQLiteSagaStore(tmp_path / "sagaz.db")
        await made.start()
        yield made
        await made.stop()
        return
    dsn: str = request.getfixturevalue("postgres_dsn")
    schema = unique_name("sagaz_schedules").replace("-", "_")
    made = PostgresSagaStore(dsn, schema=schema, max_size=4)
    await made.start()
    try:
        yield made
    finally:
        await made.stop()
        await drop_postgres_schema(dsn, schema)


async def test_the_cron_source_and_a_backfill_run_each_tick_once_whichever_comes_first(
    sql_store: SagaStore,
) -> None:
    store = sql_store
    runs: list[tuple[str, str]] = []
    name = unique_name("hourly")
    trigger_id = define_hourly(name, runs)
    clock = FakeClock(START)
    listener = RecordingListener()
    engine = TriggerEngine(
        TriggerConfig(worker_id="cron-engine"), store, clock=clock, listeners=[listener]
    )
    async with engine:
        await settled(clock, [engine], store, name, 0)  # the cron source sleeps until 01:00
        for count in (1, 2):  # the cron source fires 01:00 and 02:00
            await clock.advance(HOUR)
            await settled(clock, [engine], store, name, count)

        # another process backfills 00:00 .. 04:00: 01:00 and 02:00 ran already
        report = await sagaz.backfill_trigger(
            trigger_id, START, START + timedelta(hours=4), store=store
        )
        assert [(run.tick, run.outcome) for run in report.runs] == [
            (START + timedelta(hours=h), outcome)
            for h, outcome in enumerate(["started", "duplicate", "duplicate", "started", "started"])
        ]
        assert [run.status for run in report.started] == ["completed"] * 3

        # the cron source reaches 03:00 and 04:00, which the backfill ran: it starts nothing
        for count in (1, 2):
            await clock.advance(HOUR)
            await eventually(lambda n=count: listener.reasons.count("duplicate") == n)
        await clock.advance(HOUR)  # 05:00 is the cron source's
        await settled(clock, [engine], store, name, 6)

    assert sorted(runs) == sorted(
        [(tick, "cron") for tick in hours(1, 2, 5)]
        + [(tick, "backfill") for tick in hours(0, 3, 4)]
    )
    assert set((await completed_per_tick(store, name)).values()) == {1}
    assert len(await store.list_sagas(saga_name=name, limit=100)) == 6
    assert listener.reasons == ["duplicate", "duplicate"]


class Depth(Trigger):
    """Fires every poll with the number of that poll."""

    poll_interval = 3600.0  # the source never polls during a test: only run_trigger does

    def __init__(self) -> None:
        self.polls = 0
        self.skip = False

    async def poll(self) -> Fire | type[Skip]:  # type: ignore[override]
        self.polls += 1
        return Skip if self.skip else Fire({"poll": self.polls})


async def test_run_now_starts_one_saga_per_call_for_a_cron_and_a_poll_trigger(
    sql_store: SagaStore,
) -> None:
    store = sql_store
    depth = Depth()
    seen: list[dict[str, Any]] = []
    name = unique_name("now")

    class Now(Saga):
        saga_name = name

        @trigger(source="cron", schedule="0 3 * * *")
        def on_tick(self, tick: CronTick, meta: EventMeta) -> dict[str, Any]:
            return {"tick": tick.scheduled_at.isoformat(), "how": meta.headers["sagaz-schedule"]}

        @trigger(source="custom", trigger=depth)
        def on_depth(self, ctx: dict[str, Any]) -> dict[str, Any]:
            return dict(ctx)

        @action("record")
        async def record(self, ctx: SagaContext) -> dict[str, Any]:
            seen.append(dict(ctx))
            return {}

    saga_ids = []
    for _ in range(2):
        for method in ("on_tick", "on_depth"):
            report = await sagaz.run_trigger(f"{name}.{method}", store=store)
            [run] = report.runs
            assert (run.outcome, run.status) == ("started", "completed"), run
            saga_ids.append(run.saga_id)
    assert len(set(saga_ids)) == 4  # each call its own event, its own saga
    assert sorted(c["poll"] for c in seen if "poll" in c) == [1, 2]
    assert [c["how"] for c in seen if "how" in c] == ["run", "run"]
    assert await store.last_cron_tick(f"{name}.on_tick") is None  # a run now is not a tick

    depth.skip = True  # a poll that says Skip starts nothing, and says so
    [skipped] = (await sagaz.run_trigger(f"{name}.on_depth", store=store)).runs
    assert (skipped.outcome, skipped.saga_id) == ("skipped", None)
    # a context given fires without a poll
    [given] = (await sagaz.run_trigger(f"{name}.on_depth", store=store, context={"x": 1})).runs
    assert given.status == "completed" and depth.polls == 3
    sagas = await store.list_sagas(saga_name=name, limit=100)
    assert len(sagas) == 5 and {s.status for s in sagas} == {SagaStatus.COMPLETED}


CLI_APP = textwrap.dedent(
    """
    from sagaz import Fire, Saga, Trigger, action, trigger

    class Depth(Trigger):
        poll_interval = 60.0

        async def poll(self):
            return Fire({"depth": 12})

    class Reports(Saga):
        saga_name = "cli-e2e-reports"

        @trigger(source="cron", schedule="0 * * * *")
        def on_tick(self, tick) -> dict:
            return {"tick": tick.scheduled_at.isoformat()}

        @trigger(source="custom", trigger=Depth())
        def on_depth(self, ctx: dict) -> dict:
            return dict(ctx)

        @action("build")
        async def build(self, ctx) -> dict:
            return {"built": True}
    """
)


@pytest.fixture(params=backend_params("sqlite", "postgres"))
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """The URL of a SQLite or PostgreSQL store that has its schema (an engine ran on it)."""
    if request.param == "sqlite":
        path = tmp_path / "cli.db"
        async with SQLiteSagaStore(path):
            pass
        yield f"sqlite:///{path}"
        return
    dsn: str = request.getfixturevalue("postgres_dsn")
    schema = unique_name("sagaz_cli_schedules").replace("-", "_")
    async with PostgresSagaStore(dsn, schema=schema):
        pass
    try:
        yield f"{dsn}{'&' if '?' in dsn else '?'}schema={schema}"
    finally:
        await drop_postgres_schema(dsn, schema)


async def test_the_sagaz_command_backfills_once_and_runs_now_once_per_call(
    store_url: str, tmp_path: Path
) -> None:
    (tmp_path / "cli_e2e_reports.py").write_text(CLI_APP)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAGAZ_")}
    src = str(Path(sagaz.__file__).parents[1])  # the sagaz under test, in the subprocess too
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))

    async def sagaz_command(*argv: str) -> dict[str, Any]:
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "sagaz.cli.main", *argv),
            *("--modules", "cli_e2e_reports", "--store", store_url, "--json"),
            cwd=tmp_path,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(120):
            out, err = await process.communicate()
        assert process.returncode == 0, err.decode()
        report: dict[str, Any] = json.loads(out)
        return report

    window = ("--from", "2026-03-01T00:00Z", "--to", "2026-03-02T11:00Z")
    first = await sagaz_command("triggers", "backfill", "cli-e2e-reports.on_tick", *window)
    assert (first["started"], first["skipped"]) == (36, 0)
    assert {run["status"] for run in first["runs"]} == {"completed"}
    again = await sagaz_command("triggers", "backfill", "cli-e2e-reports.on_tick", *window)
    assert (again["started"], again["skipped"]) == (0, 36)
    for trigger_id in ("cli-e2e-reports.on_tick", "cli-e2e-reports.on_depth"):
        for _ in range(2):
            report = await sagaz_command("triggers", "run", trigger_id)
            assert [(r["outcome"], r["status"]) for r in report["runs"]] == [
                ("started", "completed")
            ]

    reader = store_from_url(store_url)
    async with reader:
        sagas = await reader.list_sagas(saga_name="cli-e2e-reports", limit=1000)
    per_trigger = Counter(s.trigger_id for s in sagas)
    assert per_trigger == {"cli-e2e-reports.on_tick": 38, "cli-e2e-reports.on_depth": 2}
    assert {s.status for s in sagas} == {SagaStatus.COMPLETED}


async def test_the_process_wide_engine_runs_them_when_it_runs_the_trigger(
    sql_store: SagaStore,
) -> None:
    runs: list[tuple[str, str]] = []
    name = unique_name("hourly")
    trigger_id = define_hourly(name, runs)
    engine = await sagaz.start_triggers(store=sql_store)
    try:
        [now] = (await sagaz.run_trigger(trigger_id)).runs
        backfill = await sagaz.backfill_trigger(
            trigger_id, START, START + timedelta(hours=2), store=sql_store
        )
        # accepted by the running engine itself (its limits, listeners and metrics)
        assert engine.metrics.accepted[trigger_id] == 4
    finally:
        await sagaz.stop_triggers()
    assert now.status == "completed"
    assert [run.status for run in backfill.runs] == ["completed"] * 3
    assert sorted(how for _, how in runs) == ["backfill"] * 3 + ["run"]


async def test_a_backfill_runs_the_ticks_skipped_while_the_trigger_was_paused(
    sql_store: SagaStore,
) -> None:
    store = sql_store
    runs: list[tuple[str, str]] = []
    name = unique_name("hourly")
    trigger_id = define_hourly(name, runs)
    clock = FakeClock(START)
    listener = RecordingListener()
    config = TriggerConfig(worker_id="cron-engine", trigger_state_interval_seconds=60)
    async with TriggerEngine(config, store, clock=clock, listeners=[listener]) as engine:
        await settled(clock, [engine], store, name, 0)
        await set_trigger_enabled(store, trigger_id, False)  # as `sagaz triggers pause`
        await clock.advance(60)
        await eventually(engine.paused_triggers)
        await clock.advance(HOUR - 60)  # 01:00 and 02:00 are claimed and skipped as paused
        await eventually(lambda: listener.reasons == ["paused"])
        await clock.advance(HOUR)
        await eventually(lambda: listener.reasons == ["paused", "paused"])

        report = await sagaz.backfill_trigger(
            trigger_id, START + timedelta(hours=1), START + timedelta(hours=2), store=store
        )
    assert report.paused  # it ran as asked, and says the trigger is paused
    assert [(run.outcome, run.status) for run in report.runs] == [("started", "completed")] * 2
    assert sorted(runs) == [(tick, "backfill") for tick in hours(1, 2)]
    assert await store.last_cron_tick(trigger_id) == START + timedelta(hours=2)


async def test_sagas_unfinished_at_the_timeout_stay_in_the_store_and_an_engine_resumes_them(
    sql_store: SagaStore,
) -> None:
    store = sql_store
    name = unique_name("slow")
    release = asyncio.Event()  # the step waits for it: the backfill gives up first

    class Slow(Saga):
        saga_name = name

        @trigger(source="cron", schedule="0 * * * *")
        def on_tick(self, tick: CronTick) -> dict[str, Any]:
            return {"tick": tick.scheduled_at.astimezone(UTC).isoformat()}

        @action("build")
        async def build(self, ctx: SagaContext) -> dict[str, Any]:
            await release.wait()
            return {"built": True}

    trigger_id = f"{name}.on_tick"
    report = await sagaz.backfill_trigger(
        trigger_id,
        START,
        START + timedelta(hours=2),
        store=store,
        timeout=0.2,
        config=TriggerConfig(shutdown_timeout=0),
    )
    assert [(run.outcome, run.status) for run in report.runs] == [("started", "running")] * 3
    assert not report.ok
    unfinished = await store.list_sagas(saga_name=name, limit=10)
    assert len(unfinished) == 3 and SagaStatus.COMPLETED not in {s.status for s in unfinished}

    release.set()
    async with TriggerEngine(TriggerConfig(recovery_interval_seconds=0.05), store):
        await eventually(lambda: _count_completed(store, name, 3), what="all three recovered sagas")
    per_tick = await completed_per_tick(store, name)
    assert sorted(per_tick) == hours(0, 1, 2) and set(per_tick.values()) == {1}


async def _count_completed(store: SagaStore, name: str, count: int) -> bool:
    return sum((await completed_per_tick(store, name)).values()) == count
