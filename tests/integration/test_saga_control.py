"""Steering sagas end to end, on SQLite, PostgreSQL and Redis: ``sagaz sagas cancel|resume|retry``
through the real CLI entry point (its own store object, as another process would have), and a
real engine running the saga, which acts on the request it finds in the store.

* cancel: arrives while a step runs; the engine starts no further step, compensates what
  completed, the saga ends ``cancelled`` and its event is settled (a redelivery is a
  duplicate); a queued (pending) saga starts cancelled;
* resume: a saga compensated because a step failed runs again once the cause is fixed;
* retry --from-step: exactly the named step and the steps after it run again.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import sagaz
from sagaz import Saga, SagaContext, SagaStatus, TriggerConfig, action, compensate, trigger
from sagaz.abc import SagaStore
from sagaz.cli.main import main
from sagaz.engine.engine import TriggerEngine
from sagaz.events import NotRun
from sagaz.storage import store_from_url
from sagaz.testing import continually, eventually
from tests.contract.source_backends import Backend, open_backend
from tests.services import backend_params, delete_redis_keys, drop_postgres_schema, unique_name

INTERVAL = 0.1  # saga_control_interval_seconds: the engines read requests this often


@dataclass
class Place:
    """A durable store location: its URL (for the CLI) and a way to open stores on it."""

    url: str

    def store(self) -> SagaStore:
        return store_from_url(self.url)


@pytest.fixture(params=backend_params("sqlite", "postgres", "redis"))
async def place(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Place]:
    if request.param == "sqlite":
        yield Place(f"sqlite:///{tmp_path / 'sagaz.db'}")
    elif request.param == "postgres":
        dsn = request.getfixturevalue("postgres_dsn")
        schema = unique_name("control").replace("-", "_")
        yield Place(f"{dsn}?schema={schema}")
        await drop_postgres_schema(dsn, schema)
    else:
        url = request.getfixturevalue("redis_url")
        prefix = unique_name("control")
        yield Place(f"{url}?prefix={prefix}")
        await delete_redis_keys(url, prefix)


async def cli(*argv: str) -> int:
    """``sagaz ARGV`` through its entry point (in a thread: it runs its own event loop)."""
    return await asyncio.to_thread(main, list(argv))


@dataclass
class Shop:
    """A saga class of the test's own and what its steps did."""

    saga: type[Saga]
    channel: str
    runs: dict[str, int] = field(default_factory=dict)
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    entered: asyncio.Event = field(default_factory=asyncio.Event)
    broken: set[str] = field(default_factory=set)  # steps that raise while named here


def make_shop(*, gated: bool = False) -> Shop:
    """``reserve`` → ``charge`` → ``ship``, each counted; ``reserve`` and ``charge`` are
    compensated (``release``, ``refund``); with ``gated``, ``charge`` waits for the gate."""
    channel = unique_name("orders")
    holder: dict[str, Shop] = {}

    def count(name: str) -> None:
        shop = holder["shop"]
        shop.runs[name] = shop.runs.get(name, 0) + 1
        if name in shop.broken:
            raise RuntimeError(f"{name} is broken")

    class Order(Saga):
        saga_name = unique_name("order")

        @trigger(source="memory", channel=channel, idempotency_key=lambda e: e["id"])
        def on_order(self, event: Any) -> dict[str, Any]:
            return {"id": event["id"]}

        @action("reserve")
        async def reserve(self, ctx: SagaContext) -> dict[str, Any]:
            count("reserve")
            return {"reservation": f"r-{ctx['id']}"}

        @compensate("reserve")
        async def release(self, ctx: SagaContext) -> None:
            count("release")

        @action("charge")
        async def charge(self, ctx: SagaContext) -> dict[str, Any]:
            count("charge")
            if gated:
                holder["shop"].entered.set()
                await holder["shop"].gate.wait()
            return {"charged": ctx["reservation"]}

        @compensate("charge")
        async def refund(self, ctx: SagaContext) -> None:
            count("refund")

        @action("ship")
        async def ship(self, ctx: SagaContext) -> dict[str, Any]:
            count("ship")
            return {"tracking": f"t-{ctx['charged']}"}

    holder["shop"] = Shop(Order, channel)
    return holder["shop"]


