"""ADR-025 §1 "The `@trigger` Decorator" and §2 "Auto-Discovery Mechanism".

The §1 code block is copied as written into :func:`define_model_retraining_saga` (indented, so
that each test defines the class afresh and its definition registers the triggers, as
importing a module would). What the ADR leaves undefined: the imports and ``DriftEvent``.
§2's registry sketch is an illustration (seeds/README.md): what it promises is tested, that
defining (importing) the class registers its ``@trigger`` methods into
``sagaz.triggers.registry``, and that ``registry.clear()`` exists for tests (§ Cons).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel

import sagaz
from sagaz import Saga, SagaStatus, TriggerConfig, action, trigger
from sagaz.engine.engine import TriggerEngine
from sagaz.storage.memory import MemorySagaStore
from sagaz.testing import FakeClock, continually, eventually
from sagaz.triggers import registry
from tests.adr.support import Kafka, Recorder, parked, saga_with, sagas_named


class DriftEvent(BaseModel):
    """Left undefined by the ADR: a drift report of one model."""

    model_id: str
    score: float


def define_model_retraining_saga() -> type[Saga]:
    # -- ADR-025 §1, as written ------------------------------------------------------------
    # fmt: off
    class ModelRetrainingSaga(Saga):
        saga_name = "model-retraining"

        @trigger(source="kafka", topic="model.drift")
        def on_drift_detected(self, event: DriftEvent):
            # Transform event -> context
            if event.score > 0.5:
                return {"model_id": event.model_id, "reason": "drift"}
            return None # Skip execution

        @trigger(source="cron", schedule="@daily")
        def on_daily_schedule(self, tick):
            return {"model_id": "all", "reason": "scheduled"}

        @action("train_model")
        async def train(self, ctx):
            ...
    # fmt: on

    return ModelRetrainingSaga


def test_defining_the_saga_registers_its_triggers_and_clear_forgets_them() -> None:
    assert len(registry) == 0
    saga_cls = define_model_retraining_saga()
    assert {t.trigger_id: t.source for t in registry.triggers()} == {
        "model-retraining.on_drift_detected": "kafka",
        "model-retraining.on_daily_schedule": "cron",
    }
    assert all(t.saga_cls is saga_cls for t in registry)
    registry.clear()
    assert registry.triggers() == []


async def test_a_drift_above_the_threshold_starts_the_saga_and_a_low_score_is_skipped(
    kafka: Kafka,
) -> None:
    define_model_retraining_saga()
    drifted, calm = f"model-{uuid.uuid4().hex[:8]}", f"model-{uuid.uuid4().hex[:8]}"
    recorder = Recorder()

    engine = await sagaz.start_triggers(listeners=[recorder])
    await kafka.produce(
        "model.drift",
        {"model_id": drifted, "score": 0.8},
        {"model_id": calm, "score": 0.3},
    )

    saga = await saga_with(engine.store, "model-retraining", lambda c: c["model_id"] == drifted)
    assert saga.context == {"model_id": drifted, "reason": "drift"}
    assert saga.trigger_id == "model-retraining.on_drift_detected"
    assert [s.status for s in await engine.store.get_steps(saga.saga_id)] == ["completed"]

    def skipped() -> bool:
        return any(
            reason == "filtered" and getattr(event, "model_id", None) == calm
            for _, event, reason in recorder.filtered
        )

    await eventually(skipped, what="the low-score event reported as filtered")
    assert not [
        s
        for s in await sagas_named(engine.store, "model-retraining")
        if s.context == {"model_id": calm, "reason": "drift"}
    ]


async def test_the_daily_schedule_starts_the_saga_once_a_day() -> None:
    define_model_retraining_saga()
    clock = FakeClock(datetime(2026, 1, 1, tzinfo=UTC))
    store = MemorySagaStore()
    # only the cron trigger: this test has no Kafka broker
    daily = [registry.get("model-retraining.on_daily_schedule")]

    # the trigger-state watcher reads the store every trigger_state_interval_seconds of the
    # engine's clock: on a fake clock moved by days, once an hour is plenty
    config = TriggerConfig(trigger_state_interval_seconds=3600)
    async with TriggerEngine(config, store, clock=clock, triggers=daily):
        await parked(clock)

        async def sagas() -> list[Any]:
            return await sagas_named(store, "model-retraining")

        await clock.advance(23 * 3600)  # not midnight yet
        await continually(lambda: _count(sagas, 0), during=0.2)
        await clock.advance(3600)
        await eventually(lambda: _count(sagas, 1), what="one saga on 2026-01-02")
        await clock.advance(24 * 3600)
        await eventually(lambda: _count(sagas, 2), what="one more saga on 2026-01-03")

    done = await sagas_named(store, "model-retraining")
    assert [s.context for s in done] == [{"model_id": "all", "reason": "scheduled"}] * 2
    assert {s.status for s in done} == {SagaStatus.COMPLETED}


async def _count(sagas: Any, expected: int) -> bool:
    return len(await sagas()) == expected
