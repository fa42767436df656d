"""Publish a drift event as a drift monitor would:
``python -m examples.model_retraining.send '{"model_id": "churn", "score": 0.8}'``.

Uses the example's settings: ``SAGAZ_KAFKA_BOOTSTRAP_SERVERS`` and
``MODEL_RETRAINING_DRIFT_TOPIC``.
"""

from __future__ import annotations

import asyncio
import sys

from examples.model_retraining.events import DriftEvent
from examples.model_retraining.settings import RetrainingSettings, settings

from sagaz import TriggerConfig


async def publish(
    event: DriftEvent,
    *,
    config: TriggerConfig | None = None,
    names: RetrainingSettings = settings,
) -> None:
    """Produce ``event`` to the drift topic, keyed by model (one partition per model)."""
    from aiokafka import AIOKafkaProducer

    config = config or TriggerConfig()
    producer = AIOKafkaProducer(bootstrap_servers=config.kafka_bootstrap_servers)
    await producer.start()
    try:
        await producer.send_and_wait(
            names.drift_topic, event.model_dump_json().encode(), key=event.model_id.encode()
        )
    finally:
        await producer.stop()


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        raise SystemExit("usage: python -m examples.model_retraining.send '<drift event JSON>'")
    event = DriftEvent.model_validate_json(argv[0])
    asyncio.run(publish(event))
    print(f"sent drift event of model {event.model_id} (score {event.score})")


if __name__ == "__main__":
    main(sys.argv[1:])
