"""SQL shared by the PostgreSQL and SQLite stores: status lists and the column lists of the
tables both schemas lay out the same way."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sagaz.records import DeadLetterRecord, OutboxMessage, StepRecord
from sagaz.storage.codec import dumps
from sagaz.types import TERMINAL_SAGA_STATUSES, SagaStatus, StepStatus

__all__ = [
    "ACTIVE_SQL",
    "COMMON_SAGA_STATUSES",
    "OUTBOX_COLUMNS",
    "SAGA_COLUMNS",
    "STEP_COLUMNS",
    "TERMINAL_SQL",
    "claimable",
    "dead_letter_params",
    "outbox_params",
    "recovery_columns",
    "step_params",
    "take_over_set",
]

TERMINAL_SQL = "(" + ", ".join(f"'{s.value}'" for s in sorted(TERMINAL_SAGA_STATUSES)) + ")"
"""SQL list of the terminal saga statuses (``IN`` clauses and partial indexes)."""
ACTIVE_SQL = (
    "(" + ", ".join(f"'{s.value}'" for s in sorted(set(SagaStatus) - TERMINAL_SAGA_STATUSES)) + ")"
)
"""SQL list of the non-terminal saga statuses."""


def recovery_columns(table: str, *, if_not_exists: bool) -> tuple[str, ...]:
    """The migration that keeps a saga's recovery attempts in its row of ``table``:
    ``recovery_attempts`` (how many takeovers, :meth:`~sagaz.abc.SagaStore.take_over_saga`)
    and ``recovery_of`` (the ``attempt`` of the saga they count: a new attempt starts over).
    ``if_not_exists`` where the database has it (PostgreSQL, not SQLite)."""
    guard = " IF NOT EXISTS" if if_not_exists else ""
    return tuple(
        f"ALTER TABLE {table} ADD COLUMN{guard} {column} integer NOT NULL DEFAULT 0"
        for column in ("recovery_attempts", "recovery_of")
    )


def claimable(owner: str, now: str) -> str:
    """The condition on a saga row that the parameter ``owner`` may claim at the parameter
    ``now`` (``claim_saga``, ``take_over_saga``): no owner, ``owner``'s already, or a lease
    that ended."""
    return (
        f"(owner IS NULL OR owner = {owner} OR lease_expires_at IS NULL "
        f"OR lease_expires_at < {now})"
    )


def take_over_set(owner: str) -> str:
    """The SET clause of a saga's takeover by the parameter ``owner``: its lease's owner,
    and one recovery attempt more when the row still names another owner (its lease
    expired: that worker stopped or froze without giving the saga back); a row with no
    owner (given back, ``release_saga``) or ``owner``'s already is claimed uncounted (the
    old values: SQL evaluates every assignment on the row before the update)."""
    return (
        f"owner = {owner}, recovery_attempts = CASE WHEN recovery_of = attempt "
        "THEN recovery_attempts ELSE 0 END + "
        f"CASE WHEN owner IS NULL OR owner = {owner} THEN 0 ELSE 1 END, "
        "recovery_of = attempt"
    )


COMMON_SAGA_STATUSES = frozenset({SagaStatus.PENDING, SagaStatus.RUNNING, SagaStatus.COMPLETED})
"""The statuses every saga that succeeds passes through: the SQL stores' index by status has
the others only (schema 8)."""

SAGA_COLUMNS = (
    "saga_id, saga_name, status, context, attempt, error, trigger_id, event, owner, "
    "lease_expires_at, created_at, updated_at"
)
STEP_COLUMNS = (
    "saga_id, name, status, result, error, attempts, completed_seq, compensation_error, updated_at"
)
OUTBOX_COLUMNS = "id, saga_id, topic, payload, headers, created_at, sent_at"


def step_params(step: StepRecord, now: Any) -> tuple[Any, ...]:
    """The values of :data:`STEP_COLUMNS` for ``step`` (JSON as text), updated ``now`` (a
    value of the store's timestamp column)."""
    status = step.status
    return (
        step.saga_id,
        step.name,
        # a member (most records) holds its value (``_value_``: ``.value`` is a Python
        # property, 0.45 µs more); StepStatus() checks a plain string
        status._value_ if type(status) is StepStatus else StepStatus(status)._value_,
        None if step.result is None else dumps(step.result),
        step.error,
        step.attempts,
        step.completed_seq,
        step.compensation_error,
        now,
    )


def outbox_params(outbox: Sequence[OutboxMessage], now: Any) -> list[tuple[Any, ...]]:
    """The values ``(saga_id, topic, payload, headers, created_at)`` of each new outbox row
    (JSON as text), created ``now`` (a value of the store's timestamp column)."""
    return [(m.saga_id, m.topic, dumps(m.payload), dumps(dict(m.headers)), now) for m in outbox]


def dead_letter_params(record: DeadLetterRecord, now: Any) -> tuple[Any, ...]:
    """The values ``(trigger_id, saga_name, payload, error, reason, traceback, attempts,
    saga_id, source, meta, created_at)`` of a new dead letter (JSON as text), created ``now``
    (a value of the store's timestamp column)."""
    return (
        record.trigger_id,
        record.saga_name,
        dumps(record.payload),
        record.error,
        record.reason,
        record.traceback,
        record.attempts,
        record.saga_id,
        record.source,
        dumps(record.meta),
        now,
    )