def engine_on(store: SagaStore, **options: Any) -> TriggerEngine:
    config = TriggerConfig(
        **{"saga_control_interval_seconds": INTERVAL, "max_retries": 0, **options}
    )
    return TriggerEngine(config, store)


async def history(store: SagaStore, saga_id: str) -> list[str]:
    return [entry.action for entry in await store.list_saga_history(saga_id)]


async def ended(store: SagaStore, saga_id: str, status: SagaStatus, attempt: int) -> bool:
    record = await store.get_saga(saga_id)
    return record is not None and record.status is status and record.attempt == attempt


async def settled(store: SagaStore, saga_id: str, last: str) -> bool:
    """The request is finished and the history ends with ``last``."""
    if await store.list_saga_requests(saga_id=saga_id):
        return False
    actions = await history(store, saga_id)
    return bool(actions) and actions[-1] == last


# -- cancel ------------------------------------------------------------------------------------
async def test_a_cancel_arriving_mid_run_compensates_and_settles_the_event(
    place: Place, capsys: pytest.CaptureFixture[str]
) -> None:
    shop = make_shop(gated=True)
    async with place.store() as store, engine_on(store) as engine:
        [saga_id] = await engine.fire(shop.channel, {"id": 1})
        await asyncio.wait_for(shop.entered.wait(), 10)  # "charge" is running

        assert await cli("sagas", "cancel", saga_id, "--store", place.url, "--reason", "oops") == 0
        assert "cancel of saga" in capsys.readouterr().out
        cancellations = engine.state.cancellations  # type: ignore[union-attr]
        await eventually(lambda: cancellations.cancelled(saga_id), what="the engine noticing")
        shop.gate.set()  # "charge" finishes; "ship" must not start

        outcome = await engine.wait_for(saga_id, timeout=30)
        assert not isinstance(outcome, NotRun)
        assert outcome.status is SagaStatus.CANCELLED
        assert outcome.error is not None
        assert "cancelled by " in outcome.error and "oops" in outcome.error
        assert shop.runs == {"reserve": 1, "charge": 1, "refund": 1, "release": 1}
        record = await store.get_saga(saga_id)
        assert record is not None
        assert record.status is SagaStatus.CANCELLED
        steps = {s.name: s.status.value for s in await store.get_steps(saga_id)}
        assert steps == {"reserve": "compensated", "charge": "compensated"}

        await eventually(lambda: settled(store, saga_id, "cancelled"), what="the request done")
        assert await history(store, saga_id) == ["cancel_requested", "cancelled"]
        assert await store.list_dead_letters() == []  # an operator's cancel is no failure
        counted = engine.metrics.snapshot()
        assert (counted["cancelled"], counted["compensated"], counted["completed"]) == (1, 0, 0)

        assert await engine.fire(shop.channel, {"id": 1}) == []  # redelivered: a duplicate
        assert shop.runs == {"reserve": 1, "charge": 1, "refund": 1, "release": 1}

    assert await cli("sagas", "show", saga_id, "--store", place.url, "--json") == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["status"] == "cancelled"
    assert [e["action"] for e in shown["history"]] == ["cancel_requested", "cancelled"]
    assert shown["history"][0]["detail"] == "oops"
    assert shown["request"] is None
    assert await cli("sagas", "list", "--status", "cancelled", "--store", place.url) == 0
    assert saga_id in capsys.readouterr().out
    assert await cli("sagas", "show", saga_id, "--store", place.url) == 0
    text = capsys.readouterr().out
    history_table = text[text.index("\nhistory\n") :]
    assert "cancel_requested" in history_table and "oops" in history_table
    assert "cancelled by " in history_table  # the engine's entry, with the saga's error


