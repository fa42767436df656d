"""How the rows of :class:`~sagaz.storage.sqlite.SQLiteSagaStore` map to records and back.

Timestamps are fixed-width ISO text in UTC (see :func:`sagaz.storage.codec.to_text`), so they
compare and sort as text; JSON columns hold :func:`sagaz.storage.codec.dumps` text. The schema
itself is :mod:`sagaz.storage.sqlite_schema`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sagaz.records import (
    DeadLetterRecord,
    OutboxMessage,
    SagaRecord,
    StepRecord,
    TriggerExecutionRecord,
)
from sagaz.storage.codec import dumps, from_text, loads, to_text
from sagaz.types import SagaStatus, StepStatus

__all__ = [
    "DEAD_LETTER_COLUMNS",
    "EXECUTION_COLUMNS",
    "NO_INTEGER",
    "NO_TEXT",
    "dead_letter_from_row",
    "execution_from_row",
    "lasting_text",
    "latest_steps",
    "optional_moment",
    "optional_text",
    "outbox_from_row",
    "placeholders",
    "saga_from_row",
    "saga_params",
    "saga_update_params",
    "step_from_row",
    "step_params",
]


DEAD_LETTER_COLUMNS = (
    "id, trigger_id, saga_name, payload, error, reason, traceback, attempts, saga_id, source, "
    "meta, created_at"
)
EXECUTION_COLUMNS = "trigger_name, context_hash, saga_id, started_at, completed_at"

NO_TEXT = 0
"""What :func:`saga_params` and :func:`step_params` bind for ``None`` in a text column that
is usually empty (a saga's error and event, a step's result, error and compensation error):
their statements store ``NULLIF(?n, 0)``, which is NULL for the integer 0 and the value for
any text (SQLite compares a text with an integer as unequal). Python 3.11's ``sqlite3`` binds
an ``int`` directly, but ``None`` through its adaptation protocol (a registry lookup, then an
``AttributeError`` formatted and cleared): about 0.4 µs a value, eleven values a saga
(benchmarks/README.md, "SQLite: the store's Python and its bindings")."""
NO_INTEGER = 0.5
""":data:`NO_TEXT` for an integer column (a step's ``completed_seq``): ``NULLIF(?n, 0.5)``, a
real number that no integer equals, bound as a double (a text, ``""`` before, is copied by
SQLite: about 600 instructions more a value)."""


def optional_text(moment: datetime | None) -> str | None:
    """:func:`~sagaz.storage.codec.to_text`, passing ``None`` through."""
    return None if moment is None else to_text(moment)


def optional_moment(text: str | None) -> datetime | None:
    """:func:`~sagaz.storage.codec.from_text`, passing ``None`` through."""
    return None if text is None else from_text(text)


@functools.lru_cache(maxsize=4096)
def lasting_text(moment: datetime) -> str:
    """:func:`~sagaz.storage.codec.to_text` of a moment that a saga's writes store again and
    again (its lease, its created_at): formatted once, then looked up."""
    return to_text(moment)


def saga_params(record: SagaRecord, now: str) -> tuple[Any, ...]:
    """The values of :data:`SAGA_COLUMNS` for ``record``, updated ``now`` (its
    :func:`~sagaz.storage.codec.to_text`); an empty error or event is :data:`NO_TEXT`, and so
    is ``created_at`` if the record has none: the statement stores ``now`` for it
    (``COALESCE(NULLIF(?11, 0), ?12)``, one text bound instead of two)."""
    lease = record.lease_expires_at
    created = record.created_at
    status = record.status
    return (
        record.saga_id,
        record.saga_name,
        # a member's value (most records; _value_: .value is a Python property, three
        # times dearer), or a plain string checked by SagaStatus()
        status._value_ if type(status) is SagaStatus else SagaStatus(status).value,
        dumps(record.context),
        record.attempt,
        NO_TEXT if record.error is None else record.error,  # NULLIF(?6, 0)
        record.trigger_id,
        NO_TEXT if record.event is None else dumps(record.event),  # NULLIF(?8, 0)
        record.owner,
        None if lease is None else lasting_text(lease),
        NO_TEXT if created is None else lasting_text(created),  # created now
        now,
    )


def saga_update_params(record: SagaRecord, now: str) -> tuple[Any, ...]:
    """:func:`saga_params` without ``created_at``, which an update of the row does not set (a
    value bound is a copy SQLite makes, about 0.3 µs for a text: benchmarks/README.md)."""
    lease = record.lease_expires_at
    status = record.status
    return (
        record.saga_id,
        record.saga_name,
        status._value_ if type(status) is SagaStatus else SagaStatus(status).value,
        dumps(record.context),
        record.attempt,
        NO_TEXT if record.error is None else record.error,  # NULLIF(?6, 0)
        record.trigger_id,
        NO_TEXT if record.event is None else dumps(record.event),  # NULLIF(?8, 0)
        record.owner,
        None if lease is None else lasting_text(lease),
        now,
    )


def step_params(step: StepRecord, now: str) -> tuple[Any, ...]:
    """The values of :data:`STEP_COLUMNS` for ``step`` (JSON as text), updated ``now`` (its
    :func:`~sagaz.storage.codec.to_text`); an empty result, error or compensation error is
    :data:`NO_TEXT`, an empty ``completed_seq`` :data:`NO_INTEGER`."""
    status, result, error = step.status, step.result, step.error
    seq, compensation = step.completed_seq, step.compensation_error
    return (
        step.saga_id,
        step.name,
        # a member's value (most records; _value_: .value is a Python property, three
        # times dearer), or a plain string checked by StepStatus()
        status._value_ if type(status) is StepStatus else StepStatus(status).value,
        NO_TEXT if result is None else dumps(result),  # NULLIF(?4, 0)
        NO_TEXT if error is None else error,  # NULLIF(?5, 0)
        step.attempts,
        NO_INTEGER if seq is None else seq,  # NULLIF(?7, 0.5)
        NO_TEXT if compensation is None else compensation,  # NULLIF(?8, 0)
        now,
    )


def saga_from_row(row: Iterable[Any]) -> SagaRecord:
    """A row of :data:`SAGA_COLUMNS` as a record."""
    (saga_id, name, status, context, attempt, error, trigger_id, event, owner, lease, created,
     updated) = row  # fmt: skip
    return SagaRecord(
        saga_id=saga_id,
        saga_name=name,
        status=SagaStatus(status),
        context=loads(context),
        attempt=attempt,
        error=error,
        trigger_id=trigger_id,
        event=None if event is None else loads(event),
        owner=owner,
        lease_expires_at=optional_moment(lease),
        created_at=from_text(created),
        updated_at=from_text(updated),
    )


def step_from_row(row: Iterable[Any]) -> StepRecord:
    """A row of :data:`STEP_COLUMNS` as a record."""
    saga_id, name, status, result, error, attempts, seq, comp_error, updated = row
    return StepRecord(
        saga_id=saga_id,
        name=name,
        status=StepStatus(status),
        result=None if result is None else loads(result),
        error=error,
        attempts=attempts,
        completed_seq=seq,
        compensation_error=comp_error,
        updated_at=from_text(updated),
    )


def latest_steps(rows: Iterable[Any]) -> list[StepRecord]:
    """Rows of ``saga_seq`` and :data:`STEP_COLUMNS` (one saga's, ``saga_seq`` ascending) as
    records, one per name: a row keyed by its saga row's ``seq`` is newer than one keyed by 0,
    written while the saga had no row (see :data:`sagaz.storage.sqlite_schema.STEPS_OF`)."""
    latest: dict[str, StepRecord] = {}
    for row in rows:
        step = step_from_row(row[1:])
        latest[step.name] = step
    return list(latest.values())


def outbox_from_row(row: Iterable[Any]) -> OutboxMessage:
    """A row of :data:`OUTBOX_COLUMNS` as a message."""
    id_, saga_id, topic, payload, headers, created, sent = row
    return OutboxMessage(
        saga_id=saga_id,
        topic=topic,
        payload=loads(payload),
        headers=loads(headers),
        id=id_,
        created_at=from_text(created),
        sent_at=optional_moment(sent),
    )


def dead_letter_from_row(row: Iterable[Any]) -> DeadLetterRecord:
    """A row of :data:`DEAD_LETTER_COLUMNS` as a record."""
    id_, trigger, name, payload, error, reason, tb, attempts, saga_id, source, meta, at = row
    return DeadLetterRecord(
        trigger_id=trigger,
        saga_name=name,
        payload=loads(payload),
        error=error,
        reason=reason,
        traceback=tb,
        attempts=attempts,
        saga_id=saga_id,
        source=source,
        meta=loads(meta),
        id=id_,
        created_at=from_text(at),
    )


def execution_from_row(row: Iterable[Any]) -> TriggerExecutionRecord:
    """A row of :data:`EXECUTION_COLUMNS` as a record."""
    trigger_name, context_hash, saga_id, started, completed = row
    return TriggerExecutionRecord(
        trigger_name=trigger_name,
        context_hash=context_hash,
        saga_id=saga_id,
        started_at=from_text(started),
        completed_at=optional_moment(completed),
    )


def placeholders(count: int) -> str:
    """``?, ?, ...`` for ``count`` parameters."""
    return ", ".join("?" * count)
