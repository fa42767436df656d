"""A saga run that an error of the store (not an outage) ends is neither nacked nor left
owned by its worker: its delivery is held, the saga run again after a backoff (resumed from
its last checkpoint), and after the last attempt dead-lettered (reason ``store_error``), its
saga given a terminal row, its inbox row completed, and its delivery acked.

The old answer was a nack: the event of ``fire_event`` (a source that does not redeliver)
left its saga pending, owned by the worker, its lease renewed by the heartbeat, with no dead
letter and no retry until the process stopped; a RabbitMQ message came back at once, for
ever (a hot loop while the error repeats). On the durable stores (a memory store keeps any
value, so it refuses none): SQLite, PostgreSQL and Redis.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from sagaz import Saga, SagaContext, SagaStatus, TriggerConfig, action, trigger
from sagaz.abc import Emit, SagaStore
from sagaz.clock import utcnow
from sagaz.engine.engine import TriggerEngine
from sagaz.engine.identity import saga_id_for
from sagaz.engine.replay import replay
from sagaz.engine.run_errors import RunErrors
from sagaz.engine.settle_errors import SettleErrors
from sagaz.records import ClaimOutcome, OutboxMessage, SagaRecord, StepRecord
from sagaz.saga.result import SagaResult
from sagaz.storage import MemorySagaStore, PostgresSagaStore, RedisSagaStore, SQLiteSagaStore
from sagaz.testing import eventually
from tests.engine_support import NumberedSource, RecordingListener
from tests.fixtures_rabbitmq import Rabbit
from tests.services import backend_params, delete_redis_keys, drop_postgres_schema, unique_name

SAGA = "unstorable"
TRIGGER_ID = f"{SAGA}.on_order"
WORKER = "w"
CONFIG = TriggerConfig(worker_id=WORKER, shutdown_timeout=1.0)


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(RunErrors, "initial", 0.02)
    monkeypatch.setattr(RunErrors, "maximum", 0.05)


class Refusing:
    """A store (mixed into one of the durable ones) that refuses the checkpoint of a
    completed saga ``refusals`` more times, with an error that is not an outage (as a value
    the store refuses). A checkpoint of a step the store refuses is the step's failure (the
    saga compensates); the terminal one ends the run."""

    refusals = 0

    async def save_checkpoint(
        self,
        saga: SagaRecord | None = None,
        steps: Sequence[StepRecord] = (),
        outbox: Sequence[OutboxMessage] = (),
        *,
        complete_inbox: tuple[str, str] | None = None,
    ) -> None:
        if saga is not None and saga.status is SagaStatus.COMPLETED and self.refusals > 0:
            self.refusals -= 1
            raise RuntimeError(f"refused the completion of {saga.saga_id}")
        await super().save_checkpoint(  # type: ignore[misc]
            saga, steps, outbox, complete_inbox=complete_inbox
        )


@pytest.fixture(params=backend_params("sqlite", "postgres", "redis"))
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SagaStore]:
    """A fresh durable store of each kind (a :class:`Refusing` one)."""
    kind = request.param
    cleanup: Callable[[], Any] | None = None
    made: SagaStore
    if kind == "sqlite":
        made = type("RefusingSQLite", (Refusing, SQLiteSagaStore), {})(tmp_path / "sagaz.db")
    elif kind == "postgres":
        dsn, schema = request.getfixturevalue("postgres_dsn"), unique_name("run_errors")
        made = type("RefusingPostgres", (Refusing, PostgresSagaStore), {})(dsn, schema=schema)
        cleanup = lambda: drop_postgres_schema(dsn, schema)  # noqa: E731
    else:
        url, prefix = request.getfixturevalue("redis_url"), unique_name("sagaz-run-errors")
        made = type("RefusingRedis", (Refusing, RedisSagaStore), {})(url, prefix=prefix)
        cleanup = lambda: delete_redis_keys(url, prefix)  # noqa: E731
    async with made:
        yield made
    if cleanup is not None:
        await cleanup()


def define_saga(ran: list[str], unstorable: set[str], source: Any = None) -> None:
    """A two-step saga on the memory channel ``orders`` (or on ``source``) whose trigger
    method returns a context the store cannot encode for an order id in ``unstorable``."""

    class Unstorable(Saga):
        saga_name = SAGA

        if source is None:

            @trigger(source="memory", channel="orders", idempotency_key=lambda e: e["id"])
            def on_order(self, event: dict[str, Any]) -> dict[str, Any]:
                return _context(event, unstorable)

        else:

            @trigger(source="custom", trigger=source)
            def on_order(self, event: dict[str, Any]) -> dict[str, Any]:
                return _context(event, unstorable)

        @action("reserve")
        async def reserve(self, ctx: SagaContext) -> None:
            ran.append(f"reserve {ctx['id']}")

        @action("ship", depends_on=["reserve"])
        async def ship(self, ctx: SagaContext) -> None:
            ran.append(f"ship {ctx['id']}")


def _context(event: dict[str, Any], unstorable: set[str]) -> dict[str, Any]:
    order = str(event.get("id", event.get("n")))
    context: dict[str, Any] = {"id": order}
    if order in unstorable:
        context["handle"] = object()  # StoreError: cannot store value['handle'] ...
    return context


async def test_an_unstorable_context_is_dead_lettered_and_its_saga_ends_failed(
    store: SagaStore,
) -> None:
    ran: list[str] = []
    unstorable = {"o-1"}
    define_saga(ran, unstorable)
    listener = RecordingListener()
    saga_id = saga_id_for(TRIGGER_ID, "o-1")
    async with TriggerEngine(CONFIG, store, listeners=[listener]) as engine:
        assert await engine.fire("orders", {"id": "o-1"}) == [saga_id]
        outcome = await engine.wait_for(saga_id, timeout=20)
        # old code: NotRun("interrupted") at once, the saga pending and ours for ever
        assert isinstance(outcome, SagaResult) and outcome.status is SagaStatus.FAILED
        [dead] = await store.list_dead_letters()
        # a value the store cannot keep fails every run alike: dead-lettered after the first
        assert (dead.reason, dead.saga_id, dead.attempts) == ("store_error", saga_id, 1)
        assert dead.payload == {"id": "o-1"}  # the event, as fired
        assert "cannot store value['handle']" in dead.error
        assert dead.traceback is not None and "UnstorableValueError" in dead.traceback
        assert [d.id for d in listener.dead] == [dead.id]  # on_dead_letter, once
        assert len(listener.errors) == 1  # its one run reported
        # no lease is kept: the heartbeat has nothing of this worker's left to renew
        assert await store.renew_leases(WORKER, utcnow() + timedelta(hours=1)) == 0
        saga = await store.get_saga(saga_id)
        assert saga is not None and saga.status is SagaStatus.FAILED
        assert saga.error == dead.error and saga.context == {}  # its last checkpoint's
        assert await store.list_recoverable(utcnow() + timedelta(hours=2)) == []
        # its inbox row is completed, as a dead-lettered saga's
        lease = utcnow() + timedelta(seconds=30)
        claim = await store.claim_inbox(TRIGGER_ID, "o-1", saga_id, "other", lease)
        assert claim.outcome is ClaimOutcome.DUPLICATE
        assert ran == []

    # once the trigger method returns what the store keeps, `sagaz dlq replay` runs it
    unstorable.clear()
    replayed = await replay(store, dead, config=CONFIG, timeout=20)
    assert (replayed.status, replayed.saga_id) == ("completed", saga_id)
    assert ran == ["reserve o-1", "ship o-1"]
    assert await store.list_dead_letters() == []


async def test_a_refused_checkpoint_that_clears_lets_the_saga_resume_and_complete(
    store: SagaStore,
) -> None:
    ran: list[str] = []
    define_saga(ran, set())
    store.refusals = 2  # type: ignore[attr-defined]
    listener = RecordingListener()
    async with TriggerEngine(CONFIG, store, listeners=[listener]) as engine:
        [saga_id] = await engine.fire("orders", {"id": "o-2"})
        outcome = await engine.wait_for(saga_id, timeout=20)
        assert isinstance(outcome, SagaResult) and outcome.status is SagaStatus.COMPLETED
    # resumed from its last checkpoint: the first step ran once, the last one (its
    # completion is written with the saga's) each time
    assert ran == ["reserve o-2"] + ["ship o-2"] * 3
    assert [str(e) for e in listener.errors] == [f"refused the completion of {saga_id}"] * 2
    assert await store.list_dead_letters() == [] and listener.dead == []
    saga = await store.get_saga(saga_id)
    assert saga is not None and saga.status is SagaStatus.COMPLETED


class Broker(NumberedSource):
    """A redeliverable source whose messages the test emits one by one."""

    def __init__(self) -> None:
        super().__init__()
        self.emit: Emit | None = None

    async def run(self, emit: Emit) -> None:
        self.emit = emit
        await asyncio.Event().wait()


async def test_a_held_run_is_nacked_when_the_engine_stops(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(RunErrors, "attempts", 1000)  # still held when the engine stops
    ran: list[str] = []
    source = Broker()
    define_saga(ran, set(), source)
    store = type("RefusingMemory", (Refusing, MemorySagaStore), {})()
    store.refusals = 1000
    listener = RecordingListener()
    engine = TriggerEngine(CONFIG, store, listeners=[listener])
    await engine.start()
    try:
        await eventually(lambda: source.emit is not None, what="the source running")
        assert source.emit is not None
        await source.emit(source.delivery(3))
        await eventually(lambda: len(listener.errors) >= 2, what="its run failed, and again")
        assert source.nacked == []  # held meanwhile (old code: nacked at once)
    finally:
        await engine.stop()
    assert source.nacked == [3]  # handed back for redelivery, as cancellation is
    assert source.acked == Counter()
    assert await store.list_dead_letters() == []


async def test_a_rabbitmq_message_whose_saga_cannot_be_stored_is_dead_lettered_once(
    rabbit: Rabbit, tmp_path: Path
) -> None:
    # old code: nacked with requeue, so RabbitMQ delivered it again at once, for ever, its
    # trigger method run each time, and nothing dead-lettered it
    queue = rabbit.queue_name()
    await rabbit.declare(queue)
    ran: list[str] = []
    methods: Counter[int] = Counter()

    class RabbitUnstorable(Saga):
        saga_name = "rabbit-unstorable"

        @trigger(source="rabbitmq", queue=queue)
        def on_message(self, event: dict[str, Any]) -> dict[str, Any]:
            methods[event["n"]] += 1
            return _context({"id": str(event["n"])}, {"2"})

        @action("work")
        async def work(self, ctx: SagaContext) -> None:
            ran.append(ctx["id"])

    listener = RecordingListener()
    await rabbit.publish(queue, [json.dumps({"n": n}).encode() for n in range(4)])
    config = TriggerConfig(rabbitmq_url=rabbit.url, shutdown_timeout=1.0)
    async with (
        SQLiteSagaStore(tmp_path / "sagaz.db") as store,
        TriggerEngine(config, store, listeners=[listener]),
    ):
        dead = await eventually(store.list_dead_letters, within=30, what="its dead letter")
        await eventually(lambda: sorted(ran) == ["0", "1", "3"], what="the others' sagas")
        assert [(d.reason, d.payload, d.attempts) for d in dead] == [
            ("store_error", json.dumps({"n": 2}).encode(), 1)
        ]
        assert len(listener.errors) == 1  # a value that fails alike: one run, not retried
        assert methods == Counter({0: 1, 1: 1, 2: 1, 3: 1})  # never redelivered
        # its row is written failed after its dead letter is stored
        [saga] = await eventually(
            functools.partial(store.list_sagas, status=SagaStatus.FAILED), what="its failed row"
        )
        assert "cannot store value['handle']" in (saga.error or "")
    assert await rabbit.ready(queue) == 0  # acked once dead-lettered
    assert [d.id for d in listener.dead] == [dead[0].id]


class RefusesInboxCompletions(SQLiteSagaStore):
    """Its ``complete_inbox`` (the settling of a saga that ended without completing its inbox
    row: compensated, failed, cancelled) always fails, with an error that is not an outage."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.refused = 0
        self.released = 0

    async def complete_inbox(self, trigger_id: str, key: str) -> None:
        self.refused += 1
        raise RuntimeError("disk I/O error")

    async def release_inbox(self, trigger_id: str, key: str) -> None:
        self.released += 1
        await super().release_inbox(trigger_id, key)


