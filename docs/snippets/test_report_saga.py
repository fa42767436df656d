"""Tests of a saga's triggers: no broker, no server, no waiting for real time."""

from datetime import UTC, datetime

from pydantic import BaseModel

from sagaz import CronTick, Saga, SagaContext, SagaStatus, TriggerConfig, action, trigger
from sagaz.engine import TriggerEngine
from sagaz.storage import MemorySagaStore
from sagaz.testing import FakeClock, TriggerTestHarness, eventually
from sagaz.triggers import registry


class DriftEvent(BaseModel):
    model_id: str
    score: float


class RetrainSaga(Saga):
    saga_name = "retrain"

    @trigger(source="kafka", topic="model.drift")
    def on_drift(self, event: DriftEvent) -> dict | None:
        if event.score < 0.5:
            return None  # small drift: no saga
        return {"model_id": event.model_id, "reason": "drift"}

    @trigger(source="cron", schedule="0 * * * *")
    def hourly(self, tick: CronTick) -> dict:
        return {"model_id": "all", "reason": "schedule", "at": tick.scheduled_at.isoformat()}

    @action("retrain")
    async def retrain(self, ctx: SagaContext) -> dict:
        return {"version": 2}


async def test_the_trigger_method_maps_the_event() -> None:
    harness = TriggerTestHarness(RetrainSaga())
    event = DriftEvent(model_id="m-1", score=0.8)
    assert await harness.trigger("on_drift", event) == {"model_id": "m-1", "reason": "drift"}
    assert await harness.trigger("on_drift", DriftEvent(model_id="m-1", score=0.1)) is None


async def test_an_event_runs_the_saga_through_the_pipeline() -> None:
    async with TriggerTestHarness(RetrainSaga()) as harness:
        event = DriftEvent(model_id="m-1", score=0.8)
        result = await harness.run("on_drift", event, key="m-1")
        assert result is not None
        assert result.status is SagaStatus.COMPLETED
        assert result.context["version"] == 2
        # the same key again is a duplicate: no second saga
        assert await harness.run("on_drift", event, key="m-1") is None
        assert harness.last_admission.reason == "duplicate"


async def test_the_hourly_trigger_fires_on_fake_time() -> None:
    clock = FakeClock(datetime(2026, 1, 1, 9, 30, tzinfo=UTC))
    store = MemorySagaStore()
    hourly = [registry.get("retrain.hourly")]  # only this trigger: no Kafka in this test
    async with store, TriggerEngine(TriggerConfig(), store, clock=clock, triggers=hourly):
        await eventually(lambda: clock.sleepers, what="the cron source waiting for 10:00")
        await clock.advance(30 * 60)  # to 10:00, at once

        async def completed() -> list:
            return await store.list_sagas(status=SagaStatus.COMPLETED, saga_name="retrain")

        [saga] = await eventually(completed, what="the 10:00 saga")
        assert saga.context["at"] == "2026-01-01T10:00:00+00:00"
