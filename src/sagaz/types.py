"""Shared type aliases and small value types."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, TypeAlias

__all__ = [
    "TERMINAL_SAGA_STATUSES",
    "InboxStatus",
    "JSONDict",
    "SagaStatus",
    "StepStatus",
]

JSONDict: TypeAlias = dict[str, Any]
"""A JSON-serialisable mapping (saga context, step result, event payload)."""


class SagaStatus(StrEnum):
    """Lifecycle of one saga execution."""

    PENDING = "pending"  # accepted durably, not started yet
    RUNNING = "running"
    COMPENSATING = "compensating"
    COMPLETED = "completed"
    COMPENSATED = "compensated"
    FAILED = "failed"  # a compensation itself failed: needs a human
    CANCELLED = "cancelled"  # an operator cancelled it; what it had done was compensated


TERMINAL_SAGA_STATUSES = frozenset(
    {SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.FAILED, SagaStatus.CANCELLED}
)


class StepStatus(StrEnum):
    """Lifecycle of one step of a saga."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    COMPENSATING = "compensating"
    COMPENSATED = "compensated"
    COMPENSATION_FAILED = "compensation_failed"


class InboxStatus(StrEnum):
    """State of one inbox row ``(trigger_id, key)``."""

    PENDING = "pending"  # claimed by a worker, saga not terminal yet
    COMPLETED = "completed"  # terminal: a redelivery is a duplicate