async def test_a_pending_saga_cancelled_before_it_starts_runs_no_step(place: Place) -> None:
    shop = make_shop(gated=True)
    async with place.store() as store, engine_on(store, max_concurrent_sagas=1) as engine:
        [first] = await engine.fire(shop.channel, {"id": 1})
        await asyncio.wait_for(shop.entered.wait(), 10)
        [waiting] = await engine.fire(shop.channel, {"id": 2})  # queued behind the first
        record = await store.get_saga(waiting)
        assert record is not None
        assert record.status is SagaStatus.PENDING

        assert await cli("sagas", "cancel", waiting, "--store", place.url) == 0
        cancellations = engine.state.cancellations  # type: ignore[union-attr]
        await eventually(lambda: cancellations.requested(waiting), what="the engine noticing")
        shop.gate.set()

        outcome = await engine.wait_for(waiting, timeout=30)
        assert not isinstance(outcome, NotRun)
        assert outcome.status is SagaStatus.CANCELLED
        first_outcome = await engine.wait_for(first, timeout=30)
        assert not isinstance(first_outcome, NotRun)
        assert first_outcome.status is SagaStatus.COMPLETED
        assert shop.runs == {"reserve": 1, "charge": 1, "ship": 1}  # the first saga's only
        await eventually(lambda: settled(store, waiting, "cancelled"), what="the request done")


async def test_a_finished_saga_cannot_be_cancelled(
    place: Place, capsys: pytest.CaptureFixture[str]
) -> None:
    shop = make_shop()
    async with place.store() as store, engine_on(store) as engine:
        [saga_id] = await engine.fire(shop.channel, {"id": 1})
        await engine.wait_for(saga_id, timeout=30)
    capsys.readouterr()
    assert await cli("sagas", "cancel", saga_id, "--store", place.url) == 1
    assert "has ended completed: nothing to cancel" in capsys.readouterr().err
    assert await cli("sagas", "cancel", "no-such-saga", "--store", place.url) == 2


async def test_a_compensated_saga_waiting_for_its_retry_is_cancelled_not_retried(
    place: Place, capsys: pytest.CaptureFixture[str]
) -> None:
    shop = make_shop()
    shop.broken.add("charge")
    backoff = 60.0  # the retry would run long after the test's timeouts
    async with (
        place.store() as store,
        engine_on(store, max_retries=2, retry_backoff_seconds=[backoff]) as engine,
    ):
        [saga_id] = await engine.fire(shop.channel, {"id": 5})
        await eventually(
            lambda: ended(store, saga_id, SagaStatus.COMPENSATED, 1), what="the first attempt"
        )
        await eventually(lambda: engine.runner.pending_retries == 1, what="the retry waiting")

        assert await cli("sagas", "cancel", saga_id, "--store", place.url, "--reason", "gone") == 0
        assert "cancel of saga" in capsys.readouterr().out
        outcome = await engine.wait_for(saga_id, timeout=backoff / 4)
        assert not isinstance(outcome, NotRun)
        assert outcome.status is SagaStatus.CANCELLED
        assert outcome.error is not None and "gone" in outcome.error
        assert engine.runner.pending_retries == 0
        assert shop.runs == {"reserve": 1, "charge": 1, "release": 1}  # no step ran again
        await eventually(lambda: settled(store, saga_id, "cancelled"), what="the request done")
        assert await history(store, saga_id) == ["cancel_requested", "cancelled"]
        assert await store.list_dead_letters() == []  # cancelled, not retries exhausted
        counted = engine.metrics.snapshot()
        assert (counted["cancelled"], counted["compensated"], counted["retried"]) == (1, 1, 1)
        assert await engine.fire(shop.channel, {"id": 5}) == []  # settled: a duplicate
        assert shop.runs == {"reserve": 1, "charge": 1, "release": 1}


async def test_a_compensated_saga_with_no_retry_left_stays_compensated(place: Place) -> None:
    shop = make_shop()
    shop.broken.add("charge")
    async with place.store() as store, engine_on(store) as engine:  # max_retries=0
        [saga_id] = await engine.fire(shop.channel, {"id": 6})
        outcome = await engine.wait_for(saga_id, timeout=30)
        assert not isinstance(outcome, NotRun)
        assert outcome.status is SagaStatus.COMPENSATED
        await sagaz.cancel_saga(saga_id, store=store)
        await eventually(lambda: settled(store, saga_id, "cancel_missed"), what="the request")
        assert await ended(store, saga_id, SagaStatus.COMPENSATED, 1)
        assert len(await store.list_dead_letters()) == 1
        assert shop.runs == {"reserve": 1, "charge": 1, "release": 1}


