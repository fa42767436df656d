"""The corners of a run that an error of the store ends (:mod:`sagaz.engine.run_errors`):
a retry whose new attempt never began starts it when run again, and a saga whose terminal
row the store refuses too is given back, not left leased by its worker. (The end-to-end
cases, on the durable stores and RabbitMQ: ``tests/integration/test_run_store_errors.py``.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from sagaz import Saga, SagaContext, SagaStatus, TriggerConfig, action, trigger
from sagaz.engine.engine import TriggerEngine
from sagaz.engine.run_errors import RunErrors
from sagaz.events import NotRun
from sagaz.records import OutboxMessage, SagaRecord, StepRecord
from sagaz.saga.result import SagaResult
from sagaz.storage.memory import MemorySagaStore
from tests.engine_support import RecordingListener

CHANNEL = "run_errors"


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(RunErrors, "initial", 0.02)
    monkeypatch.setattr(RunErrors, "maximum", 0.05)


class FailingResets(MemorySagaStore):
    """Its ``reset_steps`` (a new attempt's first write) fails once."""

    failed = False

    async def reset_steps(self, saga_id: str) -> None:
        if not self.failed:
            self.failed = True
            raise RuntimeError("refused the reset")
        await super().reset_steps(saga_id)


async def test_a_retry_whose_new_attempt_never_began_starts_it_when_run_again() -> None:
    # run again as it was, the saga's stored row (compensated, attempt 1) would have been
    # its result: counted as a second compensation, dead-lettered "retries_exhausted"
    tries: list[int] = []

    class Flaky(Saga):
        saga_name = "flaky_retry"

        @trigger(source="memory", channel=CHANNEL, max_retries=1, retry_backoff_seconds=[0.0])
        def on_event(self, event: dict[str, Any]) -> dict[str, Any]:
            return {"n": event["n"]}

        @action("work")
        async def work(self, ctx: SagaContext) -> None:
            tries.append(ctx.attempt)
            if ctx.attempt == 1:
                raise RuntimeError("the first attempt fails")

    store = FailingResets()
    listener = RecordingListener()
    async with TriggerEngine(TriggerConfig(), store, listeners=[listener]) as engine:
        [saga_id] = await engine.fire(CHANNEL, {"n": 1})
        outcome = await engine.wait_for(saga_id, timeout=10)
    assert isinstance(outcome, SagaResult)
    assert (outcome.status, outcome.attempt) == (SagaStatus.COMPLETED, 2)
    assert tries == [1, 2]
    assert [str(e) for e in listener.errors] == ["refused the reset"]
    assert await store.list_dead_letters() == []


class RefusesFailedRows(MemorySagaStore):
    """Every checkpoint fails (the first step's start among them, so the saga compensates
    and its compensating row fails too), and so does a ``failed`` row."""

    async def save_checkpoint(
        self,
        saga: SagaRecord | None = None,
        steps: Sequence[StepRecord] = (),
        outbox: Sequence[OutboxMessage] = (),
        *,
        complete_inbox: tuple[str, str] | None = None,
    ) -> None:
        status = None if saga is None else saga.status.value
        raise RuntimeError(f"refused a {status} row")


async def test_a_saga_whose_failed_row_is_refused_too_is_given_back_and_its_event_acked() -> None:
    ran: list[int] = []

    class Refused(Saga):
        saga_name = "refused_rows"

        @trigger(source="memory", channel=CHANNEL)
        def on_event(self, event: dict[str, Any]) -> dict[str, Any]:
            return {"n": event["n"]}

        @action("work")
        async def work(self, ctx: SagaContext) -> None:
            ran.append(ctx["n"])

    store = RefusesFailedRows()
    listener = RecordingListener()
    config = TriggerConfig(worker_id="w")
    async with TriggerEngine(config, store, listeners=[listener]) as engine:
        [saga_id] = await engine.fire(CHANNEL, {"n": 1})
        outcome = await engine.wait_for(saga_id, timeout=10)
        assert isinstance(outcome, NotRun) and outcome.reason == "interrupted"
        [dead] = await store.list_dead_letters()
        assert (dead.reason, dead.attempts) == ("store_error", RunErrors.attempts)
        assert dead.error == "RuntimeError: refused a compensating row"
        # reported: each run, then the refused failed row
        assert [str(e) for e in listener.errors][-1] == "refused a failed row"
        assert len(listener.errors) == RunErrors.attempts + 1
        saga = await store.get_saga(saga_id)
        assert saga is not None and saga.status is SagaStatus.PENDING
        assert saga.owner is None  # given back: no heartbeat of "w" renews it
        assert saga.lease_expires_at is not None  # recoverable after the loop's backoff
        assert engine.state is not None
        assert engine.state.resume_failures.count(saga_id) == 1
    assert ran == []


class RefusesRetries(MemorySagaStore):
    """Every new attempt's first write (``reset_steps``) fails, and so does every completion
    of an inbox row (not an outage): a retried saga stays compensated between attempts."""

    def __init__(self) -> None:
        super().__init__()
        self.released: list[str] = []

    async def reset_steps(self, saga_id: str) -> None:
        raise RuntimeError("refused the reset")

    async def complete_inbox(self, trigger_id: str, key: str) -> None:
        raise RuntimeError("refused the inbox row")

    async def release_inbox(self, trigger_id: str, key: str) -> None:
        self.released.append(key)
        await super().release_inbox(trigger_id, key)


async def test_an_ended_sagas_key_is_released_when_its_settling_is_refused_at_the_end() -> None:
    # the runs of a retry fail until the last attempt; its saga ended (compensated) before,
    # so giving up settles that row: the inbox row's completion is refused too. The event is
    # acked, its dead letter stored, and its key must not stay leased by this worker's
    # heartbeat (a replay, or the next delivery, would wait for it until the process stops).
    class Retried(Saga):
        saga_name = "refused_retries"

        @trigger(source="memory", channel=CHANNEL, max_retries=1, retry_backoff_seconds=[0.0])
        def on_event(self, event: dict[str, Any]) -> dict[str, Any]:
            return {"n": event["n"]}

        @action("work")
        async def work(self, ctx: SagaContext) -> None:
            raise RuntimeError("the first attempt fails")

    store = RefusesRetries()
    listener = RecordingListener()
    config = TriggerConfig(worker_id="w")
    async with TriggerEngine(config, store, listeners=[listener]) as engine:
        [saga_id] = await engine.fire(CHANNEL, {"n": 1})
        outcome = await engine.wait_for(saga_id, timeout=10)
        assert isinstance(outcome, SagaResult) and outcome.status is SagaStatus.COMPENSATED
        [dead] = await store.list_dead_letters()
        assert (dead.reason, dead.attempts) == ("store_error", RunErrors.attempts)
        assert str(listener.errors[-1]) == "refused the inbox row"
        assert len(store.released) == 1
        # nothing of this worker is left to renew
        assert await store.renew_leases("w", datetime.now(UTC) + timedelta(minutes=1)) == 0


async def test_a_run_held_when_the_engine_stops_is_given_back_uncounted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the stop nacks the held delivery; its saga, still this worker's, is given back, so
    # the worker that claims it next counts no recovery attempt (a stop is no crash)
    class Held(Saga):
        saga_name = "held_at_stop"

        @trigger(source="memory", channel=CHANNEL)
        def on_event(self, event: dict[str, Any]) -> dict[str, Any]:
            return {"n": event["n"]}

        @action("work")
        async def work(self, ctx: SagaContext) -> None:
            return None

    monkeypatch.setattr(RunErrors, "initial", 30.0)  # held until the stop
    monkeypatch.setattr(RunErrors, "maximum", 30.0)
    store = RefusesFailedRows()
    listener = RecordingListener()
    async with TriggerEngine(TriggerConfig(worker_id="w"), store, listeners=[listener]) as engine:
        [saga_id] = await engine.fire(CHANNEL, {"n": 1})
        for _ in range(200):  # held: its first run failed
            if listener.errors:
                break
            await asyncio.sleep(0.01)
        assert [str(e) for e in listener.errors] == ["refused a compensating row"]
        saga = await store.get_saga(saga_id)
        assert saga is not None and saga.owner == "w"
    saga = await store.get_saga(saga_id)
    assert saga is not None and saga.status is not SagaStatus.COMPLETED
    assert saga.owner is None  # given back: the next claim is no takeover
    assert await store.take_over_saga(saga_id, "w2", datetime.now(UTC) + timedelta(minutes=1)) == 0
