"""sagaz: embeddable asyncio sagas started from events.

>>> import sagaz
>>> class OrderSaga(sagaz.Saga):  # doctest: +SKIP
...     @sagaz.trigger(source="kafka", topic="orders")
...     def on_order(self, event): return {"order_id": event["id"]}
...     @sagaz.action("reserve")
...     async def reserve(self, ctx): ...
>>> await sagaz.start_triggers()  # doctest: +SKIP
"""

from __future__ import annotations

from importlib import metadata as _metadata
from typing import TYPE_CHECKING, Any

from sagaz.config import TriggerConfig, configure
from sagaz.events import CronTick, EventData, EventMeta, FileEvent, WebhookRequest
from sagaz.exceptions import InvalidEventError, MissingExtraError, SagazError
from sagaz.saga import (
    OutboxSagaListener,
    Saga,
    SagaContext,
    SagaListener,
    SagaResult,
    action,
    compensate,
)
from sagaz.triggers import Fire, Skip, Trigger, trigger
from sagaz.types import SagaStatus

if TYPE_CHECKING:
    from sagaz.engine import (
        TriggerEngine,
        cancel_saga,
        resume_saga,
        retry_saga,
        saga_history,
    )
    from sagaz.outbox import OutboxRelay

try:
    __version__: str = _metadata.version("sagaz")
except _metadata.PackageNotFoundError:  # a source tree on sys.path, not installed
    __version__ = "0+unknown"

__all__ = [
    "CronTick",
    "EventData",
    "EventMeta",
    "FileEvent",
    "Fire",
    "InvalidEventError",
    "MissingExtraError",
    "OutboxRelay",
    "OutboxSagaListener",
    "Saga",
    "SagaContext",
    "SagaListener",
    "SagaResult",
    "SagaStatus",
    "SagazError",
    "Skip",
    "Trigger",
    "TriggerConfig",
    "TriggerEngine",
    "WebhookRequest",
    "__version__",
    "action",
    "backfill_trigger",
    "cancel_saga",
    "compensate",
    "configure",
    "dashboard_app",
    "fire_event",
    "pause_trigger",
    "resume_saga",
    "resume_trigger",
    "retry_saga",
    "run_trigger",
    "saga_history",
    "start_triggers",
    "stop_triggers",
    "trigger",
    "webhook_app",
]


def __getattr__(name: str) -> Any:
    if name in (
        "TriggerEngine",
        "start_triggers",
        "stop_triggers",
        "fire_event",
        "webhook_app",
        "pause_trigger",
        "resume_trigger",
        "cancel_saga",
        "resume_saga",
        "retry_saga",
        "saga_history",
        "run_trigger",
        "backfill_trigger",
    ):
        from sagaz import engine

        return getattr(engine, name)
    if name == "dashboard_app":
        from sagaz.dashboard import dashboard_app

        return dashboard_app
    if name == "OutboxRelay":
        from sagaz.outbox import OutboxRelay

        return OutboxRelay
    raise AttributeError(f"module 'sagaz' has no attribute {name!r}")
