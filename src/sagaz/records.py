"""Plain records that the stores persist. Every store returns exactly these types."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from sagaz.types import JSONDict, SagaStatus, StepStatus

__all__ = [
    "ClaimOutcome",
    "CronClaim",
    "DeadLetterRecord",
    "EventClaim",
    "InboxClaim",
    "OutboxMessage",
    "SagaAction",
    "SagaControlRequest",
    "SagaHistoryRecord",
    "SagaRecord",
    "SchemaVersions",
    "StepRecord",
    "TriggerExecutionRecord",
    "TriggerScheduleRecord",
]


@dataclass(slots=True)
class SagaRecord:
    """One row of ``saga_executions``."""

    saga_id: str
    saga_name: str
    status: SagaStatus
    context: JSONDict
    attempt: int = 1
    error: str | None = None
    trigger_id: str | None = None
    event: Any = None  # the original event when ``persist_events`` is on
    owner: str | None = None  # worker holding the lease (recovery, scale-out)
    lease_expires_at: datetime | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(slots=True)
class StepRecord:
    """One row of ``saga_steps``: the checkpoint of one step of one saga."""

    saga_id: str
    name: str
    status: StepStatus
    result: JSONDict | None = None
    error: str | None = None
    attempts: int = 0
    #: order in which steps completed (compensation runs in reverse); ``None`` until completed
    completed_seq: int | None = None
    compensation_error: str | None = None
    updated_at: datetime | None = None


class ClaimOutcome(StrEnum):
    """Result of :meth:`sagaz.abc.SagaStore.claim_inbox`."""

    CLAIMED = "claimed"  # first time this key is seen: the caller owns it
    TAKEN_OVER = "taken_over"  # a previous owner's lease expired (or it was us): resume it
    DUPLICATE = "duplicate"  # already completed: acknowledge and do nothing
    BUSY = "busy"  # a live worker holds it: leave it alone


@dataclass(slots=True)
class InboxClaim:
    """What :meth:`sagaz.abc.SagaStore.claim_inbox` found or made."""

    outcome: ClaimOutcome
    saga_id: str
    owner: str | None = None


@dataclass(slots=True)
class EventClaim:
    """What :meth:`sagaz.abc.SagaStore.claim_event` found or made: the inbox claim and, when
    the key is ours (``CLAIMED`` or ``TAKEN_OVER``), the saga row of the event.

    ``saga`` is the row as it is now in the store: the record given, just created
    (``created``), or the row that was there already (a key taken over from a dead worker,
    a replayed dead letter); ``None`` for a ``DUPLICATE`` or ``BUSY`` key (nothing written).
    """

    outcome: ClaimOutcome
    saga_id: str
    owner: str | None = None
    saga: SagaRecord | None = None
    created: bool = False


@dataclass(slots=True)
class OutboxMessage:
    """One row of ``outbox``: a message a step emitted, published later by the relay."""

    saga_id: str
    topic: str
    payload: Any
    headers: dict[str, str] = field(default_factory=dict)
    id: int | None = None  # assigned by the store, increasing per store
    created_at: datetime | None = None
    sent_at: datetime | None = None


@dataclass(slots=True)
class DeadLetterRecord:
    """One row of ``dead_letters``: an event that did not become a completed saga."""

    trigger_id: str
    saga_name: str
    payload: Any
    error: str
    reason: str
    traceback: str | None = None
    attempts: int = 0
    saga_id: str | None = None
    source: str | None = None
    meta: JSONDict = field(default_factory=dict)
    id: int | None = None  # assigned by the store
    created_at: datetime | None = None


@dataclass(slots=True)
class TriggerScheduleRecord:
    """One row of ``trigger_schedules``: every trigger an engine runs (paused or not), with a
    poll trigger's interval and overlap policy, as in Cloacina."""

    #: the trigger id (``"{saga_name}.{method}"``), as in ``trigger_executions``
    trigger_name: str
    saga_name: str
    poll_interval_ms: int
    allow_concurrent: bool
    enabled: bool = True
    last_poll_at: datetime | None = None


@dataclass(slots=True)
class TriggerExecutionRecord:
    """One row of ``trigger_executions``: audit trail and cross-instance dedup of a poll
    trigger's runs."""

    #: the trigger id, the ``trigger_name`` of its ``trigger_schedules`` row
    trigger_name: str
    context_hash: str
    saga_id: str
    started_at: datetime | None = None
    completed_at: datetime | None = None


@dataclass(slots=True)
class CronClaim:
    """One row of ``cron_claims``: a cron tick fired by exactly one instance."""

    trigger_id: str
    tick: datetime
    owner: str
    claimed_at: datetime | None = None


class SagaAction(StrEnum):
    """What an operator asks of one saga (``sagaz sagas cancel|resume|retry ID``)."""

    CANCEL = "cancel"  # stop between steps, compensate what completed, end ``cancelled``
    RESUME = "resume"  # run a saga that did not complete again, keeping its completed steps
    RETRY = "retry"  # run it again from one step, keeping the results of the steps before


@dataclass(slots=True)
class SagaControlRequest:
    """One row of ``saga_requests``: an operator's request that engines have not finished
    acting on yet (at most one per saga). The engines on the store act on it and delete it."""

    saga_id: str
    action: SagaAction
    #: the step a retry starts from (``None`` for cancel and resume)
    step: str | None = None
    #: who asked (``user@host`` from the CLI)
    actor: str | None = None
    reason: str | None = None
    #: the saga's attempt when it was asked: a resume or retry is under way once it grew
    attempt: int = 1
    requested_at: datetime | None = None


@dataclass(slots=True)
class SagaHistoryRecord:
    """One row of ``saga_history``: something done to a saga from outside its own run (an
    operator's request, an engine acting on it), oldest first."""

    saga_id: str
    #: ``cancel_requested``, ``cancelled``, ``resume_requested``, ``resumed``... (see
    #: :mod:`sagaz.engine.steering`)
    action: str
    actor: str | None = None
    detail: str | None = None
    id: int | None = None  # assigned by the store, increasing
    at: datetime | None = None


@dataclass(frozen=True, slots=True)
class SchemaVersions:
    """The schema version a store's database has and the one this sagaz needs
    (:meth:`sagaz.abc.SagaStore.schema_versions`, :meth:`~sagaz.abc.SagaStore.upgrade_schema`).
    """

    #: the version in the database; 0: no schema yet (the first ``start()`` creates it)
    current: int
    #: the version this sagaz writes; 0: the store keeps no schema (``MemorySagaStore``)
    expected: int

    @property
    def outdated(self) -> bool:
        """Whether ``sagaz db upgrade`` must run before a store can start on it."""
        return 0 < self.current < self.expected
