"""ADR-025's ``ModelRetrainingSaga``: retrain on drift (Kafka) and every night (cron).

Importing this module registers both triggers; ``main.py`` imports it and starts them. The
training step is a streaming action (an ``async def`` that ``yield``s, ADR-025 §3): each
checkpoint goes to the evaluation step while training goes on, through a bounded channel.
A model below the quality gate is not registered: the saga compensates (its dataset snapshot
is deleted) and the event is dead-lettered for a human to look at.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from examples.model_retraining import training
from examples.model_retraining.events import DriftEvent
from examples.model_retraining.settings import settings

from sagaz import CronTick, Saga, SagaContext, action, compensate, trigger

logger = logging.getLogger(__name__)


class QualityGateFailed(Exception):
    """The retrained model is not good enough to register."""


class ModelRetrainingSaga(Saga):
    saga_name = "model-retraining"

    # One retraining per model at a time: drift events of a model being retrained wait.
    @trigger(
        source="kafka",
        topic=settings.drift_topic,
        group_id=settings.kafka_group,
        concurrency_key=lambda event: event.model_id,
    )
    def on_drift_detected(self, event: DriftEvent) -> dict[str, Any] | None:
        if event.score > settings.drift_threshold:
            return {"model_id": event.model_id, "reason": "drift", "drift_score": event.score}
        logger.info(
            "model %s drifted by %.2f, not above %.2f: no retraining",
            event.model_id,
            event.score,
            settings.drift_threshold,
        )
        return None  # skip: no saga starts, the message is acknowledged

    # Every night at midnight (UTC); after a downtime over midnight, once at start.
    @trigger(source="cron", schedule="@daily", catchup="latest")
    def on_daily_schedule(self, tick: CronTick) -> dict[str, Any]:
        return {
            "model_id": "all",
            "reason": "scheduled",
            "scheduled_at": tick.scheduled_at.isoformat(),
        }

    @action("snapshot_dataset")
    async def snapshot_dataset(self, ctx: SagaContext) -> dict[str, Any]:
        logger.info("model %s: retraining (%s)", ctx["model_id"], ctx["reason"])
        snapshot_id, rows = await training.snapshot_dataset(ctx["model_id"])
        return {"snapshot_id": snapshot_id, "rows": rows}

    @compensate("snapshot_dataset")
    async def delete_snapshot(self, ctx: SagaContext) -> None:
        await training.delete_snapshot(ctx["model_id"], ctx["snapshot_id"])

    @action("train_model")
    async def train(self, ctx: SagaContext) -> AsyncIterator[training.Checkpoint]:
        async for checkpoint in training.fit(ctx["model_id"], ctx["snapshot_id"], settings.epochs):
            yield checkpoint  # to evaluate_model, as soon as the epoch is done

    @action("evaluate_model")
    async def evaluate(self, ctx: SagaContext) -> dict[str, Any]:
        best: tuple[float, training.Checkpoint] | None = None
        async for checkpoint in ctx.stream("train_model"):
            accuracy = await training.validation_accuracy(checkpoint, ctx.get("drift_score", 0.0))
            logger.info(
                "model %s: epoch %d validates at %.4f", ctx["model_id"], checkpoint.epoch, accuracy
            )
            if best is None or accuracy > best[0]:
                best = (accuracy, checkpoint)
        assert best is not None, "training yielded no checkpoint"
        accuracy, checkpoint = best
        if accuracy < settings.min_accuracy:
            raise QualityGateFailed(
                f"model {ctx['model_id']}: best accuracy {accuracy:.4f} is below "
                f"{settings.min_accuracy} (epoch {checkpoint.epoch}); not registered"
            )
        return {"accuracy": accuracy, "best_epoch": checkpoint.epoch, "checkpoint": checkpoint.path}

    @action("register_model")
    async def register(self, ctx: SagaContext) -> dict[str, Any]:
        version = await training.registry.register(
            ctx["model_id"], ctx["checkpoint"], ctx["accuracy"]
        )
        return {"model_version": version}
