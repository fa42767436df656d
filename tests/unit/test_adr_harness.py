"""The ADR's ModelRetrainingSaga / DriftEvent harness tests, verbatim in spirit and API."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from sagaz import Saga, SagaStatus, action, trigger
from sagaz.testing import TriggerTestHarness


class DriftEvent(BaseModel):
    model_id: str
    score: float


class ModelRetrainingSaga(Saga):
    saga_name = "model-retraining-unit"  # tests/adr has the ADR's own, same name

    @trigger(source="kafka", topic="model.drift")
    def on_drift_detected(self, event: DriftEvent) -> dict[str, Any] | None:
        if event.score > 0.5:
            return {"model_id": event.model_id, "reason": "drift"}
        return None

    @trigger(source="cron", schedule="@daily")
    def on_daily_schedule(self, tick: Any) -> dict[str, Any]:
        return {"model_id": "all", "reason": "scheduled"}

    @action("train_model")
    async def train(self, ctx: Any) -> dict[str, Any]:
        return {"trained": ctx["model_id"]}


async def test_drift_trigger() -> None:
    saga = ModelRetrainingSaga()
    harness = TriggerTestHarness(saga)

    event = DriftEvent(model_id="model-123", score=0.8)
    context = await harness.trigger("on_drift_detected", event)

    assert context is not None
    assert context["model_id"] == "model-123"
    assert context["reason"] == "drift"


async def test_trigger_filtering() -> None:
    saga = ModelRetrainingSaga()
    harness = TriggerTestHarness(saga)

    event = DriftEvent(model_id="model-123", score=0.3)
    context = await harness.trigger("on_drift_detected", event)

    assert context is None


async def test_harness_validates_raw_json_like_the_engine() -> None:
    harness = TriggerTestHarness(ModelRetrainingSaga())
    context = await harness.trigger("on_drift_detected", b'{"model_id": "m-1", "score": 0.9}')
    assert context == {"model_id": "m-1", "reason": "drift"}


async def test_harness_run_goes_through_the_pipeline() -> None:
    async with TriggerTestHarness(ModelRetrainingSaga()) as harness:
        result = await harness.run("on_drift_detected", DriftEvent(model_id="m-7", score=0.9))
        assert result is not None
        assert result.status is SagaStatus.COMPLETED
        assert result.context == {"model_id": "m-7", "reason": "drift", "trained": "m-7"}
        filtered = await harness.run("on_drift_detected", DriftEvent(model_id="m-8", score=0.1))
        assert filtered is None
        assert harness.last_admission.reason == "filtered"
