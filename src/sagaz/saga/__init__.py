"""The saga core: ``Saga``, ``@action``/``@compensate``, context, listeners, execution."""

from __future__ import annotations

from sagaz.saga.context import SagaContext
from sagaz.saga.definition import Saga
from sagaz.saga.listeners import OutboxSagaListener, SagaListener
from sagaz.saga.result import SagaResult
from sagaz.saga.steps import action, compensate

__all__ = [
    "OutboxSagaListener",
    "Saga",
    "SagaContext",
    "SagaListener",
    "SagaResult",
    "action",
    "compensate",
]