# -- resume ------------------------------------------------------------------------------------
async def test_a_compensated_saga_resumes_once_its_failing_step_is_fixed(
    place: Place, capsys: pytest.CaptureFixture[str]
) -> None:
    shop = make_shop()
    shop.broken.add("charge")
    async with place.store() as store, engine_on(store) as engine:
        [saga_id] = await engine.fire(shop.channel, {"id": 7})
        outcome = await engine.wait_for(saga_id, timeout=30)
        assert not isinstance(outcome, NotRun)
        assert outcome.status is SagaStatus.COMPENSATED
        assert shop.runs == {"reserve": 1, "charge": 1, "release": 1}

        shop.broken.clear()  # the cause is fixed
        assert await cli("sagas", "resume", saga_id, "--store", place.url) == 0
        await eventually(
            lambda: ended(store, saga_id, SagaStatus.COMPLETED, 2), within=30, what="resumed"
        )
        # reserve was compensated (undone), so it runs again with charge and ship
        assert shop.runs == {"reserve": 2, "charge": 2, "release": 1, "ship": 1}
        record = await store.get_saga(saga_id)
        assert record is not None
        assert record.error is None
        assert record.context["tracking"] == "t-r-7"
        await eventually(lambda: settled(store, saga_id, "finished"), what="the request done")
        assert await history(store, saga_id) == ["resume_requested", "resumed", "finished"]
        entries = await store.list_saga_history(saga_id)
        assert entries[1].detail == "attempt 2; runs again: reserve, charge, ship"
        assert entries[1].actor == engine.worker_id
        assert entries[2].detail == "attempt 2 ended completed"

    capsys.readouterr()
    assert await cli("sagas", "resume", saga_id, "--store", place.url) == 1
    assert "completed: nothing to resume" in capsys.readouterr().err


async def test_a_resume_during_the_runners_own_retry_backoff_runs_the_saga_once(
    place: Place,
) -> None:
    shop = make_shop()
    shop.broken.add("charge")
    async with (
        place.store() as store,
        engine_on(store, max_retries=1, retry_backoff_seconds=[2.0]) as engine,
    ):
        [saga_id] = await engine.fire(shop.channel, {"id": 4})
        await eventually(
            lambda: ended(store, saga_id, SagaStatus.COMPENSATED, 1), what="the first attempt"
        )
        shop.broken.clear()
        await sagaz.resume_saga(saga_id, store=store)  # while the runner waits to retry it
        outcome = await engine.wait_for(saga_id, timeout=30)
        assert not isinstance(outcome, NotRun)
        assert (outcome.status, outcome.attempt) == (SagaStatus.COMPLETED, 2)
        await eventually(lambda: settled(store, saga_id, "finished"), what="the request done")
        await continually(lambda: shop.runs["reserve"] == 2, during=INTERVAL * 5)
        assert shop.runs == {"reserve": 2, "charge": 2, "release": 1, "ship": 1}
        assert await history(store, saga_id) == ["resume_requested", "finished"]


