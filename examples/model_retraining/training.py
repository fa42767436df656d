"""Stand-ins for a feature store, a trainer, an evaluator and a model registry.

In your application these call your ML platform; here they simulate it (a few hundred
milliseconds in all) and log what they do. The simulated model reaches a lower accuracy the
further its data drifted: a drift score above about 0.87 fails the quality gate.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Checkpoint:
    """What one training epoch produces."""

    epoch: int
    loss: float
    path: str


async def snapshot_dataset(model_id: str) -> tuple[str, int]:
    """Freeze the training data of ``model_id``: the snapshot id and its row count."""
    await asyncio.sleep(0.05)
    snapshot_id = f"snap-{uuid.uuid4().hex[:8]}"
    logger.info("model %s: dataset snapshot %s (120000 rows)", model_id, snapshot_id)
    return snapshot_id, 120_000


async def delete_snapshot(model_id: str, snapshot_id: str) -> None:
    logger.info("model %s: dataset snapshot %s deleted", model_id, snapshot_id)


async def fit(model_id: str, snapshot_id: str, epochs: int) -> AsyncIterator[Checkpoint]:
    """Train epoch after epoch, yielding each checkpoint as soon as it is written."""
    for epoch in range(1, epochs + 1):
        await asyncio.sleep(0.1)  # an epoch of training
        loss = round(0.5**epoch, 4)
        logger.info("model %s: epoch %d/%d, loss %.4f", model_id, epoch, epochs, loss)
        yield Checkpoint(epoch, loss, f"checkpoints/{model_id}/{snapshot_id}/epoch-{epoch}.pt")


async def validation_accuracy(checkpoint: Checkpoint, drift_score: float) -> float:
    """The accuracy of ``checkpoint`` on the validation set."""
    await asyncio.sleep(0.02)
    return round((1.0 - 0.2 * drift_score) * (1.0 - checkpoint.loss), 4)


class ModelRegistry:
    """Model versions, newest last, per model."""

    def __init__(self) -> None:
        self.versions: dict[str, list[str]] = {}

    async def register(self, model_id: str, checkpoint: str, accuracy: float) -> str:
        versions = self.versions.setdefault(model_id, [])
        version = f"{model_id}-v{len(versions) + 1}"
        versions.append(version)
        logger.info(
            "model %s: registered %s (accuracy %.4f, %s)", model_id, version, accuracy, checkpoint
        )
        return version


registry = ModelRegistry()