async def test_a_rabbitmq_message_whose_inbox_row_the_store_refuses_is_settled_once(
    rabbit: Rabbit, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # old code: the dispatcher nacked it (requeue), so RabbitMQ delivered it again at once, for
    # ever: each delivery found its saga ended, dead-lettered it once more, and failed again
    monkeypatch.setattr(SettleErrors, "initial", 0.02)
    monkeypatch.setattr(SettleErrors, "maximum", 0.05)
    queue = rabbit.queue_name()
    await rabbit.declare(queue)
    ran: Counter[int] = Counter()

    class RabbitUnsettled(Saga):
        saga_name = "rabbit-unsettled"

        @trigger(source="rabbitmq", queue=queue, max_retries=0)
        def on_message(self, event: dict[str, Any]) -> dict[str, Any]:
            return {"n": event["n"]}

        @action("work")
        async def work(self, ctx: SagaContext) -> None:
            ran[ctx["n"]] += 1
            if ctx["n"] == 2:
                raise RuntimeError("the step fails")

    listener = RecordingListener()
    await rabbit.publish(queue, [json.dumps({"n": n}).encode() for n in range(4)])
    config = TriggerConfig(rabbitmq_url=rabbit.url, shutdown_timeout=1.0)
    async with (
        RefusesInboxCompletions(tmp_path / "sagaz.db") as store,
        TriggerEngine(config, store, listeners=[listener]),
    ):
        # given up after its last attempt: its key released, then its delivery acked
        await eventually(lambda: store.released == 1, within=30, what="its settling given up")
        await eventually(lambda: sum(ran.values()) == 4, what="every saga ran")
        dead = await store.list_dead_letters()
    assert [(d.reason, d.payload) for d in dead] == [
        ("retries_exhausted", json.dumps({"n": 2}).encode())
    ]  # its own dead letter, once: its durable record
    assert store.refused == SettleErrors.attempts  # bounded: no hot loop
    assert len(listener.errors) == SettleErrors.attempts  # each attempt reported
    assert ran == Counter({0: 1, 1: 1, 2: 1, 3: 1})  # never redelivered
    assert await rabbit.ready(queue) == 0  # acked