# -- retry from a step -------------------------------------------------------------------------
async def test_retry_from_a_step_reruns_exactly_that_step_and_the_ones_after(
    place: Place, capsys: pytest.CaptureFixture[str]
) -> None:
    shop = make_shop()
    async with place.store() as store, engine_on(store) as engine:
        [saga_id] = await engine.fire(shop.channel, {"id": 3})
        await engine.wait_for(saga_id, timeout=30)
        assert shop.runs == {"reserve": 1, "charge": 1, "ship": 1}

        capsys.readouterr()
        assert await cli("sagas", "retry", saga_id, "--from-step", "nope", "--store", place.url)
        assert "has no step 'nope' that ran" in capsys.readouterr().err

        assert (
            await cli("sagas", "retry", saga_id, "--from-step", "charge", "--store", place.url) == 0
        )
        await eventually(
            lambda: ended(store, saga_id, SagaStatus.COMPLETED, 2), within=30, what="retried"
        )
        assert shop.runs == {"reserve": 1, "charge": 2, "ship": 2}
        record = await store.get_saga(saga_id)
        assert record is not None
        assert record.context["reservation"] == "r-3"  # kept from the first attempt
        await eventually(lambda: settled(store, saga_id, "finished"), what="the request done")
        entries = await store.list_saga_history(saga_id)
        assert [(e.action, e.detail) for e in entries] == [
            ("retry_requested", "from step 'charge'"),
            ("retried", "attempt 2; runs again: charge, ship"),
            ("finished", "attempt 2 ended completed"),
        ]

        # once more, from the last step
        await _retry(place, saga_id, "ship")
        await eventually(
            lambda: ended(store, saga_id, SagaStatus.COMPLETED, 3), within=30, what="retried"
        )
        assert shop.runs == {"reserve": 1, "charge": 2, "ship": 3}


async def _retry(place: Place, saga_id: str, step: str) -> None:
    assert await cli("sagas", "retry", saga_id, "--from-step", step, "--store", place.url) == 0


async def test_retry_refuses_to_keep_a_compensated_step(
    place: Place, capsys: pytest.CaptureFixture[str]
) -> None:
    shop = make_shop()
    shop.broken.add("ship")
    async with place.store() as store, engine_on(store) as engine:
        [saga_id] = await engine.fire(shop.channel, {"id": 5})
        await engine.wait_for(saga_id, timeout=30)
    capsys.readouterr()
    assert await cli("sagas", "retry", saga_id, "--from-step", "charge", "--store", place.url)
    err = capsys.readouterr().err
    assert "step 'reserve', before 'charge', is compensated" in err
    assert "retry from 'reserve'" in err


# -- many engines, and the Python API ---------------------------------------------------------
@pytest.fixture
async def shared_postgres(postgres_dsn: str) -> AsyncIterator[Place]:
    schema = unique_name("control2").replace("-", "_")
    yield Place(f"{postgres_dsn}?schema={schema}")
    await drop_postgres_schema(postgres_dsn, schema)


async def test_every_engine_on_a_shared_store_follows_the_requests(
    shared_postgres: Place,
) -> None:
    place = shared_postgres
    shop = make_shop(gated=True)
    async with (
        place.store() as store_a,
        place.store() as store_b,
        place.store() as operator,  # as another process: only the store in common
        engine_on(store_a) as engine_a,
        engine_on(store_b) as engine_b,
    ):
        # a cancel written elsewhere reaches the engine running the saga: here, B
        [saga_id] = await engine_b.fire(shop.channel, {"id": 1})
        await asyncio.wait_for(shop.entered.wait(), 10)
        await sagaz_api_cancel(operator, saga_id)
        noticed = engine_b.state.cancellations  # type: ignore[union-attr]
        await eventually(lambda: noticed.cancelled(saga_id), what="engine B noticing")
        shop.gate.set()
        outcome = await engine_b.wait_for(saga_id, timeout=30)
        assert not isinstance(outcome, NotRun)
        assert outcome.status is SagaStatus.CANCELLED
        assert shop.runs == {"reserve": 1, "charge": 1, "refund": 1, "release": 1}
        await eventually(lambda: settled(operator, saga_id, "cancelled"), what="cancel done")

        # a resume is taken up by exactly one engine
        await sagaz.resume_saga(saga_id, store=operator, actor="ann@ops")
        await eventually(
            lambda: ended(operator, saga_id, SagaStatus.COMPLETED, 2), within=30, what="resumed"
        )
        await eventually(lambda: settled(operator, saga_id, "finished"), what="request done")
        assert shop.runs == {
            "reserve": 2,
            "charge": 2,
            "ship": 1,
            "refund": 1,
            "release": 1,
        }
        entries = await sagaz.saga_history(saga_id, store=operator)
        assert [e.action for e in entries] == [
            "cancel_requested",
            "cancelled",
            "resume_requested",
            "resumed",
            "finished",
        ]
        assert entries[2].actor == "ann@ops"
        assert entries[3].actor in (engine_a.worker_id, engine_b.worker_id)


