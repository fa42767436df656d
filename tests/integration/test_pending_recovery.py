"""A worker dies (SIGKILL) after it accepted an event (its inbox claim and its saga's pending row
are one store operation) but before its trigger method returned: the pending row holds no
context, only the delivery. Another worker on the same durable store runs the trigger method
again from that delivery, and what it returns decides: a saga, a filtered event, or a dead
letter, each settled once."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from sagaz import SagaStatus
from sagaz.abc import SagaStore
from sagaz.clock import utcnow
from sagaz.engine.engine import TriggerEngine
from sagaz.records import ClaimOutcome
from sagaz.storage.url import store_from_url
from sagaz.testing import eventually
from tests.integration.pending_worker import ENTERED, TRIGGER_ID, Behaviour, config, pending_saga
from tests.services import backend_params, delete_redis_keys, drop_postgres_schema, unique_name

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class DurableStore:
    """A durable store by URL; each call opens another store object on it, and the dying
    worker (another process) opens it from the URL."""

    url: str

    def __call__(self) -> SagaStore:
        return store_from_url(self.url)


@pytest.fixture(params=backend_params("sqlite", "postgres", "redis"))
async def store_factory(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[DurableStore]:
    """A durable store (see :class:`DurableStore`)."""
    if request.param == "sqlite":
        yield DurableStore(f"sqlite:///{tmp_path / 'sagaz.db'}")
    elif request.param == "postgres":
        dsn = request.getfixturevalue("postgres_dsn")
        schema = unique_name("pending").replace("-", "_")
        yield DurableStore(f"{dsn}{'&' if '?' in dsn else '?'}schema={schema}")
        await drop_postgres_schema(dsn, schema)
    else:
        url = request.getfixturevalue("redis_url")
        prefix = unique_name("sagaz-pending")
        yield DurableStore(f"{url}{'&' if '?' in url else '?'}prefix={prefix}")
        await delete_redis_keys(url, prefix)


async def accept_and_die(store_factory: DurableStore) -> str:
    """Worker "a", another process, accepts the event and is SIGKILLed inside the trigger
    method; returns the saga id, whose row is pending without a context."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    worker = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.integration.pending_worker",
        store_factory.url,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert worker.stdout is not None
        async with asyncio.timeout(30):
            line = await worker.stdout.readline()
        assert line.decode().strip() == ENTERED, "the worker died before its trigger method"
    finally:
        killed_at = utcnow()
        if worker.returncode is None:
            worker.send_signal(signal.SIGKILL)  # dies inside the trigger method
        await worker.wait()
    async with store_factory() as store:
        [pending] = await store.list_sagas()
    assert (pending.status, pending.context, pending.owner) == (SagaStatus.PENDING, {}, "a")
    # its lease runs on (renewed a third of a lease ago at most): a death, not a stop, which
    # would have released it
    assert pending.lease_expires_at is not None and pending.lease_expires_at > killed_at
    return pending.saga_id


async def test_a_pending_saga_without_context_is_started_from_its_kept_event(
    store_factory: DurableStore,
) -> None:
    behaviour = Behaviour()
    pending_saga(behaviour)
    saga_id = await accept_and_die(store_factory)

    behaviour.block = False
    async with store_factory() as store, TriggerEngine(config("b"), store) as engine:

        async def completed() -> bool:
            saga = await store.get_saga(saga_id)
            return saga is not None and saga.status is SagaStatus.COMPLETED

        await eventually(completed, within=15)
        saga = await store.get_saga(saga_id)
        assert saga is not None
        assert saga.context == {"order": "o-1", "total": 42}
        assert saga.event is None  # kept only until the saga started (no persist_events)
        assert behaviour.calls == ["o-1"]  # the trigger method ran again here, once
        assert behaviour.ran == [{"order": "o-1", "total": 42}]
        # its inbox row completed with it: the same event again is a duplicate
        assert await engine.fire("orders", {"id": "o-1", "total": 21}) == []
        claim = await store.claim_inbox(TRIGGER_ID, "o-1", saga_id, "c", saga.updated_at)
        assert claim.outcome is ClaimOutcome.DUPLICATE


async def test_a_pending_event_the_trigger_method_now_skips_is_filtered(
    store_factory: DurableStore,
) -> None:
    behaviour = Behaviour()
    pending_saga(behaviour)
    saga_id = await accept_and_die(store_factory)

    behaviour.block, behaviour.outcome = False, "skip"
    async with store_factory() as store, TriggerEngine(config("b"), store) as engine:
        await eventually(lambda: engine.metrics.reasons["filtered"] == 1, within=15)
        assert await store.get_saga(saga_id) is None  # no saga: the event is skipped
        claim = await store.claim_inbox(TRIGGER_ID, "o-1", saga_id, "c", _soon())
        assert claim.outcome is ClaimOutcome.DUPLICATE  # and settled
        assert await engine.recover_once() == 0  # nothing runs it again
        assert behaviour.calls == ["o-1"] and behaviour.ran == []


async def test_a_pending_event_the_trigger_method_now_rejects_is_dead_lettered(
    store_factory: DurableStore,
) -> None:
    behaviour = Behaviour()
    pending_saga(behaviour)
    saga_id = await accept_and_die(store_factory)

    behaviour.block, behaviour.outcome = False, "reject"
    async with store_factory() as store, TriggerEngine(config("b"), store):
        dead = await eventually(lambda: store.list_dead_letters(), within=15)
        assert [(d.reason, d.saga_id, d.payload) for d in dead] == [
            ("invalid", saga_id, {"id": "o-1", "total": 21})
        ]
        assert "no longer accepted" in dead[0].error

        async def dropped() -> bool:  # after its dead letter: a crash between keeps the event
            return await store.get_saga(saga_id) is None

        await eventually(dropped, within=15)
        assert behaviour.ran == []


def _soon() -> datetime:
    return utcnow() + timedelta(seconds=30)