async def sagaz_api_cancel(store: SagaStore, saga_id: str) -> None:
    await sagaz.cancel_saga(saga_id, reason="from Python", store=store)


async def test_the_process_wide_engine_acts_at_once_on_a_request_made_in_its_process(
    tmp_path: Path,
) -> None:
    shop = make_shop(gated=True)
    # an interval too long for the test to wait: only the wake-up of the local engine works
    config = TriggerConfig(saga_control_interval_seconds=3600, max_retries=0)
    async with store_from_url(f"sqlite:///{tmp_path / 'sagaz.db'}") as store:
        engine = await sagaz.start_triggers(config, store)
        try:
            [saga_id] = await sagaz.fire_event(shop.channel, {"id": 9})
            await asyncio.wait_for(shop.entered.wait(), 10)
            await sagaz.cancel_saga(saga_id)  # the running engine's store
            assert engine.state is not None
            assert engine.state.cancellations.cancelled(saga_id)
            shop.gate.set()
            outcome = await engine.wait_for(saga_id, timeout=30)
            assert not isinstance(outcome, NotRun)
            assert outcome.status is SagaStatus.CANCELLED
            await eventually(lambda: settled(store, saga_id, "cancelled"), what="cancel done")

            await sagaz.retry_saga(saga_id, "reserve")
            await eventually(
                lambda: ended(store, saga_id, SagaStatus.COMPLETED, 2), within=30, what="retry"
            )
            assert shop.runs["ship"] == 1
        finally:
            await sagaz.stop_triggers()


# -- a broker trigger --------------------------------------------------------------------------
@pytest.fixture(params=backend_params("redis", "rabbitmq"))
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    kind: str = request.param
    address = request.getfixturevalue({"redis": "redis_url", "rabbitmq": "rabbitmq_url"}[kind])
    async with open_backend(kind, address) as opened:
        yield opened


async def test_a_cancelled_broker_saga_acks_its_message_and_is_not_redelivered(
    broker: Backend, tmp_path: Path
) -> None:
    runs: dict[str, int] = {}
    gate, entered = asyncio.Event(), asyncio.Event()
    name = unique_name("brokered")

    class Brokered(Saga):
        saga_name = name

        @trigger(source=broker.kind, **broker.options())
        def on_event(self, event: Any) -> dict[str, Any]:
            return {"n": event["n"]}

        @action("first")
        async def first(self, ctx: SagaContext) -> None:
            runs["first"] = runs.get("first", 0) + 1
            entered.set()
            await gate.wait()

        @compensate("first")
        async def undo_first(self, ctx: SagaContext) -> None:
            runs["undo"] = runs.get("undo", 0) + 1

        @action("second")
        async def second(self, ctx: SagaContext) -> None:
            runs["second"] = runs.get("second", 0) + 1

    config = TriggerConfig(saga_control_interval_seconds=INTERVAL, max_retries=0, **broker.config())
    async with (
        store_from_url(f"sqlite:///{tmp_path / 'sagaz.db'}") as store,
        TriggerEngine(config, store) as engine,
    ):
        await broker.publish([json.dumps({"n": 1}).encode()])
        await asyncio.wait_for(entered.wait(), 30)
        [record] = await store.list_sagas(saga_name=name)
        await sagaz.cancel_saga(record.saga_id, store=store)
        noticed = engine.state.cancellations  # type: ignore[union-attr]
        await eventually(lambda: noticed.cancelled(record.saga_id), what="the cancel")
        gate.set()
        outcome = await engine.wait_for(record.saga_id, timeout=30)
        assert not isinstance(outcome, NotRun)
        assert outcome.status is SagaStatus.CANCELLED

        async def acked() -> bool:
            return await broker.outstanding() == 0

        await eventually(acked, within=30, what="the message acked")
        await continually(acked, during=1.0)  # and not redelivered
        assert runs == {"first": 1, "undo": 1}
        assert engine.metrics.snapshot()["received"] == 1
        assert await store.list_dead_letters() == []
